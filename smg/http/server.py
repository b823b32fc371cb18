"""Serve an ASGI app over HTTP/1.1 on trio sockets, inside the caller's nursery.

The connection's protocol is `smg.http.h1` (sans-IO, llhttp underneath); this module is its
shell: the accept loop, one task per connection that reads, calls the app and writes, and each
connection's clock. It replaced hypercorn, which cost 0.48 ms of CPU per request here against
0.03 ms for this loop (`python bench/server_floor.py`), and whose own bounds did not fit a
gateway facing the internet (a read timeout a client sending a byte a second never trips, no
bound on a body or on open connections, unbounded shielded writes).

Every connection has one cancel scope whose deadline follows what it is doing: the whole head
bounded from accept (and from the first byte of each later head), the idle bound between
requests, no deadline while a request is in flight (a long stream is never cut). The body is
read by the app through `receive`, bounded as a whole from the end of its head and by the head's
bound between two of its bytes; a body that stops arriving is answered as a disconnect. Each
write to the client is bounded on its own (a client that reads nothing) and cancellable at the
graceful deadline. Moving a deadline is an attribute write: no task or timer per request. The
listener is wrapped so that at most `max_connections` connections are open at once
(`CappedListener`); the rest wait in the kernel's listen backlog.

ASGI as the app sees it: one `http.request` message per piece of body that arrived together
(the whole body in one for a small request), `http.disconnect` once the client closed its side
or after the response ended; the response head is written with the first body message, so a
whole answer is one write. Pipelined requests wait in the parser until the one before them is
answered (at most `PIPELINE_BYTES` of them; then reading stops until it is). HTTP/2 is not
offered (ALPN says `http/1.1`); an Upgrade header is ignored.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from functools import partial
from math import inf
from typing import Any, TypeVar

import trio

from smg.http.asgi import CLIENT_GONE, ASGIApp, Message, dump_json
from smg.http.errors import error_body
from smg.http.h1 import BadRequest, Data, EndOfMessage, Event, LocalProtocolError, Request, RequestParser, ResponseFramer
from smg.http.sockio import stream_fd, write_now
from smg.settings import ConfigError

log = logging.getLogger("smg.serving")

FULL_WARNING_SECS = 60.0  # at most one "connection limit reached" line per listener set this often
MAX_RECV = 64 * 1024
PIPELINE_BYTES = 64 * 1024  # pipelined request bytes read ahead while a response is under way

E = TypeVar("E", bound=BaseException)


class ServeError(Exception):
    """A failure that ends `smg` with one line, `smg: error: <message>`, and `exit_code`, not a traceback."""

    exit_code = 1


class BindError(ServeError, ConfigError):
    """A listener could not bind: names the flag that chose the port, so the user knows what to change."""

    exit_code = 2

    def __init__(self, flag: str, port: int, reason: str, *, flag_value: int | None = None) -> None:
        where = f"{flag} {port}" if flag_value in (None, port) else f"{flag} {flag_value}: port {port}"
        super().__init__(f"{where}: {reason}")
        self.flag, self.port, self.reason = flag, port, reason

    @classmethod
    def from_os_error(cls, flag: str, port: int, exc: OSError, host: str = "") -> BindError:
        if exc.errno == errno.EADDRINUSE:
            return cls(flag, port, "address already in use")
        where = format_bind(host, port) if host else str(port)
        return cls(flag, port, f"cannot bind {where}: {(exc.strerror or str(exc)).lower()}")


def find_error(exc: BaseException, kind: type[E]) -> E | None:
    """`exc` itself if it is a `kind`, else the first `kind` inside it (exception groups nest)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_error(inner, kind)
            if found is not None:
                return found
    return None


def format_bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class ServerConfig:
    """Where to listen and the connection bounds this module enforces (0 disables a timeout)."""

    host: str = "127.0.0.1"
    port: int = 0
    certfile: str | None = None
    keyfile: str | None = None
    ca_certs: str | None = None  # with verify_mode: the CAs a client certificate must chain to (mTLS)
    verify_mode: ssl.VerifyMode = ssl.CERT_NONE
    graceful_timeout: float = 5.0  # after the shutdown trigger: what is still open then is cut
    keep_alive_timeout: float = 75.0  # idle between requests
    header_read_timeout: float = 30.0  # accept (or a later head's first byte) to a complete request head
    write_timeout: float = 90.0  # one write of a response to the client (a client that reads nothing)
    body_timeout: float = 60.0  # end of a head to the end of its body
    max_connections: int | None = None  # open connections at once; None: no cap
    port_flag: str = "--port"  # named in the one-line error when the port is taken
    on_refused: Callable[[int, str], None] | None = None  # told (status, code) of each request the parser refused
    shared_port: bool = False  # other processes bind the same port (SO_REUSEPORT; the kernel spreads connections)
    backlog: int = 1024


