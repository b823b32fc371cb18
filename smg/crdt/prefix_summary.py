"""Bounded, replicated summary of which worker holds which prefix blocks.

In the form `smg/routing/text.py` fixes: per model, per worker id, a
map chained-block-hash -> last-seen HLC timestamp. Merge takes the max
last-seen. Each model has a budget of entries. Expiry and eviction depend
only on the merged state, never on a local clock: an entry older than the
newest timestamp of its model by more than `ttl_ms` is dropped, and beyond
the budget the oldest last-seen go first (ties by hash, then worker). So two
replicas that merged the same updates hold the same entries and digests, and
pruning commutes with merging (an entry pruned from a part is pruned from
the whole).
"""

from __future__ import annotations

import heapq

from smg.crdt.digest import digest_of
from smg.crdt.hlc import ZERO, Timestamp

Entries = dict[tuple[str, bytes], Timestamp]  # (worker id, block hash) -> last seen


class _Order:
    """Per model: a lazy min-heap in eviction order, the newest timestamp seen, and
    block hash -> workers holding it (so a match costs the chain's length, not the model's size)."""

    __slots__ = ("heap", "holders", "newest", "per_worker")

    def __init__(self, entries: Entries) -> None:
        self.heap = [(ts, h, w) for (w, h), ts in entries.items()]
        heapq.heapify(self.heap)
        self.newest = max(entries.values(), default=ZERO)
        self.holders: dict[bytes, set[str]] = {}
        self.per_worker: dict[str, int] = {}
        for w, h in entries:
            self.add(w, h)

    def add(self, worker: str, block: bytes) -> None:
        self.holders.setdefault(block, set()).add(worker)
        self.per_worker[worker] = self.per_worker.get(worker, 0) + 1

    def drop(self, worker: str, block: bytes) -> None:
        found = self.holders.get(block)
        if found is not None:
            found.discard(worker)
            if not found:
                del self.holders[block]
        left = self.per_worker.get(worker, 0) - 1
        if left > 0:
            self.per_worker[worker] = left
        else:
            self.per_worker.pop(worker, None)


class PrefixSummary:
    __slots__ = ("_order", "budget", "models", "ttl_ms")

    def __init__(self, budget: int = 100_000, ttl_ms: int = 3_600_000, models: dict[str, Entries] | None = None) -> None:
        if budget < 1 or ttl_ms < 1:
            raise ValueError("the prefix summary budget and TTL must be positive")
        self.budget = budget
        self.ttl_ms = ttl_ms
        self.models: dict[str, Entries] = {m: dict(e) for m, e in (models or {}).items()}
        self._order: dict[str, _Order] = {m: _Order(e) for m, e in self.models.items()}
        for model in self.models:
            self._prune(model)

    def record(self, model: str, worker: str, chain: list[bytes], ts: Timestamp) -> PrefixSummary:
        """`worker` was given the prefix `chain` at `ts`; returns the delta."""
        delta = PrefixSummary(self.budget, self.ttl_ms, {model: {(worker, h): ts for h in chain}})
        self.merge(delta)
        return delta

    def merge(self, other: PrefixSummary) -> None:
        for model, theirs in other.models.items():
            mine = self.models.get(model)
            if mine is None:
                mine = self.models[model] = {}
                self._order[model] = _Order(mine)
            order = self._order[model]
            heap = order.heap
            for key, ts in theirs.items():
                current = mine.get(key)
                if current is None or ts > current:
                    if current is None:
                        order.add(key[0], key[1])
                    mine[key] = ts
                    heapq.heappush(heap, (ts, key[1], key[0]))
                    if ts > order.newest:
                        order.newest = ts
            self._prune(model)

    def _prune(self, model: str) -> None:
        """Drop expired entries, then the oldest beyond the budget: (last seen, hash, worker) order."""
        entries = self.models[model]
        order = self._order[model]
        heap = order.heap
        cutoff = order.newest.wall - self.ttl_ms
        while heap:
            ts, block, worker = heap[0]
            if entries.get((worker, block)) != ts:
                heapq.heappop(heap)  # stale: the entry was refreshed or removed
                continue
            if ts.wall >= cutoff and len(entries) <= self.budget:
                break
            heapq.heappop(heap)
            del entries[(worker, block)]
            order.drop(worker, block)
        if len(heap) > 2 * len(entries) + 1024:
            self._order[model] = _Order(entries)  # shed the stale heap items

    def match(self, model: str, chain: list[bytes]) -> dict[str, int]:
        """For each worker, the deepest block of `chain` it was given (in blocks)."""
        order = self._order.get(model)
        best: dict[str, int] = {}
        if order is None:
            return best
        holders = order.holders
        for i, h in enumerate(chain):
            found = holders.get(h)
            if found:
                for worker in found:
                    best[worker] = i + 1
        return best

    def footprint(self, model: str) -> dict[str, int]:
        """Entries held per worker for `model` (how much of the cluster's routing went where)."""
        order = self._order.get(model)
        return dict(order.per_worker) if order is not None else {}

    def last_seen(self, model: str, worker: str, block: bytes) -> Timestamp | None:
        return self.models.get(model, {}).get((worker, block))

    def __len__(self) -> int:
        return sum(len(e) for e in self.models.values())

    def copy(self) -> PrefixSummary:
        return PrefixSummary(self.budget, self.ttl_ms, self.models)

    def state_digest(self) -> str:
        canonical = [[m, sorted([w, h, list(ts)] for (w, h), ts in e.items())] for m, e in sorted(self.models.items())]
        return digest_of("prefix-summary", canonical)
