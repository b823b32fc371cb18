"""Windowed counters for cluster-wide rate limits.

Per key, per window epoch (the caller's `floor(now / window)`), one slot per
replica; within an epoch slots merge by max. Only the newest epoch seen
anywhere in the counter and the one before it are kept (the current window
and the previous one, for the sliding estimate); older windows, and keys
left with none (idle tenants), are dropped. That is a pure function of the
merged state, so every replica drops the same windows and digests agree,
and merging stays a join (the threshold only grows).
"""

from __future__ import annotations

from smg.crdt.digest import digest_of
from smg.crdt.replica import ReplicaId

Windows = dict[int, dict[ReplicaId, int]]  # epoch -> replica -> count
KEEP = 2


class WindowedCounter:
    __slots__ = ("keys", "newest")

    def __init__(self, keys: dict[str, Windows] | None = None) -> None:
        self.keys: dict[str, Windows] = {k: {e: dict(s) for e, s in w.items()} for k, w in (keys or {}).items() if w}
        self.newest = max((max(w) for w in self.keys.values()), default=-1)
        self._drop_old()

    def increment(self, key: str, replica: ReplicaId, epoch: int, amount: int = 1) -> WindowedCounter:
        """Count `amount` for `key` in window `epoch`; returns the delta."""
        if amount < 0:
            raise ValueError("a windowed counter only grows within a window")
        if amount == 0:
            return WindowedCounter()  # zero slots are never stored: the state stays canonical
        if epoch < self.newest - 1:
            return WindowedCounter()  # a window this counter has moved past
        slots = self.keys.setdefault(key, {}).setdefault(epoch, {})
        slots[replica] = slots.get(replica, 0) + amount
        if epoch > self.newest:
            self.newest = epoch
            self._drop_old()
        return WindowedCounter({key: {epoch: {replica: slots[replica]}}})

    def merge(self, other: WindowedCounter) -> None:
        for key, theirs in other.keys.items():
            windows = self.keys.get(key)
            for epoch, slots in theirs.items():
                for replica, count in slots.items():
                    if windows is None:
                        windows = self.keys[key] = {}
                    if count > windows.get(epoch, {}).get(replica, 0):
                        windows.setdefault(epoch, {})[replica] = count
            if windows and max(windows) > self.newest:
                self.newest = max(windows)
        self._drop_old()

    def _drop_old(self) -> None:
        """Keep the newest epoch and the one before it; forget keys left empty."""
        oldest = self.newest - (KEEP - 1)
        for key in list(self.keys):
            windows = self.keys[key]
            for epoch in [e for e in windows if e < oldest]:
                del windows[epoch]
            if not windows:
                del self.keys[key]

    def total(self, key: str, epoch: int) -> int:
        return sum(self.keys.get(key, {}).get(epoch, {}).values())

    def read(self, key: str, epoch: int, elapsed_fraction: float = 1.0) -> float:
        """Cluster count for the window, plus the sliding-window share of the previous one."""
        return self.total(key, epoch) + self.total(key, epoch - 1) * max(0.0, 1.0 - elapsed_fraction)

    def share(self, key: str, epoch: int, replica: ReplicaId) -> int:
        return self.keys.get(key, {}).get(epoch, {}).get(replica, 0)

    def __len__(self) -> int:
        """Keys counted (tenants x limits, for rate limits)."""
        return len(self.keys)

    def copy(self) -> WindowedCounter:
        return WindowedCounter(self.keys)

    def state_digest(self) -> str:
        canonical = [[k, [[e, sorted(s.items())] for e, s in sorted(w.items())]] for k, w in sorted(self.keys.items())]
        return digest_of("windowed", canonical)
