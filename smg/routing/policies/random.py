"""Uniform random choice."""

from __future__ import annotations

import random
from collections.abc import Sequence

from smg.routing.policies.base import PolicyConfig, RequestInfo
from smg.workers.registry import Worker


class RandomPolicy:
    name = "random"
    needs_text = False
    needs_client_key = False

    def __init__(self, config: PolicyConfig) -> None:
        self._rng = random.Random(config.seed)

    def select(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
        return workers[self._rng.randrange(len(workers))]
