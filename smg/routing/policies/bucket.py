"""Length buckets: short prompts to some workers, long ones to others.

Workers are ordered by id; worker i takes prompts whose routing-text length
falls in bucket i. Boundaries adapt every `--bucket-adjust-interval-secs`
to the lengths seen since, so that each bucket carries an equal share of the
characters (prefill work), not an equal count of requests. A prompt whose
worker is unavailable goes to the available worker of the nearest bucket.
Before the first adjustment every prompt is one bucket: least loaded wins.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from smg.routing.policies.base import PolicyConfig, RequestInfo, load_of
from smg.workers.registry import Worker

SAMPLE_LIMIT = 10_000


def equal_work_boundaries(lengths: list[int], buckets: int) -> list[int]:
    """Upper bounds of the first `buckets - 1` buckets, each holding an equal share of the total length."""
    if buckets < 2 or not lengths:
        return []
    ordered = sorted(lengths)
    total = sum(ordered)
    bounds: list[int] = []
    running, target = 0, total / buckets
    for length in ordered:
        running += length
        while len(bounds) < buckets - 1 and running >= target * (len(bounds) + 1):
            bounds.append(length)
    return bounds


class BucketPolicy:
    name = "bucket"
    needs_text = True
    needs_client_key = False

    def __init__(self, config: PolicyConfig) -> None:
        self.interval = config.bucket_adjust_interval_secs
        self._bounds: dict[str, list[int]] = {}
        self._samples: dict[str, list[int]] = {}
        self._adjusted_at: dict[str, float] = {}

    def select(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
        model, length = request.model, len(request.text)
        samples = self._samples.setdefault(model, [])
        if len(samples) < SAMPLE_LIMIT:
            samples.append(length)
        pool = sorted(request.pool or workers, key=lambda w: w.id)
        last = self._adjusted_at.setdefault(model, request.now)
        if request.now - last >= self.interval and samples:
            self._bounds[model] = equal_work_boundaries(samples, len(pool))
            self._samples[model] = []
            self._adjusted_at[model] = request.now
        bounds = self._bounds.get(model)
        if not bounds or len(bounds) != len(pool) - 1:
            return min(workers, key=load_of)
        home = bisect_right(bounds, length - 1) if length else 0
        available = {w.id for w in workers}
        for distance in range(len(pool)):
            for index in (home - distance, home + distance):
                if 0 <= index < len(pool) and pool[index].id in available:
                    return pool[index]
        return workers[0]
