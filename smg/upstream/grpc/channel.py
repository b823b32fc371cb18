"""Generate streams to one engine over HTTP/2 from trio: the thin shell over `wire`.

A `StreamChannel` keeps a few HTTP/2 connections to its worker (one, until the server's
concurrent-stream limit is reached; connections are opened on demand and dropped when they
break). Each connection is two tasks in the fleet's nursery: a reader that feeds the socket's
bytes to `wire.GrpcConnection` and hands each call its messages (all the messages of one read
together, so the gateway writes them to its client at once), and a writer that sends what the
state machine queued. Only the writer writes: a caller cancelled in the middle of a write would
otherwise leave half a frame on the connection, breaking every other call on it.

A call (`stream`) yields lists of raw messages; leaving it early (the client went away, a stop
string, a deadline) resets the stream. Failures are `EngineStatusError`s: the call's gRPC status,
UNAVAILABLE when the worker cannot be reached or the connection breaks (retried elsewhere when
nothing was streamed yet), CANCELLED when the channel is closed under it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

import trio

from smg.upstream.grpc.status import EngineStatusError, status_error
from smg.upstream.grpc.wire import CallEvent, Closed, GrpcConnection, Messages, NoCapacity

log = logging.getLogger("smg.upstream")

CONNECT_SECS = 5.0
RECEIVE_BYTES = 256 * 1024
CANCEL_FLUSH_SECS = 1.0
FAIL_FAST_SECS = 1.0  # after a failed connect, calls fail at once for this long (the old grpcio channel's backoff)


class _Connection:
    def __init__(self, stream: trio.SocketStream, wire: GrpcConnection) -> None:
        self.stream = stream
        self.wire = wire
        self.calls: dict[int, trio.MemorySendChannel[CallEvent]] = {}
        self.scope = trio.CancelScope()
        self._wake = trio.Event()
        self.done = trio.Event()

    def flush_soon(self) -> None:
        if self.wire.wants_write:
            self._wake.set()

    async def run(self) -> None:
        why = "the connection to the engine closed"
        broken = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
        ended = False  # the connection ended by itself (else: closed under its calls)
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:

                    async def write() -> None:
                        nonlocal why
                        try:
                            await self._writer()
                        except broken as exc:
                            why = f"writing to the engine failed: {exc}"
                            nursery.cancel_scope.cancel()

                    nursery.start_soon(write)
                    try:
                        why = await self._reader()
                    except broken as exc:
                        why = f"reading from the engine failed: {exc}"
                    nursery.cancel_scope.cancel()
                ended = True
        finally:
            closed = not ended
            self._dispatch(self.wire.lost("the gRPC channel was closed" if closed else why), cancelled=closed)
            self.done.set()
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    async def _reader(self) -> str:
        wire, stream = self.wire, self.stream
        while True:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                return "the engine closed the connection"
            self._dispatch(wire.receive(data))
            self.flush_soon()
            if wire.broken:
                return "the engine's HTTP/2 was unreadable"

    async def _writer(self) -> None:
        wire, stream = self.wire, self.stream
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            data = wire.data_to_send()
            if data:
                await stream.send_all(data)

    def _dispatch(self, events: list[CallEvent], *, cancelled: bool = False) -> None:
        calls = self.calls
        for event in events:
            if isinstance(event, Closed):
                send = calls.pop(event.stream_id, None)
                if cancelled and event.status == "UNAVAILABLE":
                    event = Closed(event.stream_id, "CANCELLED", event.details)
            else:
                send = calls.get(event.stream_id)
            if send is not None:
                # BrokenResourceError: the caller is leaving (cancelled, between its reader closing and
                # its exit), which resets the stream. Unbounded: the stream's window bounds what arrives.
                with contextlib.suppress(trio.BrokenResourceError):
                    send.send_nowait(event)


class StreamChannel:
    """The data path's connections to one engine worker (`host:port`)."""

    def __init__(self, target: str, *, max_message_size: int) -> None:
        host, _, port = target.rpartition(":")
        self.target = target
        self.host = host.strip("[]")
        self.port = int(port)
        self.max_message_size = max_message_size
        self.nursery: trio.Nursery | None = None  # the fleet's: where connections run
        self._connections: list[_Connection] = []
        self._opening = trio.Lock()
        self._failure: tuple[float, str] | None = None  # (until, why): the last connect failed; fail fast until then
        self._closed = False

    @asynccontextmanager
    async def stream(self, path: str, message: bytes) -> AsyncIterator[AsyncIterator[list[bytes]]]:
        """A server-streaming call of `path` with one request message: its response messages,
        in lists of those that arrived together."""
        connection = await self._connection()
        wire = connection.wire
        try:
            stream_id = wire.start_call(path, message)
        except NoCapacity as exc:  # the connection stopped taking calls between the check and now
            raise status_error("UNAVAILABLE", str(exc)) from None
        send, receive = trio.open_memory_channel[CallEvent](math.inf)
        connection.calls[stream_id] = send
        connection.flush_soon()

        async def messages() -> AsyncGenerator[list[bytes], None]:
            async with receive:
                while True:
                    event: CallEvent | None = await receive.receive()
                    batch: list[bytes] = []
                    flow = 0
                    while isinstance(event, Messages):  # everything that arrived meanwhile: one batch
                        batch += event.messages
                        flow += event.flow
                        try:
                            event = receive.receive_nowait()
                        except trio.WouldBlock:
                            event = None
                    if batch:
                        yield batch
                        wire.consumed(stream_id, flow)
                        connection.flush_soon()
                    if isinstance(event, Closed):
                        if event.status != "OK":
                            raise status_error(event.status, event.details)
                        return

        iterator = messages()
        try:
            yield iterator
        finally:
            connection.calls.pop(stream_id, None)
            wire.finish(stream_id)  # the window back, and a stream still open reset (the caller left early)
            connection.flush_soon()
            if not wire.accepting and not connection.calls:
                connection.scope.cancel()  # draining (GOAWAY, out of stream ids) and now idle: close it
            with trio.CancelScope(shield=True):  # the caller may be cancelled: the close must still run
                await iterator.aclose()

    async def _connection(self) -> _Connection:
        for connection in self._connections:
            if connection.wire.has_capacity():
                return connection
        async with self._opening:  # one opening at a time: the callers waiting may all fit on it
            for connection in self._connections:
                if connection.wire.has_capacity():
                    return connection
            if self._failure is not None and trio.current_time() < self._failure[0]:
                raise status_error("UNAVAILABLE", self._failure[1])  # failed just now: fail fast, as grpcio does
            try:
                connection = await self._open()
            except EngineStatusError as exc:
                if exc.status == "UNAVAILABLE":
                    self._failure = (trio.current_time() + FAIL_FAST_SECS, exc.details)
                raise
            self._failure = None
            return connection

    async def _open(self) -> _Connection:
        if self.nursery is None or self._closed:
            raise status_error("CANCELLED", "the gRPC channel is closed")
        try:
            with trio.fail_after(CONNECT_SECS):
                stream = await trio.open_tcp_stream(self.host, self.port)
        except (OSError, trio.TooSlowError) as exc:
            raise status_error("UNAVAILABLE", f"cannot connect to grpc://{self.target}: {exc or 'timed out'}") from None
        wire = GrpcConnection(self.target, max_message_size=self.max_message_size)
        wire.initiate()
        connection = _Connection(stream, wire)

        async def run() -> None:
            try:
                await connection.run()
            finally:
                self._connections.remove(connection)

        nursery = self.nursery
        try:
            if nursery is None or self._closed:  # closed while connecting
                raise RuntimeError("the gRPC channel is closed")
            nursery.start_soon(run)
        except RuntimeError as exc:  # the fleet's nursery is closing: the node is stopping
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise status_error("CANCELLED", str(exc)) from None
        self._connections.append(connection)
        connection.flush_soon()
        return connection

    async def aclose(self) -> None:
        """Close every connection (their calls end CANCELLED)."""
        self._closed = True
        for connection in list(self._connections):
            connection.scope.cancel()
        for connection in list(self._connections):
            with trio.move_on_after(CANCEL_FLUSH_SECS):
                await connection.done.wait()
