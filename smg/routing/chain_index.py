"""Which worker was given which prefix blocks, by chained block hash (sans-IO).

The replicable twin of the radix tree: per model, block hash -> {worker id:
last seen}. Chain hashes name whole prefixes (see `smg.hashing`), so a
worker holding block i's hash was given the whole prefix up to block i; its
match is the deepest such block, in blocks. Every node computes the same
hashes for the same request, so the HA layer can merge these maps across
gateways; here they are filled by this node's own routing decisions.
Bounded by `max_entries` per model, least recently seen first out.
"""

from __future__ import annotations


class ChainIndex:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._holders: dict[bytes, dict[str, float]] = {}
        self.entries = 0  # (hash, worker) pairs

    def match(self, chain: list[bytes]) -> dict[str, int]:
        """For each worker, the number of leading blocks of `chain` it holds (deepest hit)."""
        best: dict[str, int] = {}
        holders = self._holders
        for i, h in enumerate(chain):
            found = holders.get(h)
            if found:
                for worker in found:
                    best[worker] = i + 1
        return best

    def insert(self, chain: list[bytes], worker: str, now: float) -> None:
        holders = self._holders
        for h in chain:
            found = holders.get(h)
            if found is None:
                holders[h] = {worker: now}
                self.entries += 1
            else:
                if worker not in found:
                    self.entries += 1
                found[worker] = now

    def merge(self, block: bytes, worker: str, seen: float) -> None:
        """Fold in one remote record (max of last-seen wins)."""
        found = self._holders.setdefault(block, {})
        if worker not in found:
            self.entries += 1
            found[worker] = seen
        elif seen > found[worker]:
            found[worker] = seen

    def evict(self) -> int:
        """Drop the least recently seen entries down to the budget; returns how many."""
        excess = self.entries - self.max_entries
        if excess <= 0:
            return 0
        ranked = sorted((seen, h, w) for h, found in self._holders.items() for w, seen in found.items())
        for _, h, w in ranked[:excess]:
            found = self._holders[h]
            del found[w]
            if not found:
                del self._holders[h]
        self.entries -= excess
        return excess

    def remove_worker(self, worker: str) -> None:
        for h in list(self._holders):
            found = self._holders[h]
            if found.pop(worker, None) is not None:
                self.entries -= 1
                if not found:
                    del self._holders[h]
