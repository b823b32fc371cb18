"""Delta propagation toward peers, independent of any transport (sans-IO).

Each local or received delta is merged into the state and logged with a
sequence number. For each peer the replicator remembers the highest number
the peer acknowledged; what goes out is the join of the logged deltas after
that number (a delta-interval), leaving out deltas that came from that very
peer. A peer that is new, restarted (it announces a new epoch, its replica
id), or so far behind that the log no longer reaches back, gets the full
state instead, encoded and cut into chunks of at most `chunk_bytes`.
Messages lost or duplicated are harmless: joins are idempotent, and an
unacknowledged interval is simply sent again, grown.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from smg.crdt.codec import CRDT, CodecError, decode, encode


@dataclass(frozen=True)
class DeltaMessage:
    sender: str  # the sender's replica id: a new one means the sender restarted
    seq: int  # covers the sender's log up to here; acknowledge it
    delta: CRDT | None = None  # kind "delta"
    chunk: bytes = b""  # kind "full": a piece of the encoded full state
    index: int = 0
    count: int = 1

    @property
    def is_full(self) -> bool:
        return self.delta is None


@dataclass
class _Peer:
    acked: int = -1  # -1: nothing acknowledged yet, send the full state
    epoch: str | None = None  # the replica id it last announced
    assembly: dict[int, bytes] = field(default_factory=dict)
    assembly_seq: int = -1


class DeltaReplicator:
    def __init__(
        self, state: CRDT, replica: str, *, max_log: int = 1024, chunk_bytes: int = 64 * 1024, relay: bool = True
    ) -> None:
        self.state = state
        # relay: pass what peers sent on to other peers (gossip over a partial mesh). Off when every
        # node sends to every peer directly: a received delta that changed nothing would otherwise
        # travel round a triangle forever, since merging cannot tell "new" from "already had"
        self.relay = relay
        self.replica = replica
        self.max_log = max_log
        self.chunk_bytes = chunk_bytes
        self.seq = 0
        self._log: deque[tuple[int, CRDT, str | None]] = deque()
        self._peers: dict[str, _Peer] = {}
        self.full_states_sent = 0

    def _peer(self, peer: str) -> _Peer:
        found = self._peers.get(peer)
        if found is None:
            found = self._peers[peer] = _Peer()
        return found

    def _log_delta(self, delta: CRDT, origin: str | None) -> None:
        self.seq += 1
        self._log.append((self.seq, delta, origin))
        while len(self._log) > self.max_log:
            self._log.popleft()

    # -- local changes and acks ---------------------------------------------------

    def apply_local(self, delta: CRDT) -> None:
        """A mutator's delta (already applied by the mutator to `state`)."""
        self._log_delta(delta, None)

    def ack(self, peer: str, seq: int, epoch: str, peer_epoch: str) -> None:
        """`peer` (now living as `peer_epoch`) merged our log up to `seq`, as sent by our `epoch`.

        An acknowledgement meant for a previous life of this node (before a
        restart reset the sequence) is ignored. One from a new life of the
        peer, for a message sent while we believed its previous life was
        there, proves nothing about the rest of the state: it gets the full
        state next.
        """
        if epoch != self.replica or seq > self.seq:
            return
        p = self._peer(peer)
        if p.epoch is not None and p.epoch != peer_epoch:
            p.epoch, p.acked = peer_epoch, -1
        elif seq > p.acked:
            p.epoch, p.acked = peer_epoch, seq

    def resync(self, peer: str) -> None:
        """Send `peer` the full state next (anti-entropy found our states differ)."""
        self._peer(peer).acked = -1

    def acked(self, peer: str) -> int:
        """The highest sequence number `peer` acknowledged (-1: none)."""
        found = self._peers.get(peer)
        return -1 if found is None else found.acked

    def forget(self, peer: str) -> None:
        """The peer left the cluster for good."""
        self._peers.pop(peer, None)

    # -- outgoing -------------------------------------------------------------------

    def outgoing(self, peer: str) -> list[DeltaMessage]:
        """What to send `peer` now (possibly nothing)."""
        p = self._peer(peer)
        if p.acked >= self.seq:
            return []
        oldest = self._log[0][0] if self._log else self.seq + 1
        if p.acked < 0 or p.acked < oldest - 1:
            return self._full_state()
        joined: CRDT | None = None
        for seq, delta, origin in self._log:
            if seq <= p.acked or origin == peer:
                continue
            if joined is None:
                joined = delta.copy()
            else:
                joined.merge(delta)  # type: ignore[arg-type]
        if joined is None:
            p.acked = self.seq  # everything new came from that peer itself
            return []
        return [DeltaMessage(self.replica, self.seq, delta=joined)]

    def _full_state(self) -> list[DeltaMessage]:
        self.full_states_sent += 1
        data = encode(self.state)
        size = self.chunk_bytes
        pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        return [DeltaMessage(self.replica, self.seq, chunk=c, index=i, count=len(pieces)) for i, c in enumerate(pieces)]

    # -- incoming -------------------------------------------------------------------

    def note_epoch(self, peer: str, epoch: str) -> None:
        """`peer` now lives as `epoch`; a new one means it restarted and lost what we sent."""
        p = self._peer(peer)
        if p.epoch != epoch:
            if p.epoch is not None:
                p.acked = -1
            p.epoch = epoch

    def receive(self, peer: str, message: DeltaMessage, vet: Callable[[CRDT], None] | None = None) -> int | None:
        """Merge a message from `peer`; returns the sequence number to acknowledge, if any.

        `vet` sees every remote delta or full state before it is merged and may raise to refuse
        it. Raises CodecError for a full state that does not decode (the chunks are dropped).
        """
        self.note_epoch(peer, message.sender)
        p = self._peer(peer)
        if not message.is_full:
            if vet is not None:
                vet(message.delta)  # type: ignore[arg-type]
            self.state.merge(message.delta)  # type: ignore[arg-type]
            if self.relay:
                self._log_delta(message.delta, peer)  # type: ignore[arg-type]
            return message.seq
        if not 0 <= message.index < message.count:
            raise CodecError(f"chunk {message.index} of {message.count} is out of range")
        if message.seq != p.assembly_seq:
            p.assembly, p.assembly_seq = {}, message.seq
        p.assembly[message.index] = message.chunk
        if len(p.assembly) < message.count:
            return None
        data = b"".join(p.assembly[i] for i in range(message.count))
        p.assembly, p.assembly_seq = {}, -1
        full = decode(data)
        if type(full) is not type(self.state):
            raise CodecError(f"expected a {type(self.state).__name__}, got a {type(full).__name__}")
        if vet is not None:
            vet(full)
        self.state.merge(full)  # type: ignore[arg-type]
        if self.relay:
            self._log_delta(full, peer)
        return message.seq
