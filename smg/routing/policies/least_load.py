"""Least load: the worker with the fewest requests, by the gateway's count or its own report."""

from __future__ import annotations

import random
from collections.abc import Sequence

from smg.routing.policies.base import PolicyConfig, RequestInfo, load_of
from smg.workers.registry import Worker


class LeastLoadPolicy:
    name = "least_load"
    needs_text = False
    needs_client_key = False

    def __init__(self, config: PolicyConfig) -> None:
        self._rng = random.Random(config.seed)

    def select(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
        lowest = min(load_of(w) for w in workers)
        tied = [w for w in workers if load_of(w) == lowest]
        return tied[self._rng.randrange(len(tied))] if len(tied) > 1 else tied[0]
