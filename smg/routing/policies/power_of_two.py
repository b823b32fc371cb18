"""Power of two choices: sample two workers, take the less loaded."""

from __future__ import annotations

import random
from collections.abc import Sequence

from smg.routing.policies.base import PolicyConfig, RequestInfo, load_of
from smg.workers.registry import Worker


class PowerOfTwoPolicy:
    name = "power_of_two"
    needs_text = False
    needs_client_key = False

    def __init__(self, config: PolicyConfig) -> None:
        self._rng = random.Random(config.seed)

    def select(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
        if len(workers) == 1:
            return workers[0]
        a, b = self._rng.sample(range(len(workers)), 2)
        first, second = workers[a], workers[b]
        return first if load_of(first) <= load_of(second) else second
