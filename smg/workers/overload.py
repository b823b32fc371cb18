"""Worker overload protection (sans-IO): a worker whose own load report says it is saturated
leaves routing while another worker is under the thresholds.

As the reference: on by default, a worker is overloaded at or above 8 waiting requests
(summed over its data-parallel ranks) or 0.8 KV-cache token usage (their mean), read from
its `/v1/loads` reports. When every worker a request could use is overloaded, the request
goes to the least-loaded one, or with `--worker-overload-shed` is refused with 503
`worker_overload_protection_shed` (Retry-After: the load poll interval).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from smg.workers.registry import Worker


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What a worker's `/v1/loads` says, over all its data-parallel ranks."""

    running: int = 0
    waiting: int = 0
    token_usage: float | None = None  # the mean over ranks that report it; None: none does

    @property
    def load(self) -> int:
        return self.running + self.waiting


def parse_load_report(body: Any) -> LoadReport:
    """An SGLang-style `{"loads": [{"num_running_reqs", "num_waiting_reqs", "token_usage"}, ...]}`;
    anything else counts as an empty report (the worker is not held to thresholds it does not report)."""
    ranks = body.get("loads") if isinstance(body, dict) else None
    if not isinstance(ranks, list):
        return LoadReport()
    running = waiting = 0
    usages: list[float] = []
    for rank in ranks:
        if not isinstance(rank, dict):
            continue
        running += _count(rank.get("num_running_reqs"))
        waiting += _count(rank.get("num_waiting_reqs"))
        usage = rank.get("token_usage")
        if isinstance(usage, (int, float)) and not isinstance(usage, bool) and 0 <= usage <= 1:
            usages.append(float(usage))
    return LoadReport(running, waiting, sum(usages) / len(usages) if usages else None)


def _count(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 2**31 else 0


@dataclass(frozen=True, slots=True)
class OverloadLimits:
    waiting: int = 8
    token_usage: float = 0.8
    shed: bool = False

    def overloaded(self, worker: Worker) -> bool:
        usage = worker.reported_token_usage
        return worker.reported_waiting >= self.waiting or (usage is not None and usage >= self.token_usage)

    def choose(self, workers: Sequence[Worker], load: Callable[[Worker], int]) -> list[Worker]:
        """The workers a policy may pick from: those under the thresholds; when none is, the
        least-loaded one, or none at all when overloaded requests are shed."""
        under = [w for w in workers if not self.overloaded(w)]
        if under or not workers:
            return under
        return [] if self.shed else [min(workers, key=load)]
