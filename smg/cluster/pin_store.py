"""Sticky-session pins shared by every gateway: routing key -> worker, an LWW map.

With `--ha-mesh`, a sticky policy's `LocalPins` is replaced by this table, so a key pinned
through one gateway goes to the same worker through any other. A value is
`[worker id, last use in wall ms]`. Reads are local (no mesh round trip on the request path);
a write goes out when a key is pinned or moved, and a key in steady use is written again only
when its replicated last use is older than `refresh_ms` (an eighth of `--max-idle-secs`, at
least a second), so a hot conversation does not flood the mesh.

Two gateways pinning one new key at the same moment to different workers converge on the
later write (the HLC orders them); the request that lost went to the other worker once.

Expiry: a pin whose replicated last use is older than `--max-idle-secs` reads as absent on
every node alike, and `sweep` (the node's collector, every few seconds) deletes it, and the
least recently used keys beyond `max_keys`, with tombstones that the replication collects.
"""

from __future__ import annotations

import heapq
from collections import Counter
from typing import Any

from smg.cluster.replication import Replication
from smg.cluster.worker_store import wall_ms
from smg.crdt.codec import CRDT
from smg.crdt.lww import LWWMap
from smg.routing.policies.sticky import LocalPins

STORE = "pins"
MAX_KEY_CHARS = 256  # a peer's key longer than this (ours are at most 129) is refused


def _pin(value: Any) -> tuple[str, int] | None:
    """A well-formed value as (worker id, last use ms), else None."""
    if isinstance(value, list | tuple) and len(value) == 2:
        worker_id, used = value
        if isinstance(worker_id, str) and isinstance(used, int) and not isinstance(used, bool):
            return worker_id, used
    return None


class ReplicatedPins:
    """A `PinTable` over the replicated map (the `now` arguments are ignored: wall time orders pins
    across nodes, whose monotonic clocks differ)."""

    def __init__(self, replication: Replication, max_idle_secs: float, max_keys: int) -> None:
        self.replication = replication
        self.idle_ms = int(max_idle_secs * 1000)
        self.refresh_ms = max(1000, self.idle_ms // 8)
        self.max_keys = max_keys
        self._held: Counter[str] | None = None  # keys per worker; None: count again (a merge or sweep changed many)
        replication.add_store(STORE, LWWMap(), on_merge=self._forget_counts, vet=self._vet)

    @property
    def map(self) -> LWWMap:
        return self.replication.state(STORE)  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self.map)

    def get(self, key: str, now: float) -> str | None:
        pin = _pin(self.map.get(key))
        if pin is None or wall_ms() - pin[1] > self.idle_ms:
            return None
        return pin[0]

    def put(self, key: str, worker_id: str, now: float) -> None:
        now_ms = wall_ms()
        pin = _pin(self.map.get(key))
        if pin is not None and pin[0] == worker_id and now_ms - pin[1] < self.refresh_ms:
            return  # pinned there, and its use was shared recently enough
        held = self._held
        if held is not None and (pin is None or pin[0] != worker_id):
            if pin is not None:
                held[pin[0]] -= 1
            held[worker_id] += 1
        self.replication.changed(STORE, self.map.set(key, [worker_id, now_ms], self.replication.stamp(now_ms)))

    def held(self) -> Counter[str]:
        """Keys per worker (for `min_group`): counted over the map after a merge or sweep, kept up
        to date by local pins in between, so a stream of new keys does not scan the map each time.
        Idle pins count until the next sweep deletes them."""
        if self._held is None:
            self._held = Counter(pin[0] for _, value in self.map.items() if (pin := _pin(value)) is not None)
        return +self._held

    def _forget_counts(self) -> None:
        self._held = None

    def adopt(self, local: LocalPins) -> None:
        """Publish the pins this gateway made before it joined (its own clock converted to wall time)."""
        now_ms = wall_ms()
        newest = max((used for _, _, used in local.items()), default=0.0)
        for key, worker_id, used in local.items():
            used_ms = now_ms - int((newest - used) * 1000)
            if key not in self.map:
                self.replication.changed(STORE, self.map.set(key, [worker_id, used_ms], self.replication.stamp(now_ms)))

    def sweep(self) -> int:
        """Delete pins idle too long, malformed, or the least recently used beyond `max_keys`;
        returns how many. Every node may sweep the same key: deletes are idempotent."""
        now_ms = wall_ms()
        records = self.map
        doomed: list[str] = []
        live: list[tuple[int, str]] = []
        for key, value in records.items():
            pin = _pin(value)
            if pin is None or now_ms - pin[1] > self.idle_ms:
                doomed.append(key)
            else:
                live.append((pin[1], key))
        if len(live) > self.max_keys:
            doomed += [key for _, key in heapq.nsmallest(len(live) - self.max_keys, live)]
        for key in doomed:
            self.replication.changed(STORE, records.delete(key, self.replication.stamp(now_ms)))
        if doomed:
            self._held = None
        return len(doomed)

    def _vet(self, remote: CRDT, now_ms: int) -> None:
        """Refuse a peer's pins that no gateway of ours writes: a malformed value or an oversized
        key (the whole message is dropped and counted, as for the other stores)."""
        if not isinstance(remote, LWWMap):
            raise ValueError("pins must be an LWW map")
        if len(remote.entries) + len(self.map.entries) > 2 * self.max_keys + 1024:
            raise ValueError(f"more than twice the {self.max_keys} pins a gateway keeps")
        for key, entry in remote.entries.items():
            if len(key) > MAX_KEY_CHARS:
                raise ValueError(f"a pin key of {len(key)} characters")
            if not entry.deleted and _pin(entry.value) is None:
                raise ValueError(f"a malformed pin for key {key[:40]!r}")
