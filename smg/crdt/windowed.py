"""Windowed counters for cluster-wide rate limits.

Per key, per window epoch (the caller's `floor(now / window)`), one slot per
replica; within an epoch slots merge by max, and only the two newest epochs
of a key are kept (the current one and the previous one, for the sliding
estimate): a newer epoch wins over older ones.
"""

from __future__ import annotations

from smg.crdt.digest import digest_of
from smg.crdt.replica import ReplicaId

Windows = dict[int, dict[ReplicaId, int]]  # epoch -> replica -> count
KEEP = 2


class WindowedCounter:
    __slots__ = ("keys",)

    def __init__(self, keys: dict[str, Windows] | None = None) -> None:
        self.keys: dict[str, Windows] = {k: {e: dict(s) for e, s in w.items()} for k, w in (keys or {}).items()}

    def increment(self, key: str, replica: ReplicaId, epoch: int, amount: int = 1) -> WindowedCounter:
        """Count `amount` for `key` in window `epoch`; returns the delta."""
        if amount < 0:
            raise ValueError("a windowed counter only grows within a window")
        if amount == 0:
            return WindowedCounter()  # zero slots are never stored: the state stays canonical
        windows = self.keys.setdefault(key, {})
        slots = windows.setdefault(epoch, {})
        slots[replica] = slots.get(replica, 0) + amount
        self._prune(windows)
        return WindowedCounter({key: {epoch: {replica: slots.get(replica, 0)}}} if epoch in windows else {})

    def merge(self, other: WindowedCounter) -> None:
        for key, theirs in other.keys.items():
            windows = self.keys.get(key)
            for epoch, slots in theirs.items():
                for replica, count in slots.items():
                    if windows is None:
                        windows = self.keys[key] = {}
                    if count > windows.get(epoch, {}).get(replica, 0):
                        windows.setdefault(epoch, {})[replica] = count
            if windows is not None:
                self._prune(windows)

    @staticmethod
    def _prune(windows: Windows) -> None:
        if len(windows) > KEEP:
            for epoch in sorted(windows)[:-KEEP]:
                del windows[epoch]

    def total(self, key: str, epoch: int) -> int:
        return sum(self.keys.get(key, {}).get(epoch, {}).values())

    def read(self, key: str, epoch: int, elapsed_fraction: float = 1.0) -> float:
        """Cluster count for the window, plus the sliding-window share of the previous one."""
        return self.total(key, epoch) + self.total(key, epoch - 1) * max(0.0, 1.0 - elapsed_fraction)

    def share(self, key: str, epoch: int, replica: ReplicaId) -> int:
        return self.keys.get(key, {}).get(epoch, {}).get(replica, 0)

    def drop_before(self, epoch: int) -> None:
        """Forget keys whose newest window is older than `epoch` (idle tenants)."""
        for key in [k for k, w in self.keys.items() if not w or max(w) < epoch]:
            del self.keys[key]

    def __len__(self) -> int:
        """Keys counted (tenants x limits, for rate limits)."""
        return len(self.keys)

    def copy(self) -> WindowedCounter:
        return WindowedCounter(self.keys)

    def state_digest(self) -> str:
        canonical = [[k, [[e, sorted(s.items())] for e, s in sorted(w.items())]] for k, w in sorted(self.keys.items())]
        return digest_of("windowed", canonical)
