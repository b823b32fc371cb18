"""In-process stand-ins for the data plane's surroundings, for tests on trio's `MockClock`.

- `FakeUpstream`: the `Upstream` protocol (`smg/upstream/base.py`) answered by a handler the
  test writes, in the spirit of httpx's `MockTransport`. It records every call, so a test
  asserts on what reached which worker, when, and whether the gateway gave up on it.
- `gateway`: a `GatewayContext` built from a real `GatewayConfig` (no history), with N ready
  workers and the fake as its upstream. No registrar task runs and no socket is opened.
- `FakeClient` and `exchange`: the ASGI side of one request, recording what the gateway sent
  and able to walk away (`http.disconnect`) at a chosen moment.

Time in a handler or a reply is trio time: on `MockClock(autojump_threshold=0)` (pytest-trio's
`autojump_clock` fixture) `await trio.sleep(30)` costs nothing and happens exactly.
"""

from __future__ import annotations

import inspect
import json
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from smg.app import GatewayApp
from smg.config import GatewayConfig
from smg.context import GatewayContext
from smg.http.asgi import Message
from smg.http.exchange import Exchange
from smg.upstream import DEFAULT_MAX_RESPONSE_SIZE
from smg.upstream.base import Headers, read_capped
from smg.workers.health import HealthState
from smg.workers.registry import Origin, Worker

MODEL = "test-model"


def worker_url(index: int) -> str:
    """The (normalised) URL `gateway` gives its `index`-th worker; nothing listens there."""
    return f"http://worker-{index}.test:8000"


# -- the upstream --------------------------------------------------------------------------

Step = bytes | float | BaseException
"""One step of a scripted body: bytes are a piece as one read would deliver it, a number is a
pause in seconds (`math.inf`: the worker goes silent for good), an exception is raised there
(`UpstreamProtocolError` is what the pool raises when a worker's connection breaks)."""


@dataclass
class Reply:
    """A worker's scripted answer. The handler returning it is when the response head arrived;
    `body` follows, piece by piece, as the gateway reads it."""

    status: int = 200
    headers: Headers = field(default_factory=lambda: [(b"content-type", b"application/json")])
    body: bytes | Sequence[Step] = b"{}"


def json_reply(status: int, obj: Any, headers: Iterable[tuple[bytes, bytes]] = ()) -> Reply:
    return Reply(status, [(b"content-type", b"application/json"), *headers], json.dumps(obj).encode())


def sse_reply(*steps: Step) -> Reply:
    """A 200 event stream; its steps as in `Step`."""
    return Reply(200, [(b"content-type", b"text/event-stream")], list(steps))


@dataclass
class UpstreamCall:
    """One request the gateway sent, and what became of it."""

    worker_url: str
    origin: Origin
    method: bytes
    target: bytes
    headers: Headers
    body: bytes
    started_at: float  # trio time the gateway asked
    answered_at: float | None = None  # when the handler gave the response head
    ended_at: float | None = None  # when the gateway let go of the response
    cancelled: bool = False  # the gateway cancelled the call (a deadline, the client leaving)

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key == name), None)


Handler = Callable[[UpstreamCall], Reply | Awaitable[Reply]]
"""Decides a call's fate: returns a `Reply` (an async handler may first `await trio.sleep(...)`:
the time to the response head), raises an `UpstreamError` (`UpstreamConnectError`: no
connection; `UpstreamProtocolError`: it broke before answering), or hangs (`hang`)."""


async def hang(call: UpstreamCall) -> Reply:
    """A worker that accepted the request and never answers."""
    await trio.sleep_forever()


class FakeResponse:
    """`UpstreamResponse` over a `Reply`: the body's steps run as the gateway reads."""

    def __init__(self, reply: Reply, max_size: int) -> None:
        self.status = reply.status
        self.headers = [(name.lower(), value) for name, value in reply.headers]
        self._steps: Sequence[Step] = [reply.body] if isinstance(reply.body, bytes) else reply.body
        self._max_size = max_size

    async def aiter_body(self) -> AsyncIterator[bytes]:
        for step in self._steps:
            if isinstance(step, BaseException):
                raise step
            if isinstance(step, bytes):
                if step:
                    yield step
            else:
                await trio.sleep(step)

    async def read(self) -> bytes:
        """Capped like the pool's `read`, so an oversized answer fails the same way."""
        return await read_capped(self.aiter_body(), self._max_size)


