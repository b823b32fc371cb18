"""Bounded, replicated summary of which worker holds which prefix blocks.

In the form `smg/router/routing_text.py` fixes: per model, per worker id, a
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

from smg.crdt.digest import digest_of
from smg.crdt.hlc import Timestamp

Entries = dict[tuple[str, bytes], Timestamp]  # (worker id, block hash) -> last seen


class PrefixSummary:
    __slots__ = ("budget", "models", "ttl_ms")

    def __init__(self, budget: int = 100_000, ttl_ms: int = 3_600_000, models: dict[str, Entries] | None = None) -> None:
        if budget < 1 or ttl_ms < 1:
            raise ValueError("the prefix summary budget and TTL must be positive")
        self.budget = budget
        self.ttl_ms = ttl_ms
        self.models: dict[str, Entries] = {m: dict(e) for m, e in (models or {}).items()}

    def record(self, model: str, worker: str, chain: list[bytes], ts: Timestamp) -> PrefixSummary:
        """`worker` was given the prefix `chain` at `ts`; returns the delta."""
        delta = PrefixSummary(self.budget, self.ttl_ms, {model: {(worker, h): ts for h in chain}})
        self.merge(delta)
        return delta

    def merge(self, other: PrefixSummary) -> None:
        for model, theirs in other.models.items():
            mine = self.models.setdefault(model, {})
            for key, ts in theirs.items():
                current = mine.get(key)
                if current is None or ts > current:
                    mine[key] = ts
            self._prune(model)

    def _prune(self, model: str) -> None:
        entries = self.models[model]
        if not entries:
            return
        newest = max(entries.values())
        cutoff = newest.wall - self.ttl_ms
        expired = [k for k, ts in entries.items() if ts.wall < cutoff]
        for key in expired:
            del entries[key]
        excess = len(entries) - self.budget
        if excess > 0:
            for key, _ in sorted(entries.items(), key=lambda kv: (kv[1], kv[0][1], kv[0][0]))[:excess]:
                del entries[key]

    def match(self, model: str, chain: list[bytes]) -> dict[str, int]:
        """For each worker, the deepest block of `chain` it was given (in blocks)."""
        entries = self.models.get(model, {})
        best: dict[str, int] = {}
        workers = {w for w, _ in entries}
        for i, h in enumerate(chain):
            for worker in workers:
                if (worker, h) in entries:
                    best[worker] = i + 1
        return best

    def forget_worker(self, worker: str) -> None:
        for entries in self.models.values():
            for key in [k for k in entries if k[0] == worker]:
                del entries[key]

    def __len__(self) -> int:
        return sum(len(e) for e in self.models.values())

    def copy(self) -> PrefixSummary:
        return PrefixSummary(self.budget, self.ttl_ms, self.models)

    def state_digest(self) -> str:
        canonical = [[m, sorted([w, h, list(ts)] for (w, h), ts in e.items())] for m, e in sorted(self.models.items())]
        return digest_of("prefix-summary", canonical)
