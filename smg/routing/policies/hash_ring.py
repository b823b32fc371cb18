"""Consistent-hash ring with virtual nodes (sans-IO), shared by the hashing policies."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from smg.hashing import hash64
from smg.workers.registry import Worker


class HashRing:
    """Points on a 64-bit ring; a key belongs to the first point clockwise of its hash.

    Built from worker ids, so every node derives the same ring for the same
    workers, and removing a worker moves only the keys it held.
    """

    def __init__(self, workers: Sequence[Worker], virtual_nodes: int) -> None:
        points = sorted((hash64(f"{w.id}#{v}".encode()), i) for i, w in enumerate(workers) for v in range(virtual_nodes))
        self._hashes = [h for h, _ in points]
        self._owners = [i for _, i in points]
        self.workers = list(workers)

    def walk(self, key_hash: int) -> Iterator[Worker]:
        """Distinct workers in ring order, starting at the key's owner."""
        start = bisect_left(self._hashes, key_hash) % len(self._hashes)
        seen: set[int] = set()
        n = len(self._owners)
        for step in range(n):
            owner = self._owners[(start + step) % n]
            if owner not in seen:
                seen.add(owner)
                yield self.workers[owner]
                if len(seen) == len(self.workers):
                    return


class RingCache:
    """Rings keyed by the exact worker set, rebuilt only when the set changes."""

    def __init__(self, virtual_nodes: int, size: int = 16) -> None:
        self.virtual_nodes = virtual_nodes
        self.size = size
        self._rings: dict[tuple[str, ...], HashRing] = {}

    def ring(self, workers: Sequence[Worker]) -> HashRing:
        key = tuple(w.id for w in workers)
        ring = self._rings.get(key)
        if ring is None:
            if len(self._rings) >= self.size:
                self._rings.pop(next(iter(self._rings)))
            ring = self._rings[key] = HashRing(workers, self.virtual_nodes)
        return ring
