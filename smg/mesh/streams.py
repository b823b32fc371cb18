"""Ordered per-peer application streams over persistent TCP connections.

`send(peer, channel, payload)` queues a message for a member; one sender task
per peer keeps a connection to the member's current address (reconnecting
with backoff when it breaks or the member moves) and writes frames in order.
Delivery is at most once per message: a message written into a connection
that then breaks may be lost, and none is written twice. The application
acknowledges what it needs acknowledged (the CRDT delta replicator does: it
resends unacknowledged intervals), so the stream stays simple and never
blocks the sender.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable

import trio

from smg.mesh.messages import AppMessage
from smg.mesh.transport import TCP_TIMEOUT, MeshTransport, split_address
from smg.mesh.wire import LENGTH, MAX_MESSAGE

log = logging.getLogger("smg.mesh")

BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0
BATCH_BYTES = 256 * 1024  # one write takes the queued messages up to about this much
MAX_FRAME = LENGTH.size + MAX_MESSAGE  # a sealed frame and its prefix, as a peer's FrameReader takes them
RECHECK_SECS = 10.0  # an idle stream checks this often that its peer has not moved
UNRESOLVED_POLL = 0.2


class _Outbox:
    __slots__ = ("connection", "queue", "wakeup")

    def __init__(self) -> None:
        self.queue: deque[AppMessage] = deque()
        self.wakeup = trio.Event()
        self.connection: trio.CancelScope | None = None  # the open connection's, to drop it


class PeerStreams:
    def __init__(self, source: str, transport: MeshTransport, resolve: Callable[[str], str | None], limit: int = 10_000) -> None:
        self.source = source
        self.transport = transport
        self.resolve = resolve  # member name -> current address, None when unknown or dead
        self.limit = limit
        self.dropped = 0
        self._outboxes: dict[str, _Outbox] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def send(self, peer: str, channel: str, payload: bytes) -> bool:
        """Queue `payload` for `peer`; False (and counted) when its outbox is full."""
        outbox = self._outboxes.get(peer)
        if outbox is None:
            if self._nursery is None:
                raise RuntimeError("peer streams are not running")
            outbox = self._outboxes[peer] = _Outbox()
            self._nursery.start_soon(self._sender, peer, outbox)
        if len(outbox.queue) >= self.limit:
            self.dropped += 1
            return False
        outbox.queue.append(AppMessage(self.source, channel, payload))
        outbox.wakeup.set()
        return True

    def reset(self, peer: str) -> None:
        """Drop the connection to `peer` (declared dead, gone, or back from suspect or dead).
        Through a partition its unacknowledged bytes sit in TCP's retransmission backoff, which
        can hold a healed link silent for many seconds; the next message opens a fresh one."""
        outbox = self._outboxes.get(peer)
        if outbox is not None and outbox.connection is not None:
            outbox.connection.cancel()

    async def _sender(self, peer: str, outbox: _Outbox) -> None:
        backoff = BACKOFF_MIN
        while True:
            while not outbox.queue:
                outbox.wakeup = trio.Event()
                await outbox.wakeup.wait()
            address = self.resolve(peer)
            if address is None:  # unknown or dead: looking again costs nothing, so look often
                await trio.sleep(UNRESOLVED_POLL)
                continue
            try:
                with trio.fail_after(TCP_TIMEOUT):
                    stream = await trio.open_tcp_stream(*split_address(address))
            except (OSError, trio.TooSlowError) as exc:
                log.debug("mesh stream to %s (%s): %s", peer, address, exc)
                await trio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            backoff = BACKOFF_MIN
            with trio.CancelScope() as outbox.connection:
                await self._write(peer, address, stream, outbox)
            outbox.connection = None

    async def _write(self, peer: str, address: str, stream: trio.SocketStream, outbox: _Outbox) -> None:
        """Write queued messages in order until the peer moves, closes or the connection breaks.

        Whatever is queued goes out in one write (up to BATCH_BYTES): a flush of replication
        deltas and acks to a peer is one system call and one trio checkpoint, not one per
        message. When the connection breaks or is dropped in the middle of a batch, the
        messages whose frames the kernel had not wholly taken go first on the next connection
        (the peer dropped the cut one), and none it had taken is written twice. A task
        watching the connection for the peer's close lives as long as it does (the receiving
        side never writes, so anything readable is its end: noticing it now, instead of at the
        next write, keeps the next messages from vanishing into a dead connection)."""
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_when_closed, stream, nursery.cancel_scope)
            faults = self.transport.faults
            batch: list[AppMessage] = []
            ends: list[int] = []  # where each message's frame ends in the batch's bytes
            written = 0  # of the batch's bytes, how many the kernel took
            try:
                while self.resolve(peer) == address:
                    if not outbox.queue:
                        outbox.wakeup = trio.Event()
                        with trio.move_on_after(RECHECK_SECS):  # the peer may move while we idle
                            await outbox.wakeup.wait()
                        continue
                    frames, size = [], 0
                    while outbox.queue and size < BATCH_BYTES:
                        message = outbox.queue.popleft()
                        if faults.outgoing_dropped(address):
                            self.transport.dropped["fault_filter"] += 1  # an injected partition or loss (tests, chaos)
                            continue
                        frame = self.transport.frame(message)
                        if len(frame) > MAX_FRAME:  # the peer would refuse the stream (and we would resend it forever)
                            self.transport.dropped["oversize_sent"] += 1
                            log.error(
                                "mesh: a %d-byte message on '%s' to %s dropped: beyond the frame limit",
                                len(frame),
                                message.channel,
                                peer,
                            )
                            continue
                        batch.append(message)
                        frames.append(frame)
                        size += len(frame)
                        ends.append(size)
                    if frames:
                        if faults.delay:
                            await trio.sleep(faults.delay)
                        data = memoryview(b"".join(frames))
                        while written < len(data):  # (the count a cancelled send took nothing of is exact)
                            written += await stream.socket.send(data[written:])
                        self.transport.wrote(len(frames), len(data))
                    batch.clear()
                    ends.clear()
                    written = 0
            except (trio.BrokenResourceError, OSError) as exc:
                log.debug("mesh stream to %s broke: %s", peer, exc)
            finally:
                unsent = [message for message, end in zip(batch, ends, strict=True) if end > written]
                outbox.queue.extendleft(reversed(unsent))  # first on the next connection
            nursery.cancel_scope.cancel()


async def _cancel_when_closed(stream: trio.SocketStream, connection: trio.CancelScope) -> None:
    """Cancel `connection` once the peer closes its end (or the connection breaks)."""
    with contextlib.suppress(trio.BrokenResourceError, OSError):
        await stream.receive_some(1)
    connection.cancel()
