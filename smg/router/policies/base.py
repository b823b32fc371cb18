"""The interface every policy implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from smg.router.workers import Worker


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What a policy may look at; richer policies get more fields, not more calls."""

    model: str
    path: str


class Policy(Protocol):
    name: str

    def __init__(self, *, seed: int | None = None) -> None: ...

    def select(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
        """Pick one of `workers` (never empty)."""
        ...
