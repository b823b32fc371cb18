"""Run an ASGI app on hypercorn's trio connection handling inside the caller's nursery.

hypercorn parses HTTP and drives the app; this module owns the accept loop and
each connection's clock, because hypercorn's own bounds do not fit a gateway
facing the internet:

- `read_timeout` bounds each read, so a client sending one byte a second
  never trips it;
- `keep_alive_timeout` runs only while no request is in flight, and is one
  value for both "the head has not arrived yet" and "idle between requests";
- a request whose body never arrives (or stalls) is not bounded at all;
- nothing bounds the number of open connections;
- a response write is shielded and unbounded: a client that stops reading
  holds its connection, and the node's shutdown, forever.

So every connection gets one cancel scope whose deadline follows what the
connection is doing (`GuardedTCPServer`): a whole-head deadline from accept
(and from the first byte of each later head), the body bounded from the end of
its head as a whole and by the head's bound between two of its bytes (a body
that stops arriving is cut as soon as a head would be), no deadline while a response is under way (a long stream is never
cut; a pipelined request waiting for the one before it counts as that
one's), and the idle deadline between requests; each write to the client is
bounded on its own and cancellable at the graceful deadline. Moving a deadline is an
attribute write: no task per request (hypercorn's idle task, restarted on
every request, runs once per connection here). The listener is wrapped so
that at most `max_connections` connections are open at once
(`CappedListener`); the rest wait in the kernel's listen backlog.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from math import inf
from typing import Any, TypeVar

import h11
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import repr_socket_addr

from smg.http.asgi import ASGIApp
from smg.settings import ConfigError

log = logging.getLogger("smg.serving")

FULL_WARNING_SECS = 60.0  # at most one "connection limit reached" line per listener set this often

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


class ServerConfig(HypercornConfig):
    """hypercorn's settings plus the connection bounds this module enforces (0 disables a timeout)."""

    header_read_timeout: float = 30.0  # accept (or a later head's first byte) to a complete request head
    write_timeout: float = 90.0  # one write of a response to the client (a client that reads nothing)
    body_timeout: float = 60.0  # end of a head to the end of its body
    max_connections: int | None = None  # open connections at once; None: no cap
    port_flag: str = "--port"  # named in the one-line error when the port is taken
    # keep_alive_timeout (hypercorn's own setting) is the idle bound between requests


def hypercorn_config(
    host: str,
    port: int,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    graceful_timeout: float = 5.0,
    keep_alive_timeout: float = 75.0,
    header_read_timeout: float = 30.0,
    write_timeout: float = 90.0,
    body_timeout: float = 60.0,
    max_connections: int | None = None,
    port_flag: str = "--port",
    shared_port: bool = False,
) -> ServerConfig:
    """`shared_port`: other processes bind the same port (SO_REUSEPORT; the kernel spreads the
    connections among them)."""
    config = ServerConfig()
    config.bind = [format_bind(host, port)]
    config.accesslog = None  # the gateway writes its own, one line per request
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = graceful_timeout
    config.keep_alive_timeout = keep_alive_timeout
    config.header_read_timeout = header_read_timeout
    config.write_timeout = write_timeout
    config.body_timeout = body_timeout
    config.max_connections = max_connections
    config.port_flag = port_flag
    if shared_port:
        config.workers = 2  # hypercorn's switch for SO_REUSEPORT (several worker processes on one port)
    # Load balancers and gateways hold long-lived keep-alive connections; hypercorn's
    # default closes each after 1,000 requests, which costs a reconnect for nothing.
    config.keep_alive_max_requests = 1_000_000
    config.backlog = 1024
    if certfile:
        config.certfile = certfile
        config.keyfile = keyfile
        if header_read_timeout > 0:  # the handshake comes before the head, inside the same bound
            config.ssl_handshake_timeout = header_read_timeout
    return config


def _deadline(seconds: float) -> float:
    return trio.current_time() + seconds if seconds > 0 else inf