def server_config(host: str, port: int, **settings: Any) -> ServerConfig:
    """A `ServerConfig` for `host:port`; `settings` are its other fields by name."""
    return ServerConfig(host=host, port=port, **settings)


def _deadline(seconds: float) -> float:
    return trio.current_time() + seconds if seconds > 0 else inf


# What a connection is doing; its deadline follows.
HEAD = 0  # reading a request head: --header-read-timeout-secs from accept, or from the head's first byte
BODY = 1  # reading a request body: the body bound from the end of its head, and the head bound between two reads
BUSY = 2  # a request in flight, its response included: no connection deadline
IDLE = 3  # keep-alive, between requests: --idle-connection-timeout-secs

_ASGI = {"version": "3.0", "spec_version": "2.3"}
_DISCONNECT: Message = {"type": "http.disconnect"}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_date = [0, b""]


def _http_date() -> bytes:
    """The `date` header's value, formatted once a second."""
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, formatdate(now, usegmt=True).encode()
    return _date[1]  # type: ignore[return-value]


class Server:
    """What every connection of one `serve_app` shares: its settings and the shutdown flag."""

    def __init__(self, app: ASGIApp, config: ServerConfig, scheme: str) -> None:
        self.app, self.config, self.scheme = app, config, scheme
        self.terminated = False
        self.connections: set[Connection] = set()

    def terminate(self) -> None:
        """Shutting down: connections waiting for a request close now; busy ones after their answer."""
        self.terminated = True
        for connection in self.connections:
            if connection.phase in (HEAD, IDLE):
                connection.guard.cancel()


