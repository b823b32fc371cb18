"""Named CRDT stores kept in sync with the mesh's members (sans-IO).

Each store has a `DeltaReplicator`. `outgoing(members, ...)` says what to
send whom on the mesh's ordered per-peer streams: delta-intervals, full
states in chunks, or, for a peer that is up to date, a small `sync` every
`sync_interval` so acknowledgements (and the GC frontier riding on them)
keep flowing while idle. Every node sends its own changes to every live
member directly, so nothing is relayed; a member that could not hear the
writer (a partial partition) catches up through anti-entropy: push-pull
compares digests and a differing store is sent in full. An unacknowledged message is sent again after
`resend_after`, grown by whatever changed meanwhile.

Tombstone GC. When we send a peer our log up to `seq`, we stamp that moment
with the HLC; once the peer acknowledges `seq`, it holds every write we had
made before the stamp. Our frontier is the oldest such stamp over every
known member (alive, suspect, or dead but not reaped: a partitioned member
still counts). Acks carry the acknowledging member's frontier. The stable
point is the minimum of ours and every member's reported one: a write stamped
at or before it was, by its origin, delivered to every member. Tombstones at
or before `stable - gc_grace` are collected (`LWWMap.collect`); the raised
floor is sent to every member as a delta (the highest floor wins), so all
collect the same tombstones and their digests agree, and a straggler never
resurrects a deleted key.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple, cast

import msgpack

from smg.crdt.codec import CRDT, CodecError, decode, encode
from smg.crdt.delta import DeltaMessage, DeltaReplicator
from smg.crdt.hlc import ZERO, HybridClock, Timestamp
from smg.crdt.lww import LWWMap
from smg.crdt.prefix_summary import PrefixSummary

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

DELTA = "crdt.delta"
ACK = "crdt.ack"
CHANNELS = (DELTA, ACK)
# The stores that follow the traffic (the prefix hints a routed request writes; the in-flight
# counts, written at each flush, one due within this long of a request starting or ending) share
# one cadence: a change leaves within this long (`add_store(send_delay=...)`), so a member sends
# each peer about one such flush per period whatever its request rate, and both stores ride in
# it. On a machine whose cores the gateways share, every flush wakes every peer, and those
# wake-ups were most of a meshed gateway's CPU (docs/architecture.md, "A replicated change").
TRAFFIC_SECS = 0.2
SETTLE_SECS = 3.0  # a soft store unchanged this long is compared at push-pull (its deltas leave within TRAFFIC_SECS)
# ... and compared with a peer at least this often whatever the traffic: a member that cannot hear
# a writer (a partial partition; nothing is relayed) gets its hints within this long
MAX_SKIP_SECS = 300.0


class ReplicationError(ValueError):
    """A replication message that is malformed, for an unknown store, or from a drifting clock."""


class Outgoing(NamedTuple):
    """A message to send: a tuple still, so a shell unpacks `peer, channel, payload` as before."""

    peer: str
    channel: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class _Sent:
    """The last message sent to a peer: its ack releases the interval in flight, its age paces the next."""

    seq: int
    at: float


@dataclass(slots=True)
class _PeerState:
    """What one store knows of one peer, in one record so that forgetting the peer forgets all of it."""

    last_sent: _Sent | None = None  # None: send whatever is due now (never sent, or anti-entropy reset it)
    send_stamps: dict[int, Timestamp] = field(default_factory=dict)  # seq -> HLC at send, until acknowledged
    ack_stamp: Timestamp = ZERO  # the newest acknowledged send stamp (ZERO: it holds nothing of ours we know of)
    reported: Timestamp = ZERO  # its own frontier, from its acks
    waiting_since: float | None = None  # the first unacknowledged send; None: nothing in flight
    compared_at: float | None = None  # the last push-pull that compared this store with the peer (soft stores)


@dataclass(slots=True)
class _Store:
    name: str
    replicator: DeltaReplicator
    on_merge: Callable[[], None] | None
    vet: Callable[[CRDT, int], None] | None  # a store's own check of remote data (given our wall ms)
    peers: dict[str, _PeerState] = field(default_factory=dict)
    synced: bool = False  # a peer's full state arrived at least once
    delta_bytes: int = 0
    full_bytes: int = 0
    merged: int = 0
    soft: bool = False  # compared at push-pull only once settled (`Replication.compare`)
    send_delay: float = 0.0  # a local change is flushed within this (`Replication.add_store`)
    version: int = 0  # local changes and merges so far
    seen_version: int = -1  # `version` when the shell last passed the time (`Replication._note_changes`)
    changed_at: float = -math.inf  # when a change was last seen (the shell's clock)

    def peer(self, name: str) -> _PeerState:
        """The peer's record, made on the first send to it or ack from it (reads make none)."""
        found = self.peers.get(name)
        if found is None:
            found = self.peers[name] = _PeerState()
        return found

    def ack_stamp(self, peer: str) -> Timestamp:
        """ZERO for a peer never heard from: it holds nothing of ours we know of, so it holds GC back."""
        found = self.peers.get(peer)
        return ZERO if found is None else found.ack_stamp

    def reported(self, peer: str) -> Timestamp:
        """ZERO for a peer whose frontier never arrived: it holds GC back too."""
        found = self.peers.get(peer)
        return ZERO if found is None else found.reported


