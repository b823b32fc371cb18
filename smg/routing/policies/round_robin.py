"""Exact alternation over the available workers of a model."""

from __future__ import annotations

from collections.abc import Sequence

from smg.routing.policies.base import PolicyConfig, RequestInfo
from smg.workers.registry import Worker


class RoundRobinPolicy:
    name = "round_robin"
    needs_text = False
    needs_client_key = False

    def __init__(self, config: PolicyConfig) -> None:
        self._next: dict[str, int] = {}

    def select(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
        index = self._next.get(request.model, 0)
        self._next[request.model] = index + 1
        return workers[index % len(workers)]