class Connection:
    """One client connection: a reader task and an answering task.

    The reader (`_read_loop`, the connection's own task) is the only one that reads the socket:
    it feeds the parser, keeps the events for the answering task, and so notices at once a
    client that closes while its request is answered (`on_client_gone`). Its cancel scope,
    `guard`, carries the connection's deadline. The answering task (`_answer_loop`) takes the
    requests in order, runs the app for each and writes its answer. The two meet through
    `events` and a parked task woken with `trio.lowlevel.reschedule`: no task, channel or
    event object per request.
    """

    def __init__(self, server: Server, stream: trio.abc.Stream) -> None:
        self.server = server
        self.config = server.config
        self.stream = stream
        self.parser = RequestParser()
        self.events: deque[Event] = deque()  # parsed, not yet taken by the answering side
        self.phase = HEAD
        self.guard = trio.CancelScope(deadline=_deadline(self.config.header_read_timeout))
        self.eof = False  # the client closed its side, or the connection broke or timed out
        self.bad: BadRequest | None = None  # what stopped the parser, answered after the requests before it
        self.closing = False  # the answering side is done: the reader stops
        self.waiter: trio.lowlevel.Task | None = None  # the answering side, parked until the reader has news
        self.reader_parked: trio.lowlevel.Task | None = None  # the reader, parked while read-ahead is full
        self.heads = 0  # request heads parsed
        self.received = 0  # requests whose body has ended
        self.answered = 0  # requests answered
        self.read_ahead = 0  # bytes read while a request was under way
        self.body_end = inf  # the whole-body bound of the request being read
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        sock = getattr(getattr(stream, "transport_stream", stream), "socket", None)
        if sock is not None:
            try:
                self.client = tuple(sock.getpeername()[:2])
                self.local = tuple(sock.getsockname()[:2])
            except OSError:
                pass
        self.extensions = {CLIENT_GONE: self}
        self.fd = stream_fd(stream)  # for `_write`'s fast path; -1 once the stream is lost
        # the request under way
        self.request: Request | None = None
        self.framer: ResponseFramer | None = None
        self.body_done = True
        self.sent_continue = False
        self.gone_callback: Callable[[], None] | None = None

    async def run(self) -> None:
        server = self.server
        server.connections.add(self)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._answer_loop)
                await self._read_loop()
        finally:
            server.connections.discard(self)
            self.parser.close()
            await trio.aclose_forcefully(self.stream)

    # -- the reader ----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        guard = self.guard
        config = self.config
        with guard:
            while not self.closing:
                if self.read_ahead >= PIPELINE_BYTES and self.received > self.answered:
                    self.reader_parked = trio.lowlevel.current_task()

                    def unpark(raise_cancel: Any) -> trio.lowlevel.Abort:
                        self.reader_parked = None  # cancelled: nobody may reschedule it any more
                        return trio.lowlevel.Abort.SUCCEEDED

                    await trio.lowlevel.wait_task_rescheduled(unpark)
                    continue
                try:
                    data = await self.stream.receive_some(MAX_RECV)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    break
                if self.received > self.answered:  # the request in line has all arrived: these are the next ones
                    self.read_ahead += len(data)
                try:
                    events = self.parser.feed(bytes(data))
                except BadRequest as exc:
                    self._take(exc.events)
                    self.bad = exc  # answered after the requests before it; the client is not gone
                    if self.waiter is not None:
                        self._wake()
                    return
                if events:
                    self._take(events)
                if self.phase == IDLE:
                    self.phase = HEAD  # the next head has begun: it must be complete in time
                    guard.deadline = _deadline(config.header_read_timeout)
                if self.phase != BUSY:  # else pipelined bytes: the request under way has no deadline
                    self._follow_phase()
                if self.waiter is not None:
                    self._wake()
        if guard.cancelled_caught and self.phase in (HEAD, BODY) and not self.closing and not self.server.terminated:
            log.debug(
                "closing a client connection: its request %s did not arrive in time",
                "head" if self.phase == HEAD else "body",
            )
        self.eof = True
        callback = self.gone_callback
        if callback is not None and not self.closing:
            self.gone_callback = None
            callback()
        if self.waiter is not None:
            self._wake()

    def _take(self, events: list[Event]) -> None:
        self.events.extend(events)
        for event in events:
            if type(event) is Request:
                self.heads += 1
            elif type(event) is EndOfMessage:
                self.received += 1

    def _follow_phase(self) -> None:
        """The connection's deadline after a read or an answer, from where its requests stand."""
        guard = self.guard
        config = self.config
        if self.answered == self.heads:  # nothing outstanding
            if self.phase == BUSY or self.phase == BODY:
                self.phase = IDLE
                guard.deadline = _deadline(config.keep_alive_timeout)
            return  # HEAD or IDLE: the bound runs from the head's first byte, or from the answer
        if self.received < self.heads and self.received == self.answered:  # reading the body of the request in line
            now_bound = _deadline(config.header_read_timeout)
            if self.phase != BODY:
                self.phase = BODY
                self.body_end = _deadline(config.body_timeout)
            guard.deadline = min(self.body_end, now_bound)
            return
        if self.phase != BUSY:
            self.phase = BUSY
            guard.deadline = inf

    def _wake(self) -> None:
        task = self.waiter
        self.waiter = None
        if task is not None:
            trio.lowlevel.reschedule(task)

    async def _park(self) -> None:
        """The answering side waits for the reader's next news (events, the end, the client gone)."""
        if self.waiter is not None:
            raise trio.BusyResourceError("two tasks wait on one client connection")
        self.waiter = trio.lowlevel.current_task()

        def abort(raise_cancel: Any) -> trio.lowlevel.Abort:
            self.waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def on_client_gone(self, callback: Callable[[], None] | None) -> bool:
        """The `smg.client_gone` extension (`smg.http.asgi.ClientGone`); the callback runs in the reader."""
        if callback is None:
            self.gone_callback = None
            return True
        if self.eof:
            return False
        self.gone_callback = callback
        return True

    # -- the answering side --------------------------------------------------------------

    async def _answer_loop(self) -> None:
        try:
            while True:
                request = await self._next_request()
                if request is None or not await self._serve(request) or self.server.terminated:
                    break
        finally:
            self.closing = True
            self.guard.cancel()  # the reader stops; the connection closes

    async def _next_request(self) -> Request | None:
        events = self.events
        while True:
            while events:
                event = events.popleft()
                if type(event) is Request:
                    return event
            if self.bad is not None:
                await self._refuse(self.bad)
                return None
            if self.eof or self.parser.done:
                return None
            await self._park()

    async def _serve(self, request: Request) -> bool:
        """Run the app for `request`; whether the connection may carry another one."""
        self.request = request
        framer = self.framer = ResponseFramer(request)
        self.body_done = False  # even with no body, the app's first receive() is an (empty) http.request
        self.sent_continue = False
        path, raw_path, query = request.path_and_query()
        scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": request.http_version,
            "method": request.method,
            "scheme": self.server.scheme,
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": request.headers,
            "client": self.client,
            "server": self.local,
            "extensions": self.extensions,
        }
        try:
            await self.server.app(scope, self.receive, self.send)
        except Exception:
            log.exception("unhandled error answering %s %s", request.method, path)
            if not framer.started and not self.eof:
                await self._send_error(500, "internal_error", "the gateway failed to answer this request")
            return False
        finally:
            self.gone_callback = None
            self.answered += 1
            self.read_ahead = 0
            if self.waiter is not None:  # a task of the app still waits for a disconnect
                self._wake()
            reader = self.reader_parked
            if reader is not None:
                self.reader_parked = None
                trio.lowlevel.reschedule(reader)
        if not framer.started:
            if self.eof:  # the client left first: nobody to answer
                return False
            log.error("the application sent no response to %s %s", request.method, path)
            await self._send_error(500, "internal_error", "the gateway failed to answer this request")
            return False
        if not framer.complete or not framer.keep_alive or self.eof:
            return False
        if not self.body_done and not self._skip_body():
            return False  # the app answered without reading the body, whose end has not come: close
        self._follow_phase()
        return True

    def _skip_body(self) -> bool:
        """Drop the rest of a body the app did not read, if it has all arrived."""
        events = self.events
        while events and type(events[0]) is not Request:
            if type(events.popleft()) is EndOfMessage:
                self.body_done = True
        return self.body_done

    async def receive(self) -> Message:
        if self.body_done:
            while not self.eof and not (self.framer is not None and self.framer.complete) and self.answered < self.heads:
                await self._park()
            return _DISCONNECT
        request = self.request
        assert request is not None
        events = self.events
        if request.expect_continue and not self.sent_continue and not events:
            self.sent_continue = True
            await self._write(_CONTINUE)
        while True:
            if events:
                event = events.popleft()
                if type(event) is Data:
                    if events and type(events[0]) is EndOfMessage:
                        events.popleft()
                        self.body_done = True
                        return {"type": "http.request", "body": event.data, "more_body": False}
                    return {"type": "http.request", "body": event.data, "more_body": True}
                if type(event) is EndOfMessage:
                    self.body_done = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                events.appendleft(event)  # not reached: a next head comes only after this body's end
            if self.eof or self.bad is not None or self.parser.done:
                return _DISCONNECT
            await self._park()

    async def send(self, message: Message) -> None:
        framer = self.framer
        assert framer is not None
        kind = message["type"]
        if kind == "http.response.body":
            data = framer.body(message.get("body", b""), message.get("more_body", False))
            if data and not self.eof:
                await self._write(data)
            if framer.complete and self.waiter is not None:
                self._wake()  # a task of the app waiting for a disconnect: the answer is over
        elif kind == "http.response.start":
            framer.start(message["status"], message.get("headers") or [], _http_date(), closing=self.server.terminated)
        else:
            raise LocalProtocolError(f"unsupported ASGI message {kind!r}")

    async def _write(self, data: bytes) -> None:
        """One write, bounded by `write_timeout` and cancellable (the graceful deadline reaches
        it). A write cut short leaves the framing broken, so the connection closes; a client
        that is gone makes later writes no-ops and the app's `receive` report the disconnect.

        On a plain socket the bytes first go straight to the kernel (`sockio.write_now`): when
        they all fit, as they nearly always do, that is the whole write, without a deadline to
        register. Only a full send buffer takes the bounded, cancellable path."""
        fd = self.fd
        if fd >= 0:
            try:
                sent = write_now(fd, data)
            except trio.BrokenResourceError:  # reset, broken pipe, or closed
                self._lost()
                return
            if sent == len(data):
                return
            data = data[sent:]
        done = False
        try:
            with trio.CancelScope(deadline=_deadline(self.config.write_timeout)) as scope:
                await self.stream.send_all(data)
                done = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            done = True
            self._lost()
            return
        finally:
            if not done:
                self._lost()
                await trio.aclose_forcefully(self.stream)
        if scope.cancelled_caught:
            log.debug("closing a client connection: it read nothing for %gs", self.config.write_timeout)

    def _lost(self) -> None:
        self.eof = True
        self.fd = -1
        self.guard.cancel()
        if self.waiter is not None:
            self._wake()

    async def _send_error(self, status: int, code: str, message: str) -> None:
        """An error answer in the OpenAI shape, the connection's last."""
        request = self.request or Request("GET", b"/", "1.1", [], False, False, False)
        framer = ResponseFramer(request, closing=True)
        framer.start(status, [(b"content-type", b"application/json"), (b"x-smg-error-code", code.encode())], _http_date())
        await self._write(framer.body(dump_json(error_body(status, code, message)), False))

    async def _refuse(self, exc: BadRequest) -> None:
        """Answer a request the parser refused; then the connection closes."""
        log.debug("refusing a malformed request from %s: %s", self.client, exc.message)
        code = _REFUSAL_CODES.get(exc.status, "bad_request")
        if self.config.on_refused is not None:
            self.config.on_refused(exc.status, code)
        self.request = None
        await self._send_error(exc.status, code, exc.message)