class Replication:
    def __init__(
        self,
        node: str,
        clock: HybridClock,
        *,
        resend_after: float = 1.0,
        sync_interval: float = 5.0,
        gc_grace_ms: int = 60_000,
        chunk_bytes: int = 1024 * 1024,
        settle_secs: float = SETTLE_SECS,
        max_skip_secs: float = MAX_SKIP_SECS,
    ) -> None:
        self.node = node
        self.clock = clock
        self.replica = clock.replica
        self.resend_after = resend_after
        self.sync_interval = sync_interval
        self.gc_grace_ms = gc_grace_ms
        self.chunk_bytes = chunk_bytes
        self.settle_secs = settle_secs
        self.max_skip_secs = max_skip_secs
        self._stores: dict[str, _Store] = {}
        # a local change: the shell flushes within the delay given (the store's `send_delay`)
        self.on_change: Callable[[float], None] | None = None
        # replication lag: from a write's HLC stamp to its merge here (deltas only), cumulative counts
        self.lag_buckets = [0] * len(LAG_BUCKETS)
        self.lag_count = 0
        self.lag_sum = 0.0

    # -- stores -----------------------------------------------------------------------

    def add_store(
        self,
        name: str,
        state: CRDT,
        on_merge: Callable[[], None] | None = None,
        vet: Callable[[CRDT, int], None] | None = None,
        soft: bool = False,
        send_delay: float = 0.0,
    ) -> None:
        """Replicate `state` under `name`; `on_merge` runs after remote data was merged into it.

        `vet(remote, wall_ms)` may raise ValueError to refuse remote data before it is merged.
        `soft`: hints that change with every request and that every writer keeps refreshing (prefix
        summaries): push-pull compares them only once they are settled (`compare`).
        `send_delay`: a local change is flushed this long after it instead of at once (it goes
        sooner with any other flush; either way it still waits behind an unacknowledged
        interval, and the ack that frees it flushes within the same delay). For the stores that
        follow the traffic (`TRAFFIC_SECS`): every flush wakes every peer, so a gateway's
        routed requests should cost its peers one wake-up per period, not one each
        (`docs/architecture.md`).
        """
        replicator = DeltaReplicator(state, self.replica, chunk_bytes=self.chunk_bytes, relay=False)
        self._stores[name] = _Store(name, replicator, on_merge, vet, soft=soft, send_delay=send_delay)

    def state(self, name: str) -> Any:
        return self._stores[name].replicator.state

    def stores(self) -> list[str]:
        return list(self._stores)

    def changed(self, name: str, delta: CRDT) -> None:
        """A local mutation of store `name` (already applied) produced `delta`."""
        store = self._stores[name]
        store.replicator.apply_local(delta)
        store.version += 1
        if self.on_change is not None:
            self.on_change(store.send_delay)

    def sequence(self, name: str) -> int:
        """The log position of store `name`'s newest local change."""
        return self._stores[name].replicator.seq

    def confirmed(self, name: str, peers: Iterable[str]) -> int:
        """The log position of store `name` that every one of `peers` has merged (ours if none)."""
        replicator = self._stores[name].replicator
        return min((replicator.acked(peer) for peer in peers if peer != self.node), default=replicator.seq)

    def stamp(self, physical_ms: int) -> Timestamp:
        """An HLC timestamp for a local write."""
        return self.clock.now(physical_ms)

    def digests(self, at: float | None = None) -> dict[str, str]:
        """Each store's digest; with `at` (the shell's clock), only the comparable stores' (what
        push-pull carries: see `compare`)."""
        names = list(self._stores) if at is None else self.comparable(at)
        return {name: self._stores[name].replicator.state.state_digest() for name in names}

    def synced(self) -> bool:
        """Every store received a full state from some peer (a joining node has caught up)."""
        return all(s.synced for s in self._stores.values())

    # -- sending ----------------------------------------------------------------------

    def outgoing(self, peers: Iterable[str], now: float, physical_ms: int) -> list[Outgoing]:
        """Messages due now for the live `peers`."""
        self._note_changes(now)
        out: list[Outgoing] = []
        for peer in peers:
            if peer == self.node:
                continue
            for store in self._stores.values():
                out += self._due(store, peer, now, physical_ms)
        return out

    def _due(self, store: _Store, peer: str, now: float, physical_ms: int) -> list[Outgoing]:
        replicator = store.replicator
        state = store.peer(peer)
        last = state.last_sent
        if last is not None and state.waiting_since is not None and now - last.at < self.resend_after:
            # One interval in flight per peer and store: what changes meanwhile goes out, joined,
            # when the ack arrives (the shell flushes on every ack) or at the resend. Sending a
            # fresh, ever-larger join on every change instead piled copies into a connection in
            # TCP's backoff under packet loss (a gateway grew by 117 MB at 30 % loss, 100 req/s).
            return []
        messages = replicator.outgoing(peer)
        if not messages:
            if last is not None and now - last.at < self.sync_interval:
                return []
            messages = [DeltaMessage(self.replica, replicator.seq, chunk=b"", index=0, count=0)]  # sync
        stamp = self.clock.now(physical_ms)
        seq = messages[0].seq
        state.last_sent = _Sent(seq, now)
        if state.waiting_since is None:
            state.waiting_since = now
        stamps = state.send_stamps
        stamps[seq] = stamp
        if len(stamps) > 64:  # acks lost for long: keep the newest
            for old in sorted(stamps)[:-64]:
                del stamps[old]
        return [Outgoing(peer, DELTA, self._encode(store, m)) for m in messages]

    def _encode(self, store: _Store, message: DeltaMessage) -> bytes:
        body: dict[str, Any] = {"s": store.name, "r": message.sender, "q": message.seq}
        if message.delta is not None:
            body["d"] = encode(message.delta)
            store.delta_bytes += len(body["d"])
        else:
            body.update(c=message.chunk, i=message.index, n=message.count)
            store.full_bytes += len(message.chunk)
        return cast(bytes, msgpack.packb(body, use_bin_type=True))

    # -- receiving --------------------------------------------------------------------

    def receive(self, peer: str, channel: str, payload: bytes, members: Iterable[str], physical_ms: int) -> list[Outgoing]:
        """Handle a message from `peer`; returns the ack to send. Raises ReplicationError."""
        body = _unpack(payload)
        store = self._stores.get(_field(body, "s", str))
        if store is None:
            raise ReplicationError(f"unknown store '{body['s']}'")
        if channel == ACK:
            self._on_ack(store, peer, body)
            # the peer has room for what changed while the interval was in flight: it goes as a change
            # would (a cadence store's, within its delay); an ack of everything frees nothing
            if self.on_change is not None and store.replicator.seq > store.replicator.acked(peer):
                self.on_change(store.send_delay)
            return []
        if channel != DELTA:
            raise ReplicationError(f"unknown channel '{channel}'")
        message = _message(body)
        replicator = store.replicator
        if message.count == 0:  # a sync: acknowledge what we hold of the peer's log
            seq: int | None = message.seq
            replicator.note_epoch(peer, message.sender)
        else:
            try:  # the check sees this message's wall clock, for the drift check and the lag
                # a full state (a join, a digest mismatch) carries old writes: no lag to observe
                seq = replicator.receive(peer, message, partial(self._vet, store, physical_ms, not message.is_full))
            except ValueError as exc:  # CodecError, ClockDriftError, a store's refusal
                raise ReplicationError(f"store '{store.name}': {exc}") from None
            if seq is not None:
                store.merged += 1
                store.version += 1
                store.synced = store.synced or message.is_full
                if store.on_merge is not None:
                    store.on_merge()
        if seq is None:
            return []
        ack = {"s": store.name, "q": seq, "e": message.sender, "p": self.replica, "f": self.frontier(store.name, members).pack()}
        return [Outgoing(peer, ACK, msgpack.packb(ack, use_bin_type=True))]

    def _on_ack(self, store: _Store, peer: str, body: dict[str, Any]) -> None:
        seq = _field(body, "q", int)
        epoch, peer_epoch = _field(body, "e", str), _field(body, "p", str)
        try:
            reported = Timestamp.unpack(body.get("f"))
        except ValueError as exc:
            raise ReplicationError(str(exc)) from None
        replicator = store.replicator
        before = replicator.acked(peer)
        replicator.ack(peer, seq, epoch, peer_epoch)
        state = store.peer(peer)
        state.reported = reported
        stamps = state.send_stamps
        if epoch == self.replica and replicator.acked(peer) >= seq > -1 and seq in stamps:
            state.ack_stamp = max(state.ack_stamp, stamps[seq])
        elif replicator.acked(peer) < before:
            state.ack_stamp = ZERO  # a new life of the peer: it holds nothing of ours yet
        for old in [q for q in stamps if q <= seq]:
            del stamps[old]
        last = state.last_sent
        if last is not None and seq >= last.seq:
            state.waiting_since = None

    def _vet(self, store: _Store, physical_ms: int, fresh: bool, crdt: CRDT) -> None:
        """Fold remote LWW stamps into our clock; a stamp too far ahead rejects the message.
        `fresh`: a delta of recent writes, whose newest stamp measures the replication lag."""
        if isinstance(crdt, LWWMap) and crdt.entries:
            newest = max(entry.ts for entry in crdt.entries.values())
            self.clock.observe(newest, physical_ms)
            if fresh:
                self._observe_lag(newest.wall, physical_ms)
        elif isinstance(crdt, PrefixSummary) and fresh:
            stamps = [ts.wall for entries in crdt.models.values() for ts in entries.values()]
            if stamps:
                self._observe_lag(max(stamps), physical_ms)
        if store.vet is not None:
            store.vet(crdt, physical_ms)

    def lagging(self, peers: Iterable[str], now: float, bound: float = 5.0) -> list[str]:
        """`store/peer` pairs where the peer has not acknowledged what we sent for `bound` seconds."""
        out = []
        for name, store in self._stores.items():
            for peer in peers:
                state = store.peers.get(peer)
                since = state.waiting_since if state is not None else None
                if since is not None and now - since > bound:
                    out.append(f"{name}/{peer}")
        return out

    def _observe_lag(self, written_ms: int, physical_ms: int) -> None:
        if written_ms <= 0:
            return
        lag = max(0.0, (physical_ms - written_ms) / 1000)
        if lag > LAG_BUCKETS[-1] * 6:
            return  # old state arriving in a delta-interval (a straggler), not a fresh write
        for i, bound in enumerate(LAG_BUCKETS):
            if lag <= bound:
                self.lag_buckets[i] += 1
        self.lag_count += 1
        self.lag_sum += lag

    def store_stats(self) -> dict[str, dict[str, int]]:
        return {
            name: {
                "entries": len(s.replicator.state) if isinstance(s.replicator.state, Sized) else 1,
                "delta_bytes": s.delta_bytes,
                "full_bytes": s.full_bytes,
                "merged": s.merged,
            }
            for name, s in self._stores.items()
        }

    # -- anti-entropy and GC -------------------------------------------------------------

    def _note_changes(self, now: float) -> None:
        """Date the changes since the last call (the shell calls `outgoing` at least every second)."""
        for store in self._stores.values():
            if store.version != store.seen_version:
                store.seen_version, store.changed_at = store.version, now

    def comparable(self, now: float) -> list[str]:
        """The stores push-pull compares now: every store but a soft one that changed here within
        `settle_secs` (deltas in flight would explain a difference)."""
        self._note_changes(now)
        return [n for n, s in self._stores.items() if not s.soft or now - s.changed_at >= self.settle_secs]

    def compare(self, peer: str, digests: Any, now: float | None = None) -> list[str]:
        """Stores whose digest differs from `peer`'s (from push-pull): they get full state.

        With `now`, a soft store (`add_store(soft=True)`) is compared only when settled on both
        sides, or when it was last compared with this peer `max_skip_secs` ago: the peer sends
        the digests of its comparable stores only (`digests(at=...)`), and one that changed here
        within `settle_secs` waits. Under traffic a soft store changes with every request and
        differs at any instant by the deltas in flight; resending it whole on every push-pull
        cost more CPU than the traffic itself (bench/cluster_routing.py --trace: 6 MB of full
        prefix states against 1.4 MB of deltas in a run, each encoded, sent and merged in one
        go, stalling gateways into a TTFT tail). Its deltas are acknowledged and resent, so
        anti-entropy only has to catch what that misses: at once when the store is quiet, and
        within `max_skip_secs` for a member that cannot hear a writer. Every other store is
        compared every time, as before."""
        if not isinstance(digests, dict):
            raise ReplicationError("push-pull digests are not a map")
        comparable = set(self._stores) if now is None else set(self.comparable(now))
        differing = []
        for name, store in self._stores.items():
            theirs = digests.get(name)
            if store.soft and now is not None:
                state = store.peer(peer)
                if state.compared_at is None:
                    state.compared_at = now  # a new peer gets the full state anyway: the clock starts here
                overdue = now - state.compared_at >= self.max_skip_secs
                if not overdue and (name not in comparable or name not in digests):
                    continue
                state.compared_at = now
            if theirs != store.replicator.state.state_digest():
                store.replicator.resync(peer)
                known = store.peers.get(peer)
                if known is not None:
                    known.last_sent = None  # the full state goes out now, not at the next resend or sync
                differing.append(name)
        return differing

    def frontier(self, name: str, members: Iterable[str]) -> Timestamp:
        """The oldest send stamp acknowledged by every other known member (ZERO if one has not)."""
        store = self._stores[name]
        others = [m for m in members if m != self.node]
        if not others:
            return Timestamp(self.clock.wall, self.clock.logical, self.replica)
        return min(store.ack_stamp(m) for m in others)

    def stable(self, name: str, members: Iterable[str]) -> Timestamp:
        members = list(members)
        store = self._stores[name]
        reported = [store.reported(m) for m in members if m != self.node]
        return min([self.frontier(name, members), *reported])

    def collect(self, members: Iterable[str]) -> dict[str, int]:
        """Collect tombstones every known member holds, with a grace margin; returns counts per store."""
        members = list(members)
        collected = {}
        for name, store in self._stores.items():
            state = store.replicator.state
            if not isinstance(state, LWWMap):
                continue
            stable = self.stable(name, members)
            floor = state.floor
            collected[name] = state.collect(Timestamp(max(0, stable.wall - self.gc_grace_ms), 0, ""))
            if state.floor > floor:  # the raised floor travels as a delta: every member collects the same
                self.changed(name, LWWMap(floor=state.floor))
        return collected

    def forget(self, peer: str) -> None:
        """A member that left or was reaped: it no longer holds back the GC frontier."""
        for store in self._stores.values():
            store.replicator.forget(peer)
            store.peers.pop(peer, None)


def _unpack(payload: bytes) -> dict[str, Any]:
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ReplicationError(f"undecodable replication message: {exc}") from None
    if not isinstance(body, dict):
        raise ReplicationError("a replication message is not a map")
    return body


def _field(body: dict[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ReplicationError(f"field '{key}' is missing or not a {kind.__name__}")
    return value


def _message(body: dict[str, Any]) -> DeltaMessage:
    sender, seq = _field(body, "r", str), _field(body, "q", int)
    if seq < 0:
        raise ReplicationError("negative sequence number")
    if "d" in body:
        try:
            delta = decode(_field(body, "d", bytes))
        except CodecError as exc:
            raise ReplicationError(str(exc)) from None
        return DeltaMessage(sender, seq, delta=delta)
    return DeltaMessage(sender, seq, chunk=_field(body, "c", bytes), index=_field(body, "i", int), count=_field(body, "n", int))
