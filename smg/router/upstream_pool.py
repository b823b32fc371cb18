"""A lean HTTP/1.1 keep-alive pool on trio sockets, with its own small parser.

Why not h11: measured on the proxy path, h11's event objects and header
validation cost more than the rest of the upstream call (see
`bench/overhead.py` and docs/status.md). The gateway only ever sends
requests it built itself to workers it registered, so the parser needs just
the response side of HTTP/1.1: status line, headers, and a body framed by
content-length, chunked encoding, or connection close.

One request per connection at a time; idle connections are kept per origin
(LIFO, so the warmest socket is reused first) and dropped after an idle
timeout shorter than typical server keep-alive limits. A request that fails
on a reused connection before any response byte arrived is retried once on a
fresh connection: the server closed the idle socket under us.

For chunked bodies, `aiter_body` yields everything that has arrived in one
piece (chunk framing removed), so a burst of SSE events costs one downstream
send instead of one per event.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from smg.router.upstream import Headers, UpstreamConnectError, UpstreamProtocolError
from smg.router.workers import Origin

RECEIVE_SIZE = 65536
MAX_HEAD = 64 * 1024
_NETWORK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_NO_BODY_STATUS = frozenset({204, 304})


class _Stale(Exception):
    """A reused connection failed before the response started."""


class _Connection:
    __slots__ = ("buf", "idle_since", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.idle_since = 0.0

    async def fill(self) -> None:
        data = await self.stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise UpstreamProtocolError("worker closed the connection mid-response")
        self.buf += data


def _parse_head(head: bytes) -> tuple[int, Headers, bool]:
    """Status, headers (names lower-case) and whether the connection may be kept."""
    lines = head.split(b"\r\n")
    status_line = lines[0]
    if not status_line.startswith(b"HTTP/1.") or len(status_line) < 12:
        raise UpstreamProtocolError(f"invalid status line from worker: {status_line[:80]!r}")
    try:
        status = int(status_line[9:12])
    except ValueError:
        raise UpstreamProtocolError(f"invalid status line from worker: {status_line[:80]!r}") from None
    keep_alive = status_line[7:8] == b"1"
    headers: Headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise UpstreamProtocolError(f"invalid header line from worker: {line[:80]!r}")
        name = name.strip().lower()
        value = value.strip()
        if name == b"connection" and b"close" in value.lower():
            keep_alive = False
        headers.append((name, value))
    return status, headers, keep_alive


class PoolResponse:
    __slots__ = ("_chunked", "_conn", "_length", "complete", "headers", "keep_alive", "status")

    def __init__(self, conn: _Connection, status: int, headers: Headers, keep_alive: bool, method: bytes) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers
        self.keep_alive = keep_alive
        self.complete = False
        self._chunked = False
        self._length: int | None = None
        if method == b"HEAD" or status in _NO_BODY_STATUS:
            self._length = 0
            return
        for name, value in headers:
            if name == b"transfer-encoding":
                self._chunked = value.lower().endswith(b"chunked")
            elif name == b"content-length":
                try:
                    self._length = int(value)
                except ValueError:
                    raise UpstreamProtocolError(f"invalid content-length from worker: {value[:40]!r}") from None
        if not self._chunked and self._length is None:
            self.keep_alive = False  # the body ends when the worker closes the connection

    async def aiter_body(self) -> AsyncIterator[bytes]:
        if self.complete:
            return
        try:
            if self._chunked:
                async for piece in self._chunks():
                    yield piece
            elif self._length is not None:
                async for piece in self._sized(self._length):
                    yield piece
            else:
                async for piece in self._until_close():
                    yield piece
        except _NETWORK_ERRORS as exc:
            raise UpstreamProtocolError(f"worker connection broke mid-response: {exc}") from None
        self.complete = True

    async def read(self) -> bytes:
        conn = self._conn
        if self._length is not None and len(conn.buf) >= self._length:  # the common case: all here
            body = bytes(conn.buf[: self._length])
            del conn.buf[: self._length]
            self.complete = True
            return body
        return b"".join([piece async for piece in self.aiter_body()])

    async def _sized(self, length: int) -> AsyncIterator[bytes]:
        conn = self._conn
        left = length
        while left:
            if not conn.buf:
                await conn.fill()
            take = min(left, len(conn.buf))
            piece = bytes(conn.buf[:take])
            del conn.buf[:take]
            left -= take
            yield piece

    async def _until_close(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn.buf:
            yield bytes(conn.buf)
            conn.buf.clear()
        while data := await conn.stream.receive_some(RECEIVE_SIZE):
            yield data

    async def _chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        buf = conn.buf
        left = 0  # data bytes still due in the current chunk
        crlf_due = False  # the CRLF that ends a chunk's data
        while True:
            out: list[bytes] = []
            finished = False
            while True:
                if left:
                    take = min(left, len(buf))
                    if not take:
                        break
                    out.append(bytes(buf[:take]))
                    del buf[:take]
                    left -= take
                    if left:
                        break
                    crlf_due = True
                if crlf_due:
                    if len(buf) < 2:
                        break
                    if buf[0] != 13 or buf[1] != 10:
                        raise UpstreamProtocolError("malformed chunked body from worker")
                    del buf[:2]
                    crlf_due = False
                line_end = buf.find(b"\r\n")
                if line_end < 0:
                    if len(buf) > 1024:
                        raise UpstreamProtocolError("malformed chunk size line from worker")
                    break
                try:
                    size = int(bytes(buf[:line_end]).split(b";", 1)[0], 16)
                except ValueError:
                    raise UpstreamProtocolError("malformed chunk size line from worker") from None
                if size == 0:
                    if await self._trailers(line_end):
                        finished = True
                    else:
                        raise UpstreamProtocolError("malformed chunked trailer from worker")
                    break
                del buf[: line_end + 2]
                left = size
            if out:
                yield b"".join(out)
            if finished:
                return
            await conn.fill()

    async def _trailers(self, line_end: int) -> bool:
        """Consume the last-chunk line and any trailers; the head is at buf[0:line_end]."""
        conn = self._conn
        while True:
            tail = conn.buf[line_end + 2 :]
            if tail[:2] == b"\r\n":
                del conn.buf[: line_end + 4]
                return True
            rest = tail.find(b"\r\n\r\n")
            if rest >= 0:
                del conn.buf[: line_end + 2 + rest + 4]
                return True
            if len(tail) > MAX_HEAD:
                return False
            await conn.fill()


class PoolUpstream:
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
        if len(idle) >= self.max_idle_per_origin or conn.buf:
            _close_now(conn)  # a full pool, or bytes nobody asked for
            return
        conn.idle_since = trio.current_time()
        idle.append(conn)

    async def _start(self, conn: _Connection, method: bytes, request: bytes, reused: bool) -> PoolResponse:
        try:
            await conn.stream.send_all(request)
            buf = conn.buf
            while True:
                while (end := buf.find(b"\r\n\r\n")) < 0:
                    if len(buf) > MAX_HEAD:
                        raise UpstreamProtocolError("response head from worker is too large")
                    data = await conn.stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        if reused and not buf:
                            raise _Stale
                        raise UpstreamProtocolError("worker closed the connection before responding")
                    buf += data
                head = bytes(buf[:end])
                del buf[: end + 4]
                status, headers, keep_alive = _parse_head(head)
                if status >= 200 or status == 101:
                    return PoolResponse(conn, status, headers, keep_alive, method)
                # 1xx informational: the real response follows
        except _NETWORK_ERRORS as exc:
            if reused and not conn.buf:
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
        if response.complete and response.keep_alive:
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