_REFUSAL_CODES = {
    405: "method_not_allowed",
    431: "request_header_fields_too_large",
    501: "not_implemented",
    505: "http_version_not_supported",
}


class CappedListener(trio.abc.Listener[trio.abc.Stream]):
    """Accepts only while a slot is free; the connection's handler gives the slot back when it ends.

    At the cap, connections wait in the kernel's listen backlog (they are not
    refused, so a burst is served late rather than failed), and a warning says
    so at most once a minute.
    """

    def __init__(self, inner: trio.abc.Listener[Any], slots: trio.Semaphore, warn: Callable[[], None]) -> None:
        self.inner, self.slots, self.warn = inner, slots, warn

    async def accept(self) -> trio.abc.Stream:
        if self.slots.value == 0:
            self.warn()
        await self.slots.acquire()
        try:
            stream: trio.abc.Stream = await self.inner.accept()
            return stream
        except BaseException:
            self.slots.release()
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()


class _FullWarning:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.next_at = -inf

    def __call__(self) -> None:
        now = trio.current_time()
        if now >= self.next_at:
            self.next_at = now + FULL_WARNING_SECS
            log.warning(
                "%d client connections are open, the limit (--max-client-connections); "
                "new connections wait in the listen backlog until one closes",
                self.limit,
            )


