"""Last-writer-wins map, with tombstones and safe tombstone GC.

Writes are ordered by HLC timestamp (wall, logical, replica), so there are
no ties. A deletion is a tombstone entry. Tombstones are collected with
`collect(stable)`, where `stable` is a timestamp every known member has
acknowledged merging everything up to (the HA layer computes it from acks of
all members: alive, suspect, and dead-but-not-reaped). Collecting raises the
map's GC floor; merges carry the floor along, and a write at or below the
floor for a key the map does not hold is dropped: every member had that
write before the floor was set, so if the key is gone it was deleted, and a
straggler can never resurrect it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from smg.crdt.digest import digest_of
from smg.crdt.hlc import ZERO, Timestamp


class Entry(NamedTuple):
    ts: Timestamp
    value: Any
    deleted: bool


class LWWMap:
    __slots__ = ("entries", "floor")

    def __init__(self, entries: dict[str, Entry] | None = None, floor: Timestamp = ZERO) -> None:
        self.entries: dict[str, Entry] = dict(entries or {})
        self.floor = floor

    # -- mutators (each returns its delta) ----------------------------------

    def set(self, key: str, value: Any, ts: Timestamp) -> LWWMap:
        entry = Entry(ts, value, False)
        self._apply(key, entry)
        return LWWMap({key: entry})

    def delete(self, key: str, ts: Timestamp) -> LWWMap:
        entry = Entry(ts, None, True)
        self._apply(key, entry)
        return LWWMap({key: entry})

    def _apply(self, key: str, entry: Entry) -> None:
        current = self.entries.get(key)
        if current is None:
            if entry.ts > self.floor:  # at or below: unknown here means deleted and collected
                self.entries[key] = entry
        elif entry.ts > current.ts:
            self.entries[key] = entry

    # -- join and GC ----------------------------------------------------------

    def merge(self, other: LWWMap) -> None:
        if other.floor > self.floor:
            self.collect(other.floor)
        for key, entry in other.entries.items():
            self._apply(key, entry)

    def collect(self, stable: Timestamp) -> int:
        """Raise the GC floor to `stable` and drop tombstones at or below it; returns how many."""
        if stable > self.floor:
            self.floor = stable
        doomed = [k for k, e in self.entries.items() if e.deleted and e.ts <= self.floor]
        for key in doomed:
            del self.entries[key]
        return len(doomed)

    # -- reads ----------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        entry = self.entries.get(key)
        return default if entry is None or entry.deleted else entry.value

    def __contains__(self, key: object) -> bool:
        entry = self.entries.get(key)  # type: ignore[call-overload]
        return entry is not None and not entry.deleted

    def items(self) -> Iterator[tuple[str, Any]]:
        return ((k, e.value) for k, e in self.entries.items() if not e.deleted)

    def __len__(self) -> int:
        return sum(1 for e in self.entries.values() if not e.deleted)

    @property
    def tombstones(self) -> int:
        return sum(1 for e in self.entries.values() if e.deleted)

    def copy(self) -> LWWMap:
        return LWWMap(self.entries, self.floor)

    def state_digest(self) -> str:
        canonical = [[k, list(e.ts), e.deleted, e.value] for k, e in sorted(self.entries.items())]
        return digest_of("lww-map", [list(self.floor), canonical])
