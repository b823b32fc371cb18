"""A lean HTTP/1.1 keep-alive pool on h11 and trio sockets.

One request per connection at a time; idle connections are kept per origin
(LIFO, so the warmest socket is reused first) and dropped after an idle
timeout shorter than typical server keep-alive limits. A request that fails
on a reused connection before any response byte arrived is retried once on
a fresh connection: the server closed the idle socket under us.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h11
import trio

from smg.router.upstream import (
    Headers,
    UpstreamConnectError,
    UpstreamProtocolError,
)
from smg.router.workers import Origin

RECEIVE_SIZE = 65536
_NETWORK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, h11.RemoteProtocolError)


class _Stale(Exception):
    """A reused connection failed before the response started."""


class _Connection:
    __slots__ = ("h11", "idle_since", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        conn = self.h11
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await self.stream.receive_some(RECEIVE_SIZE))

    @property
    def reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE


class H11Response:
    __slots__ = ("_conn", "complete", "headers", "status")

    def __init__(self, status: int, headers: Headers, conn: _Connection) -> None:
        self.status = status
        self.headers = headers
        self._conn = conn
        self.complete = False

    async def aiter_body(self) -> AsyncIterator[bytes]:
        if self.complete:
            return
        conn = self._conn
        try:
            while True:
                event = await conn.next_event()
                if type(event) is h11.Data:
                    yield bytes(event.data)
                elif type(event) is h11.EndOfMessage:
                    self.complete = True
                    return
                else:
                    raise UpstreamProtocolError("worker closed the connection mid-response")
        except _NETWORK_ERRORS as exc:
            raise UpstreamProtocolError(f"worker connection broke mid-response: {exc}") from None

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_body()])


class H11Upstream:
    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        max_idle_per_origin: int = 256,
        idle_timeout: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle_per_origin = max_idle_per_origin
        self.idle_timeout = idle_timeout
        self._ssl_context = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}

    async def _connect(self, origin: Origin) -> _Connection:
        try:
            with trio.fail_after(self.connect_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(origin.host, origin.port)
                if origin.scheme == "https":
                    context = self._ssl_context or ssl.create_default_context()
                    ssl_stream = trio.SSLStream(stream, context, server_hostname=origin.host)
                    await ssl_stream.do_handshake()
                    stream = ssl_stream
        except trio.TooSlowError:
            raise UpstreamConnectError(f"connecting to {origin.host}:{origin.port} timed out") from None
        except (OSError, trio.BrokenResourceError) as exc:
            raise UpstreamConnectError(f"cannot connect to {origin.host}:{origin.port}: {exc}") from None
        return _Connection(stream)  # trio sets TCP_NODELAY on its socket streams

    def _pop_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        cutoff = trio.current_time() - self.idle_timeout
        while idle:
            conn = idle.pop()
            if conn.idle_since >= cutoff:
                return conn
            _close_now(conn)
        return None

    def _release(self, origin: Origin, conn: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= self.max_idle_per_origin:
            _close_now(conn)
            return
        conn.h11.start_next_cycle()
        conn.idle_since = trio.current_time()
        idle.append(conn)

    async def _start(
        self, conn: _Connection, origin: Origin, method: bytes, target: bytes, headers: Headers, body: bytes, reused: bool
    ) -> H11Response:
        request_headers = [(b"host", origin.host_header), (b"content-length", b"%d" % len(body)), *headers]
        try:
            data = conn.h11.send(h11.Request(method=method, target=origin.base_path.encode() + target, headers=request_headers))
            if body:
                data += conn.h11.send(h11.Data(data=body))
            data += conn.h11.send(h11.EndOfMessage())
            await conn.stream.send_all(data)
            event = await conn.next_event()
            while type(event) is h11.InformationalResponse:
                event = await conn.next_event()
        except _NETWORK_ERRORS as exc:
            if reused:
                raise _Stale from exc
            raise UpstreamProtocolError(f"worker failed before responding: {exc}") from None
        if type(event) is not h11.Response:
            if reused:
                raise _Stale
            raise UpstreamProtocolError("worker closed the connection before responding")
        return H11Response(event.status_code, list(event.headers), conn)

    @asynccontextmanager
    async def request(
        self, origin: Origin, method: bytes, target: bytes, headers: Headers, body: bytes
    ) -> AsyncIterator[H11Response]:
        conn = self._pop_idle(origin)
        reused = conn is not None
        if conn is None:
            conn = await self._connect(origin)
        try:
            try:
                response = await self._start(conn, origin, method, target, headers, body, reused)
            except _Stale:
                _close_now(conn)
                conn = await self._connect(origin)
                response = await self._start(conn, origin, method, target, headers, body, False)
            yield response
        except BaseException:
            _close_now(conn)
            raise
        if response.complete and conn.reusable:
            self._release(origin, conn)
        else:
            _close_now(conn)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                _close_now(conn)
        self._idle.clear()


def _close_now(conn: _Connection) -> None:
    """Close without awaiting: safe inside cancelled scopes and on hot paths."""
    stream = conn.stream
    if isinstance(stream, trio.SocketStream):
        stream.socket.close()
    elif isinstance(stream, trio.SSLStream) and isinstance(stream.transport_stream, trio.SocketStream):
        stream.transport_stream.socket.close()
