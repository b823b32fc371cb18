"""Grow-only and positive-negative counters: one slot per replica, max wins."""

from __future__ import annotations

from smg.crdt.digest import digest_of
from smg.crdt.replica import ReplicaId


class GCounter:
    __slots__ = ("slots",)

    def __init__(self, slots: dict[ReplicaId, int] | None = None) -> None:
        self.slots: dict[ReplicaId, int] = dict(slots or {})

    def increment(self, replica: ReplicaId, amount: int = 1) -> GCounter:
        """Add `amount` (>= 0) in `replica`'s slot; returns the delta."""
        if amount < 0:
            raise ValueError("a GCounter only grows")
        self.slots[replica] = self.slots.get(replica, 0) + amount
        return GCounter({replica: self.slots[replica]})

    def merge(self, other: GCounter) -> None:
        slots = self.slots
        for replica, count in other.slots.items():
            if count > slots.get(replica, 0):
                slots[replica] = count

    @property
    def value(self) -> int:
        return sum(self.slots.values())

    def copy(self) -> GCounter:
        return GCounter(self.slots)

    def state_digest(self) -> str:
        return digest_of("gcounter", sorted(self.slots.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GCounter) and self.slots == other.slots


class PNCounter:
    __slots__ = ("n", "p")

    def __init__(self, p: GCounter | None = None, n: GCounter | None = None) -> None:
        self.p = p or GCounter()
        self.n = n or GCounter()

    def increment(self, replica: ReplicaId, amount: int = 1) -> PNCounter:
        if amount >= 0:
            return PNCounter(p=self.p.increment(replica, amount))
        return PNCounter(n=self.n.increment(replica, -amount))

    def decrement(self, replica: ReplicaId, amount: int = 1) -> PNCounter:
        return self.increment(replica, -amount)

    def merge(self, other: PNCounter) -> None:
        self.p.merge(other.p)
        self.n.merge(other.n)

    @property
    def value(self) -> int:
        return self.p.value - self.n.value

    def copy(self) -> PNCounter:
        return PNCounter(self.p.copy(), self.n.copy())

    def state_digest(self) -> str:
        return digest_of("pncounter", [sorted(self.p.slots.items()), sorted(self.n.slots.items())])
