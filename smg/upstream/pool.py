"""A lean HTTP/1.1 keep-alive pool on trio sockets; responses are parsed by `http1`.

Why not httpx or an h11 connection: measured on the proxy path, their event objects and
per-event work cost more than the rest of the upstream call (see `bench/overhead.py` and
docs/status.md). The gateway only ever sends requests it built itself to workers it
registered, so this shell just writes the request and feeds what it reads to the sans-IO
`http1.ResponseParser` (llhttp plus the checks it leaves to its caller), which refuses
anything that breaks RFC 9112: the client then gets 502 `upstream_protocol_error`
(`UpstreamProtocolViolation`) and the connection is dropped.

One request per connection at a time; idle connections are kept per origin (LIFO, so the
warmest socket is reused first) and dropped after an idle timeout shorter than typical
server keep-alive limits (`--upstream-pool-idle-timeout-secs`; 0 keeps them). No timer task
does it: every take and every return trims the origin's whole stack (LIFO order is also age
order, so the expired ones are a slice at its bottom, not just the top a request looks at),
and at most once per idle timeout a take or return sweeps every origin, so the connections
of a worker nobody calls any more close too, at most one timeout late while the gateway
serves anything. A request that fails on a reused connection before any response
byte arrived is retried once on a fresh connection: the server closed the idle socket
under us. A connection goes back to the pool only when its response ended cleanly, allowed
keep-alive and nothing followed it.

`aiter_body` yields everything that arrived in one read as one piece (chunk framing
removed), so a burst of SSE events costs one downstream send instead of one per event.
`read` (non-streamed answers) stops at `max_response_size` bytes.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import trio

from smg.http.sockio import stream_fd, write_now
from smg.upstream.base import (
    DEFAULT_MAX_RESPONSE_SIZE,
    Headers,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamProtocolViolation,
    read_capped,
    response_too_large,
)
from smg.upstream.http1 import Data, IncompleteResponse, ProtocolViolation, Response, ResponseParser
from smg.workers.registry import Origin

RECEIVE_SIZE = 65536
DEFAULT_IDLE_TIMEOUT = 3.0  # --upstream-pool-idle-timeout-secs's default: below vLLM's and SGLang's 5 s
_NETWORK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class _Stale(Exception):
    """A reused connection failed before the response started."""


class _Connection:
    __slots__ = ("fd", "idle_since", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.fd = stream_fd(stream)  # a plain socket's, for `write_now`; never used after the stream closes
        self.idle_since = 0.0


class PoolResponse:
    """One response on its connection; valid inside `PoolUpstream.request` only."""

    __slots__ = ("_conn", "_early", "_length", "_max_size", "_parser", "complete", "headers", "status")

    def __init__(self, conn: _Connection, parser: ResponseParser, head: Response, early: bytes, max_size: int) -> None:
        self._conn = conn
        self._parser = parser
        self._early = early  # body bytes that came in the read that completed the head
        self._max_size = max_size
        self._length = head.content_length
        self.status = head.status
        self.headers = head.headers
        self.complete = parser.complete

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may go back to the pool once the body was read."""
        return self._parser.reusable

    async def aiter_body(self) -> AsyncIterator[bytes]:
        if self._early:
            early, self._early = self._early, b""
            yield early
        if self.complete:
            return
        parser = self._parser
        receive = self._conn.stream.receive_some
        try:
            while True:
                data = cast(bytes, await receive(RECEIVE_SIZE))  # trio's socket and TLS streams give bytes
                events = parser.feed(data) if data else parser.feed_eof()
                for event in events:
                    if type(event) is Data:
                        yield event.data
                if parser.complete:
                    break
        except ProtocolViolation as exc:
            raise UpstreamProtocolViolation(f"worker broke HTTP/1.1: {exc}") from None
        except IncompleteResponse as exc:
            raise UpstreamProtocolError(f"worker {exc}") from None
        except _NETWORK_ERRORS as exc:
            raise UpstreamProtocolError(f"worker connection broke mid-response: {exc}") from None
        self.complete = True

    async def read(self) -> bytes:
        """The whole body, at most `max_size` bytes (more is `UpstreamProtocolViolation`)."""
        limit = self._max_size
        if self.complete and len(self._early) <= limit:  # the common case: all here
            body, self._early = self._early, b""
            return body
        if self._length is not None and self._length > limit:
            raise response_too_large(limit)
        return await read_capped(self.aiter_body(), limit)