# What a connection is doing; its deadline follows.
HEAD = 0  # reading a request head: --header-read-timeout-secs from accept, or from the head's first byte
BODY = 1  # reading a request body (HTTP/1.1): the body bound from the end of its head
BUSY = 2  # a request in flight, response or stream included: no deadline
IDLE = 3  # keep-alive, between requests: --idle-connection-timeout-secs


class GuardedTCPServer(TCPServer):
    """One hypercorn connection whose single deadline follows `HEAD`/`BODY`/`BUSY`/`IDLE`.

    hypercorn tells its connection when a request head is complete
    (`Updated(idle=False)`) and when the response is done and the connection
    is reusable (`Updated(idle=True)`); the read loop sees the first byte of
    a new head and, for HTTP/1.1, h11 says whether a body is still due. The
    three overrides below are small copies of hypercorn 0.18's methods (the
    read loop, the event hook and the idle task); `serve_app` uses this class
    in place of hypercorn's. Over HTTP/2 (TLS with ALPN) there is no per-head
    phase: the connection is `HEAD` until its first request, then `BUSY` or
    `IDLE` as its streams come and go.
    """

    config: ServerConfig

    def __init__(self, app: Any, config: ServerConfig, context: WorkerContext, stream: Any) -> None:
        super().__init__(app, config, context, {}, stream)  # no lifespan state: the node owns start-up
        self._phase = HEAD
        self._guard = trio.CancelScope(deadline=_deadline(config.header_read_timeout))
        self._body_end = inf  # the whole-body bound of the request being read

    def _h11(self) -> h11.Connection | None:
        connection = getattr(self.protocol.protocol, "connection", None)
        return connection if type(connection) is h11.Connection else None

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            await self._write(event.data)
            return
        if isinstance(event, Updated):  # replaces hypercorn's restart of its idle task on every request
            if event.idle:
                self._phase = IDLE
                self._guard.deadline = _deadline(self.config.keep_alive_timeout)
                if self.context.terminated.is_set():  # shutting down: an idle connection closes now
                    self._guard.cancel()
            else:
                connection = self._h11()
                if connection is not None and connection.their_state is h11.SEND_BODY:
                    self._phase = BODY
                    self._body_end = _deadline(self.config.body_timeout)
                    self._guard.deadline = min(self._body_end, _deadline(self.config.header_read_timeout))
                else:
                    self._phase = BUSY
                    self._guard.deadline = inf
            return
        await super().protocol_send(event)

    async def _write(self, data: bytes) -> None:
        """hypercorn shields this write from cancellation and bounds it by nothing, so a client
        that stops reading held its connection (and the node's shutdown) forever. Here it is
        bounded by `write_timeout`, and cancellable: the graceful deadline at shutdown reaches it.
        A write cut short leaves the response's framing broken, so the connection closes."""
        async with self.send_lock:
            done = False
            try:
                with trio.CancelScope(deadline=_deadline(self.config.write_timeout)) as scope:
                    await self.stream.send_all(data)
                    done = True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                done = True  # the client is gone: nothing left to close but the protocol
                await self.protocol.handle(Closed())
                return
            finally:
                if not done:
                    await trio.aclose_forcefully(self.stream)
            if scope.cancelled_caught:
                log.debug("closing a client connection: it read nothing for %gs", self.config.write_timeout)
                await self.protocol.handle(Closed())

    def _pause_is_busy(self) -> None:
        """A pipelined request waits (hypercorn's `can_read`) until the one before it is answered:
        that wait is part of the earlier request, not a slow head or body, so no deadline runs."""
        can_read = getattr(getattr(self.protocol, "protocol", None), "can_read", None)
        if can_read is None:
            return
        wait = can_read.wait

        async def paused() -> None:
            self._phase = BUSY
            self._guard.deadline = inf
            await wait()

        can_read.wait = paused

    async def _read_data(self) -> None:
        guard = self._guard
        self._pause_is_busy()
        with guard:
            while True:
                try:
                    data = await self.stream.receive_some(MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
                if self._phase == IDLE and data and self._h11() is not None:
                    self._phase = HEAD  # the next head has begun: it must be complete in time
                    guard.deadline = _deadline(self.config.header_read_timeout)
                await self.protocol.handle(RawData(bytes(data)))
                if self._phase == BODY:
                    connection = self._h11()
                    if connection is None or connection.their_state is not h11.SEND_BODY:
                        self._phase = BUSY
                        guard.deadline = inf
                    elif data:  # the body moves: the stall bound starts again, the whole-body bound stays
                        guard.deadline = min(self._body_end, _deadline(self.config.header_read_timeout))
                if not data:
                    break
        await self.protocol.handle(Closed())
        if guard.cancelled_caught:  # our deadline (or shutdown): the socket closes now, whatever the app does
            if self._phase in (HEAD, BODY) and not self.context.terminated.is_set():
                log.debug(
                    "closing a client connection: its request %s did not arrive in time",
                    "head" if self._phase == HEAD else "body",
                )
            await trio.aclose_forcefully(self.stream)
        await self.idle_task.stop()  # so the connection's task group can finish

    async def _idle_timeout(self) -> None:
        """Started once per connection by `run`: at shutdown, close the connection if no request is in flight.

        A busy connection closes after its response: hypercorn does not reuse
        a connection once the worker is terminated.
        """
        await self.context.terminated.wait()
        if self._phase in (HEAD, IDLE):
            self._guard.cancel()


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


async def _connection(app: Any, config: ServerConfig, context: WorkerContext, slots: trio.Semaphore | None, stream: Any) -> None:
    try:
        await GuardedTCPServer(app, config, context, stream).run()
    finally:
        if slots is not None:
            slots.release()


async def serve_app(
    app: ASGIApp,
    config: HypercornConfig,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled or `shutdown_trigger` returns; reports the bound URLs.

    The same steps as hypercorn's `worker_serve`, with `GuardedTCPServer` and
    `CappedListener`, and without the ASGI lifespan (the node starts and stops
    what the apps use). On the trigger: the listeners close, idle connections
    close, busy ones close after their response, and whatever is still open
    `config.graceful_timeout` seconds later (read then) is cancelled. A port
    that cannot be bound raises `BindError` naming `config.port_flag`.
    """
    if not isinstance(config, ServerConfig):
        config = _as_server_config(config)
    config.set_statsd_logger_class(StatsdLogger)
    context = WorkerContext(None)
    try:
        sockets = config.create_sockets()
    except OSError as exc:
        host, _, port = config.bind[0].replace("[", "").replace("]", "").rpartition(":")
        raise BindError.from_os_error(config.port_flag, int(port), exc, host) from None
    listeners: list[trio.abc.Listener[Any]] = []
    binds: list[str] = []
    if sockets.secure_sockets:
        ssl_context = config.create_ssl_context()
        assert ssl_context is not None  # hypercorn made secure sockets: it has a certificate
        for sock in sockets.secure_sockets:
            sock.listen(config.backlog)
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            listeners.append(trio.SSLListener(listener, ssl_context, https_compatible=True))
            binds.append(f"https://{repr_socket_addr(sock.family, sock.getsockname())}")
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
    slots = None
    if config.max_connections is not None:
        slots = trio.Semaphore(config.max_connections)
        warn = _FullWarning(config.max_connections)
        listeners = [CappedListener(listener, slots, warn) for listener in listeners]
    handler = partial(_connection, ASGIWrapper(app), config, context, slots)  # type: ignore[arg-type]
    async with trio.open_nursery() as connections:
        try:
            async with trio.open_nursery() as accepting:
                accepting.start_soon(partial(trio.serve_listeners, handler, listeners, handler_nursery=connections))
                task_status.started(binds)
                if shutdown_trigger is None:
                    await trio.sleep_forever()
                await shutdown_trigger()
                accepting.cancel_scope.cancel()  # closes the listeners
        finally:
            await context.terminated.set()
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout


def _as_server_config(config: HypercornConfig) -> ServerConfig:
    """A plain hypercorn `Config` gets this module's defaults for the settings it lacks."""
    server = ServerConfig()
    server.__dict__.update(config.__dict__)
    return server
