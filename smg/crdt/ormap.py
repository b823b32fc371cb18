"""Add-wins observed-remove map and set, with dots and a causal context.

Every put tags its key with a fresh dot (replica, counter) and a timestamp;
a remove carries, in its causal context, the dots it has seen for the key.
The join keeps a dot when both sides hold it, or when one side holds it and
the other has never seen it: so a put concurrent with a remove survives (add
wins), and a removed dot never comes back. With `ttl_ms`, an entry whose
newest timestamp is older than the newest timestamp in the whole map by more
than the TTL reads as absent, and `prune()` removes it for good: a
deterministic function of the merged state, not of a local clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from smg.crdt.digest import digest_of
from smg.crdt.hlc import ZERO, Timestamp
from smg.crdt.replica import ReplicaId

Dot = tuple[ReplicaId, int]


class DotContext:
    """The dots a replica has seen: a version vector plus the gaps' cloud."""

    __slots__ = ("cloud", "vv")

    def __init__(self, vv: dict[ReplicaId, int] | None = None, cloud: set[Dot] | None = None) -> None:
        self.vv: dict[ReplicaId, int] = dict(vv or {})
        self.cloud: set[Dot] = set(cloud or ())

    def __contains__(self, dot: Dot) -> bool:
        return dot[1] <= self.vv.get(dot[0], 0) or dot in self.cloud

    def next_dot(self, replica: ReplicaId) -> Dot:
        dot = (replica, self.vv.get(replica, 0) + 1)
        self.vv[replica] = dot[1]
        return dot

    def add(self, dot: Dot) -> None:
        self.cloud.add(dot)
        self.compact()

    def merge(self, other: DotContext) -> None:
        for replica, counter in other.vv.items():
            if counter > self.vv.get(replica, 0):
                self.vv[replica] = counter
        self.cloud |= other.cloud
        self.compact()

    def compact(self) -> None:
        changed = True
        while changed:
            changed = False
            for dot in list(self.cloud):
                replica, counter = dot
                current = self.vv.get(replica, 0)
                if counter == current + 1:
                    self.vv[replica] = counter
                    self.cloud.discard(dot)
                    changed = True
                elif counter <= current:
                    self.cloud.discard(dot)

    def copy(self) -> DotContext:
        return DotContext(self.vv, self.cloud)

    def canonical(self) -> list[Any]:
        return [sorted(self.vv.items()), sorted(self.cloud)]


class ORMap:
    __slots__ = ("context", "entries", "ttl_ms")

    def __init__(
        self,
        entries: dict[str, dict[Dot, tuple[Timestamp, Any]]] | None = None,
        context: DotContext | None = None,
        ttl_ms: int | None = None,
    ) -> None:
        self.entries: dict[str, dict[Dot, tuple[Timestamp, Any]]] = {k: dict(v) for k, v in (entries or {}).items()}
        self.context = context.copy() if context else DotContext()
        self.ttl_ms = ttl_ms

    def put(self, key: str, value: Any, replica: ReplicaId, ts: Timestamp) -> ORMap:
        """Set `key` (superseding what this replica has seen of it); returns the delta."""
        delta_context = DotContext(cloud=set(self.entries.get(key, {})))
        dot = self.context.next_dot(replica)
        delta_context.add(dot)
        self.entries[key] = {dot: (ts, value)}
        return ORMap({key: {dot: (ts, value)}}, delta_context, self.ttl_ms)

    def remove(self, key: str) -> ORMap:
        """Remove `key` as far as this replica has seen it; returns the delta."""
        dots = set(self.entries.pop(key, {}))
        return ORMap({}, DotContext(cloud=dots), self.ttl_ms)

    def merge(self, other: ORMap) -> None:
        mine_ctx, theirs_ctx = self.context, other.context
        for key in set(self.entries) | set(other.entries):
            mine = self.entries.get(key, {})
            theirs = other.entries.get(key, {})
            kept = {d: v for d, v in mine.items() if d in theirs or d not in theirs_ctx}
            kept.update((d, v) for d, v in theirs.items() if d not in mine_ctx)
            if kept:
                self.entries[key] = kept
            else:
                self.entries.pop(key, None)
        mine_ctx.merge(theirs_ctx)

    # -- reads ----------------------------------------------------------------

    def _newest(self) -> Timestamp:
        return max((ts for dots in self.entries.values() for ts, _ in dots.values()), default=ZERO)

    def _live(self, dots: dict[Dot, tuple[Timestamp, Any]], cutoff: int | None) -> tuple[Timestamp, Any] | None:
        best = max(dots.values(), key=lambda tv: tv[0], default=None)
        if best is None or (cutoff is not None and best[0].wall < cutoff):
            return None
        return best

    def _cutoff(self) -> int | None:
        return None if self.ttl_ms is None else self._newest().wall - self.ttl_ms

    def get(self, key: str, default: Any = None) -> Any:
        live = self._live(self.entries.get(key, {}), self._cutoff())
        return default if live is None else live[1]

    def __contains__(self, key: object) -> bool:
        return self._live(self.entries.get(key, {}), self._cutoff()) is not None  # type: ignore[call-overload]

    def items(self) -> Iterator[tuple[str, Any]]:
        cutoff = self._cutoff()
        for key, dots in self.entries.items():
            live = self._live(dots, cutoff)
            if live is not None:
                yield key, live[1]

    def prune(self) -> ORMap:
        """Remove expired entries for good; returns the delta (a removal)."""
        cutoff = self._cutoff()
        if cutoff is None:
            return ORMap(ttl_ms=self.ttl_ms)
        removed: set[Dot] = set()
        for key in [k for k, dots in self.entries.items() if self._live(dots, cutoff) is None]:
            removed |= set(self.entries.pop(key))
        return ORMap({}, DotContext(cloud=removed), self.ttl_ms)

    def copy(self) -> ORMap:
        return ORMap(self.entries, self.context, self.ttl_ms)

    def state_digest(self) -> str:
        canonical = [
            [k, sorted([list(d), list(ts), v] for d, (ts, v) in dots.items())] for k, dots in sorted(self.entries.items())
        ]
        return digest_of("ormap", [canonical, self.context.canonical()])


class ORSet:
    """An add-wins set: an ORMap whose values are ignored."""

    __slots__ = ("map",)

    def __init__(self, ttl_ms: int | None = None, map: ORMap | None = None) -> None:
        self.map = map or ORMap(ttl_ms=ttl_ms)

    def add(self, element: str, replica: ReplicaId, ts: Timestamp) -> ORSet:
        return ORSet(map=self.map.put(element, None, replica, ts))

    def remove(self, element: str) -> ORSet:
        return ORSet(map=self.map.remove(element))

    def merge(self, other: ORSet) -> None:
        self.map.merge(other.map)

    def __contains__(self, element: object) -> bool:
        return element in self.map

    def elements(self) -> set[str]:
        return {k for k, _ in self.map.items()}

    def prune(self) -> ORSet:
        return ORSet(map=self.map.prune())

    def copy(self) -> ORSet:
        return ORSet(map=self.map.copy())

    def state_digest(self) -> str:
        return self.map.state_digest()