class PoolUpstream:
    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        max_idle_per_origin: int = 256,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE,
    ) -> None:
        """`idle_timeout`: seconds an idle connection may wait for reuse; 0 keeps it forever."""
        self.connect_timeout = connect_timeout
        self.max_idle_per_origin = max_idle_per_origin
        self.idle_timeout = idle_timeout
        self.max_response_size = max_response_size
        self._ssl_context = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}  # per origin, oldest first (the bottom of the stack)
        self._max_idle = idle_timeout if idle_timeout > 0 else math.inf  # inf: nothing ever expires
        self._next_sweep = -math.inf  # trio time from which the next take or return sweeps every origin

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
        now = trio.current_time()
        if now >= self._next_sweep:
            self._sweep(now)
        idle = self._idle.get(origin)
        if not idle:
            return None
        _expire(idle, now - self._max_idle)
        return idle.pop() if idle else None  # what is left is within its idle time, the top warmest

    def _release(self, origin: Origin, conn: _Connection) -> None:
        now = trio.current_time()
        if now >= self._next_sweep:
            self._sweep(now)
        idle = self._idle.setdefault(origin, [])
        _expire(idle, now - self._max_idle)  # so the cap counts live connections only
        if len(idle) >= self.max_idle_per_origin:
            _close_now(conn)
            return
        conn.idle_since = now
        idle.append(conn)

    def _sweep(self, now: float) -> None:
        """Close every origin's expired connections and forget origins left with none: the
        per-origin trimming only reaches origins that still get requests, so a removed or
        unused worker's sockets would otherwise stay open until the gateway stops."""
        self._next_sweep = now + self._max_idle
        cutoff = now - self._max_idle
        for origin, idle in list(self._idle.items()):
            _expire(idle, cutoff)
            if not idle:
                del self._idle[origin]

    async def _start(self, conn: _Connection, method: bytes, request: bytes, reused: bool) -> PoolResponse:
        parser = ResponseParser(method)
        received = False
        try:
            sent = write_now(conn.fd, request) if conn.fd >= 0 else 0
            if sent < len(request):
                await conn.stream.send_all(request[sent:] if sent else request)
            while True:
                data = cast(bytes, await conn.stream.receive_some(RECEIVE_SIZE))  # bytes, as above
                if data:
                    received = True
                    events = parser.feed(data)
                elif reused and not received:
                    raise _Stale
                else:
                    events = parser.feed_eof()
                if events and type(events[0]) is Response:
                    early = events[1].data if len(events) > 1 and type(events[1]) is Data else b""
                    return PoolResponse(conn, parser, events[0], early, self.max_response_size)
        except ProtocolViolation as exc:
            raise UpstreamProtocolViolation(f"worker broke HTTP/1.1: {exc}") from None
        except IncompleteResponse as exc:
            raise UpstreamProtocolError(f"worker {exc}") from None
        except _NETWORK_ERRORS as exc:
            if reused and not received:
                raise _Stale from exc
            raise UpstreamProtocolError(f"worker failed before responding: {exc}") from None

    @asynccontextmanager
    async def request(
        self, origin: Origin, method: bytes, target: bytes, headers: Headers, body: bytes
    ) -> AsyncIterator[PoolResponse]:
        parts = [
            method, b" ", origin.base_path.encode(), target, b" HTTP/1.1\r\nhost: ", origin.host_header,
            b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n",
        ]  # fmt: skip
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        parts += (b"\r\n", body)
        request = b"".join(parts)
        conn = self._pop_idle(origin)
        reused = conn is not None
        if conn is None:
            conn = await self._connect(origin)
        try:
            try:
                response = await self._start(conn, method, request, reused)
            except _Stale:
                _close_now(conn)
                conn = await self._connect(origin)
                response = await self._start(conn, method, request, False)
            yield response
        except BaseException:
            _close_now(conn)
            raise
        if response.complete and response.keep_alive:  # ended cleanly, keep-alive, nothing after it
            self._release(origin, conn)
        else:
            _close_now(conn)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                _close_now(conn)
        self._idle.clear()


def _expire(idle: list[_Connection], cutoff: float) -> None:
    """Close the connections of one origin's stack idle since before `cutoff`. Releases push on
    top in time order, so they are a slice at the bottom: usually one comparison finds none."""
    if not idle or idle[0].idle_since >= cutoff:
        return
    count = 1
    while count < len(idle) and idle[count].idle_since < cutoff:
        count += 1
    for conn in idle[:count]:
        _close_now(conn)
    del idle[:count]


def _close_now(conn: _Connection) -> None:
    """Close without awaiting: safe inside cancelled scopes and on hot paths."""
    stream = conn.stream
    if isinstance(stream, trio.SocketStream):
        stream.socket.close()
    elif isinstance(stream, trio.SSLStream) and isinstance(stream.transport_stream, trio.SocketStream):
        stream.transport_stream.socket.close()