class FakeUpstream:
    """An `Upstream` whose workers are one handler; `calls` lists every request in order."""

    def __init__(self, handler: Handler, *, max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE) -> None:
        self.handler = handler
        self.max_response_size = max_response_size
        self.calls: list[UpstreamCall] = []
        self.closed = False

    @property
    def urls(self) -> list[str]:
        """The worker of each call, in order: the shortest account of where attempts went."""
        return [call.worker_url for call in self.calls]

    @asynccontextmanager
    async def request(
        self, origin: Origin, method: bytes, target: bytes, headers: Headers, body: bytes
    ) -> AsyncIterator[FakeResponse]:
        url = f"{origin.scheme}://{origin.host_header.decode()}{origin.base_path}"
        call = UpstreamCall(url, origin, method, target, list(headers), body, trio.current_time())
        self.calls.append(call)
        try:
            result = self.handler(call)
            reply = await result if inspect.isawaitable(result) else result
            call.answered_at = trio.current_time()
            yield FakeResponse(reply, self.max_response_size)
        except trio.Cancelled:
            call.cancelled = True
            raise
        finally:
            call.ended_at = trio.current_time()

    async def aclose(self) -> None:
        self.closed = True


# -- the gateway -------------------------------------------------------------------------------


def gateway(upstream: FakeUpstream, workers: int = 2, *, model: str = MODEL, **settings: Any) -> GatewayContext:
    """A context as `smg` builds it from `settings` (flag field names; round robin and no history
    unless given), with `workers` ready workers of `model` at `worker_url(i)` and `upstream`."""
    config = GatewayConfig(**{"history_backend": "none", "policy": "round_robin", **settings})
    ctx = GatewayContext.create(config)
    ctx.upstream = upstream
    for index in range(workers):
        add_ready_worker(ctx, worker_url(index), models=[model])
    return ctx


def add_ready_worker(ctx: GatewayContext, url: str, **settings: Any) -> Worker:
    """`ctx.add_worker` as it ends once discovery and health checks passed. `add_worker` itself
    hands the worker to the registrar, which needs its nursery running and probes over HTTP."""
    config = ctx.config
    worker = Worker.from_url(url, health=config.health_config(), breaker=config.breaker_config(), **settings)
    worker.discovered = True
    worker.health.reset(HealthState.READY)
    ctx.registry.add(worker)
    ctx.workers_changed()
    return worker


# -- the client --------------------------------------------------------------------------------


class FakeClient:
    """The client of one exchange: records the ASGI messages it was sent and can leave.

    `receive` gives the request body once, then blocks until `disconnect()` or trio time
    `disconnect_at`, and reports `http.disconnect` (as the server does when the peer goes).
    `send_delay` makes every body send take that long: a client reading slowly."""

    def __init__(self, body: bytes = b"", *, disconnect_at: float | None = None, send_delay: float = 0.0) -> None:
        self.body = body
        self.disconnect_at = disconnect_at
        self.send_delay = send_delay
        self.messages: list[Message] = []
        self._gone = trio.Event()
        self._body_given = False

    def disconnect(self) -> None:
        self._gone.set()

    async def receive(self) -> Message:
        if not self._body_given:
            self._body_given = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        with trio.move_on_at(math.inf if self.disconnect_at is None else self.disconnect_at):
            await self._gone.wait()
        self._gone.set()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and self.send_delay:
            await trio.sleep(self.send_delay)
        self.messages.append(message)

    @property
    def start(self) -> Message | None:
        return next((m for m in self.messages if m["type"] == "http.response.start"), None)

    @property
    def status(self) -> int | None:
        return None if self.start is None else int(self.start["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return {} if self.start is None else dict(self.start["headers"])

    @property
    def chunks(self) -> list[bytes]:
        """Each body message's bytes, in order (empty ones included)."""
        return [m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"]

    @property
    def body_bytes(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def complete(self) -> bool:
        """The response was ended (a body message without `more_body`)."""
        bodies = [m for m in self.messages if m["type"] == "http.response.body"]
        return bool(bodies) and not bodies[-1].get("more_body", False)

    def json(self) -> Any:
        return json.loads(self.body_bytes)


def exchange(
    client: FakeClient,
    path: str = "/v1/chat/completions",
    *,
    model: str | None = MODEL,
    headers: Iterable[tuple[bytes, bytes]] = (),
    request_id: str = "req-test",
) -> Exchange:
    """The `Exchange` the app would make for a POST to `path` (`ex.model` set, as after parsing)."""
    scope: dict[str, Any] = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *headers],
    }
    ex = Exchange(scope, client.receive, client.send, request_id, path)
    ex.model = model
    return ex


async def call(
    ctx: GatewayContext, path: str, body: Any = None, *, method: str = "POST", headers: Iterable[tuple[bytes, bytes]] = ()
) -> FakeClient:
    """One request through the whole `GatewayApp` (auth, routes, handlers), as the server would hand
    it over; `body` is bytes as sent, or JSON to encode."""
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    client = FakeClient(raw)
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 50000),
    }
    await GatewayApp(ctx)(scope, client.receive, client.send)
    return client


class FakeSocket:
    """What `smg.http.server.Connection` asks of a stream's socket (its peer and its own
    address), for the server end of an in-memory stream."""

    family = socket.AF_INET

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 50000)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 8000)