async def _connection(server: Server, slots: trio.Semaphore | None, stream: trio.abc.Stream) -> None:
    try:
        await Connection(server, stream).run()
    finally:
        if slots is not None:
            slots.release()


def _listen_socket(config: ServerConfig) -> socket.socket:
    """The listening socket for `config.host:config.port` (`BindError` naming the flag if it cannot be had)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            config.host or None, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise BindError.from_os_error(config.port_flag, config.port, exc, config.host) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if config.shared_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(config.backlog)
    except OSError as exc:
        sock.close()
        raise BindError.from_os_error(config.port_flag, config.port, exc, config.host) from None
    return sock


def _tls_context(config: ServerConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(config.certfile or "", config.keyfile)
        if config.ca_certs:
            context.load_verify_locations(config.ca_certs)
    except (OSError, ssl.SSLError) as exc:
        raise ServeError(f"--tls-cert-path {config.certfile}: cannot load the certificate and key: {exc}") from None
    context.verify_mode = config.verify_mode
    return context


async def serve_app(
    app: ASGIApp,
    config: ServerConfig,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled or `shutdown_trigger` returns; reports the bound URL.

    On the trigger: the listener closes, idle connections close, busy ones close after their
    response, and whatever is still open `config.graceful_timeout` seconds later (read then) is
    cancelled. A port that cannot be bound raises `BindError` naming `config.port_flag`.
    """
    sock = _listen_socket(config)
    listener: trio.abc.Listener[Any] = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    scheme = "http"
    if config.certfile:
        listener = trio.SSLListener(listener, _tls_context(config), https_compatible=True)
        scheme = "https"
    host, port = sock.getsockname()[:2]
    url = f"{scheme}://{format_bind(host, port)}"
    slots = None
    if config.max_connections is not None:
        slots = trio.Semaphore(config.max_connections)
        listener = CappedListener(listener, slots, _FullWarning(config.max_connections))
    server = Server(app, config, scheme)
    handler = partial(_connection, server, slots)
    async with trio.open_nursery() as connections:
        try:
            async with trio.open_nursery() as accepting:
                accepting.start_soon(partial(trio.serve_listeners, handler, [listener], handler_nursery=connections))
                task_status.started([url])
                if shutdown_trigger is None:
                    await trio.sleep_forever()
                await shutdown_trigger()
                accepting.cancel_scope.cancel()  # closes the listener
        finally:
            server.terminate()
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
