"""Uniform random choice."""

from __future__ import annotations

import random
from collections.abc import Sequence

from smg.router.policies.base import RequestInfo
from smg.router.workers import Worker


class RandomPolicy:
    name = "random"

    def __init__(self, *, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def select(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
        return workers[self._rng.randrange(len(workers))]
