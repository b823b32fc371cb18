"""OpenTelemetry tracing (`--enable-trace`): spans of data-plane requests, exported over OTLP/gRPC.

Off (the default) it must cost the request path nothing measurable, so every call site tests
the module flag first (`if tracing.ENABLED:`, read through the module so that `start` and
`stop` are seen) and calls nothing here otherwise: no span objects, no context switches, no
header scans. Everything below that flag assumes tracing is on.

On, spans go to one `TracerProvider` owned by this module, not the process-global one (which
can be set only once per process, while tests run several gateways in one), through the SDK's
`BatchSpanProcessor`: ending a span appends it to a bounded queue and the SDK's own thread
exports batches to the collector. A slow or unreachable collector therefore never delays a
request; when the queue is full, spans are dropped. The SDK and the exporter (gRPC) are
imported by `start`, so a gateway without `--enable-trace` does not pay for loading them.

The span tree of one request (names and attributes: README, "Tracing"):

    POST /v1/chat/completions      SERVER, continues the client's `traceparent`
      smg.admission                the wait for a permit (with --max-concurrent-requests)
      smg.route                    the policy's choice, once per attempt
      smg.attempt                  CLIENT, one per try on a worker; its id is the worker's parent
      smg.storage                  one per history call (Responses and Conversations APIs)

The current span lives in a contextvar (OTel's context). trio copies a task's context when the
task is spawned, so a span made current in a request's task is the parent of everything that
request's child tasks start, and every attach here is detached in the task that attached it.
Spans below the server span are made only inside a traced request: work outside one (a
background response after its request answered, the history store's group commits) would
otherwise start a trace of stray fragments.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import Token
from typing import TYPE_CHECKING

import trio
from opentelemetry import context, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from smg import __version__
from smg.http.errors import GatewayError
from smg.http.exchange import Exchange

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("smg.tracing")

ENABLED = False  # the one test the request path pays when tracing is off
FLUSH_SECS = 5.0  # at exit: how long the last spans may take to reach the collector
EXPORT_LOG_EVERY_SECS = 60.0  # one line per kind of export failure in this long, not one per batch
SERVER, CLIENT, INTERNAL = SpanKind.SERVER, SpanKind.CLIENT, SpanKind.INTERNAL
# the SDK's loggers of export failures and of a full span queue
EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.sdk._shared_internal",
    # a client's malformed or oversized `tracestate` is warned about per request: a client must not fill the log
    "opentelemetry.trace.span",
    "opentelemetry.trace.propagation.tracecontext",
)

_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_PROPAGATOR = TraceContextTextMapPropagator()  # W3C `traceparent` / `tracestate`
_SERVER_SPAN = context.create_key("smg.server-span")  # the request's own span, for its TTFT


# -- the collector ------------------------------------------------------------------------------


def parse_endpoint(endpoint: str) -> tuple[str, bool]:
    """`--otlp-traces-endpoint` as the gRPC exporter takes it: (HOST:PORT, insecure).

    The reference documents `<ip>:<port>` (plain gRPC, as collectors listen by default);
    `http://HOST:PORT` means the same and `https://HOST:PORT` asks for TLS. A bare
    HOST:PORT must be marked insecure explicitly: the exporter would read the host as a URL
    scheme and default to TLS. Raises ValueError saying what is wrong."""
    text = endpoint.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    elif scheme.lower() not in ("http", "https"):
        raise ValueError(f"'{endpoint}' is not HOST:PORT (a URL may only be http:// or https://)")
    rest = rest.removesuffix("/")
    host, colon, port = rest.rpartition(":")
    if not colon or not host or "/" in rest or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"'{endpoint}' is not HOST:PORT (e.g. localhost:4317)")
    return f"{host}:{port}", scheme.lower() != "https"


def start(endpoint: str, node: str | None = None) -> None:
    """Trace from now on, exporting to `endpoint` (checked by the config); `node`: the mesh
    node's name, so a cluster's spans say which gateway made them."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    target, insecure = parse_endpoint(endpoint)
    resource: dict[str, str] = {"service.name": "smg", "service.version": __version__}
    if node:
        resource["service.instance.id"] = node
    # shutdown_on_exit: the SDK's own atexit flush could hold the process 30 s on a dead
    # collector; `stop` flushes within FLUSH_SECS instead
    provider = TracerProvider(resource=Resource.create(resource), shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=target, insecure=insecure)))
    quiet_export_failures()
    install(provider)
    log.info(
        "tracing: spans go to the OTLP/gRPC collector at %s (%s), in batches%s",
        target,
        "plain" if insecure else "TLS",
        f"; node {node}" if node else "",
    )


def install(provider: TracerProvider | None) -> None:
    """Send spans to `provider` (tests give one with an in-memory exporter), or stop making
    spans (None). Leaves `provider` running: `stop` is what shuts one down."""
    global ENABLED, _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer("smg", __version__) if provider is not None else None
    ENABLED = provider is not None


async def stop() -> None:
    """Make no more spans, and hand the queued ones to the collector before the gateway exits.
    The SDK's flush blocks (a thread join, a gRPC call), so it runs in a worker thread, for at
    most `FLUSH_SECS`: a collector that does not answer is abandoned to the SDK's threads
    (daemons, which do not hold the process), as is the rest when a caller's deadline
    comes first."""
    provider = _provider
    install(None)
    if provider is None:
        return
    with trio.move_on_after(FLUSH_SECS) as flushing:
        await trio.to_thread.run_sync(provider.shutdown, abandon_on_cancel=True)
    if flushing.cancelled_caught:
        log.warning("tracing: the collector did not take the last spans within %gs; they are lost", FLUSH_SECS)


class _OncePer(logging.Filter):
    """Lets through one record of each message (by its format string) per `every` seconds.

    With the collector gone, the exporter logs a warning per retry and an error per batch, and
    the span queue a warning when it drops; under load that is a line every few seconds for as
    long as the outage lasts. One of each a minute says the same."""

    def __init__(self, every: float) -> None:
        super().__init__()
        self.every = every
        self._last: dict[tuple[int, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, str(record.msg))
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            return False
        self._last[key] = now
        return True


def quiet_export_failures(every: float = EXPORT_LOG_EVERY_SECS) -> None:
    """Rate-limit the SDK's export-failure lines (`_OncePer`), once per process."""
    for name in EXPORT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OncePer) for f in logger.filters):
            logger.addFilter(_OncePer(every))


# -- the request's span ---------------------------------------------------------------------------


class _Headers(Getter[list[tuple[bytes, bytes]]]):
    """The propagator's view of ASGI headers (lower-case byte names)."""

    def get(self, carrier: list[tuple[bytes, bytes]], key: str) -> list[str] | None:
        wanted = key.encode()
        found = [value.decode("latin-1") for name, value in carrier if name == wanted]
        return found or None

    def keys(self, carrier: list[tuple[bytes, bytes]]) -> list[str]:
        return [name.decode("latin-1") for name, _ in carrier]


_HEADERS = _Headers()


class RequestSpan:
    """A request's server span and the context token that made it current."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span, token: Token[context.Context]) -> None:
        self.span = span
        self.token = token


def request_started(ex: Exchange) -> RequestSpan:
    """Open the request's SERVER span, continuing the client's `traceparent`/`tracestate`
    (or starting a trace), and make it current for the rest of the request's task. Must be
    paired with `request_ended` in the same task (a `finally`)."""
    assert _tracer is not None
    scope = ex.scope
    method = scope["method"]
    parent = _PROPAGATOR.extract(scope["headers"], getter=_HEADERS)
    attributes: dict[str, str] = {
        "http.request.method": method,
        "http.route": ex.route,
        "url.path": scope["path"],
        "smg.request_id": ex.request_id,
    }
    span = _tracer.start_span(f"{method} {ex.route}", context=parent, kind=SERVER, attributes=attributes)
    token = context.attach(context.set_value(_SERVER_SPAN, span, trace.set_span_in_context(span, parent)))
    return RequestSpan(span, token)


def request_ended(request: RequestSpan, ex: Exchange) -> None:
    """Close the server span once the response (a stream's last event included) went out,
    with what the access log records: status, model, tenant, worker, the error code."""
    span = request.span
    try:
        if ex.status:
            span.set_attribute("http.response.status_code", ex.status)
        if ex.model:
            span.set_attribute("gen_ai.request.model", ex.model)
        if ex.tenant:
            span.set_attribute("smg.tenant", ex.tenant)
        if ex.worker is not None:
            span.set_attribute("smg.worker", ex.worker.url)
        if ex.event_stream:
            span.set_attribute("smg.stream", True)
        if ex.client_gone:
            span.set_attribute("smg.client_gone", True)
        if ex.error_code:
            failed(span, ex.error_code, ex.error_message)
        span.end()
    finally:
        context.detach(request.token)


def first_token(seconds: float) -> None:
    """A stream's first bytes arrived, `seconds` after the request did: an event on the
    request's span (and on the attempt's), and `smg.ttft_ms` on the request's."""
    server = context.get_value(_SERVER_SPAN)
    if isinstance(server, Span):
        server.add_event("first_token")
        server.set_attribute("smg.ttft_ms", round(seconds * 1000, 3))
    current = trace.get_current_span()
    if current is not server:
        current.add_event("first_token")


# -- spans inside a request -----------------------------------------------------------------------


@contextmanager
def detached() -> Iterator[None]:
    """Work that outlives the request that started it (a background response) runs outside its
    trace: trio's tasks inherit their spawner's context, and spans under a server span that has
    ended would be stray fragments of a finished trace."""
    if not ENABLED:
        yield
        return
    token = context.attach(context.Context())
    try:
        yield
    finally:
        context.detach(token)


def in_request() -> bool:
    """There is a span to be the parent of a new one (see the module docstring)."""
    return trace.get_current_span().get_span_context().is_valid


@contextmanager
def span(name: str, attributes: Attributes = None, kind: SpanKind = INTERNAL) -> Iterator[Span]:
    """A child of the current span, current within the block and ended with it; an exception
    leaving the block marks it failed (a `GatewayError` with its code). Outside a request
    the block gets a span that records nothing."""
    if _tracer is None or not in_request():
        yield INVALID_SPAN
        return
    child = _tracer.start_span(name, kind=kind, attributes=attributes)
    with trace.use_span(child, end_on_exit=True, record_exception=False, set_status_on_exception=False):
        try:
            yield child
        except BaseException as exc:
            raised(child, exc)
            raise


def start_span(name: str, attributes: Attributes = None) -> Span | None:
    """A child of the current span that is not made current (a leaf: nothing nests in it, so
    no context switch is needed); None outside a request. End it with `finish`."""
    if _tracer is None or not in_request():
        return None
    return _tracer.start_span(name, attributes=attributes)


def finish(span: Span, error_code: str | None = None, message: str | None = None) -> None:
    if error_code is not None:
        failed(span, error_code, message)
    span.end()


def note(key: str, value: str | int | float | bool) -> None:
    """An attribute on the current span, from code that does not hold it (the policy's)."""
    trace.get_current_span().set_attribute(key, value)


def failed(span: Span, error_code: str, message: str | None = None) -> None:
    """Status ERROR, described by the gateway's error code (`error.type` too, as OTel's
    conventions name it); the human message beside it."""
    span.set_status(Status(StatusCode.ERROR, error_code))
    span.set_attribute("error.type", error_code)
    if message:
        span.set_attribute("smg.error.message", message)


def raised(span: Span, exc: BaseException) -> None:
    """What an exception leaving a span says: a gateway error's code; `cancelled` when trio
    cancelled the work (a deadline, the client leaving); otherwise the exception itself."""
    if isinstance(exc, GatewayError):
        failed(span, exc.code, exc.message)
    elif isinstance(exc, trio.Cancelled):
        failed(span, "cancelled")
    else:
        if isinstance(exc, Exception):
            span.record_exception(exc)
        failed(span, type(exc).__name__, str(exc))


def inject(headers: list[tuple[bytes, bytes]]) -> bool:
    """Add the current span's `traceparent` (and `tracestate`) to an upstream request's
    headers; False when there is no span to name (outside a traced request)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    for name, value in carrier.items():
        headers.append((name.encode("latin-1"), value.encode("latin-1")))
    return "traceparent" in carrier


def noting_match(observe: Callable[[float], None]) -> Callable[[float], None]:
    """cache_aware's `on_match` that also puts the matched share on the routing span (the
    current one while the policy chooses), when tracing is on."""

    def on_match(ratio: float) -> None:
        observe(ratio)
        if ENABLED:
            trace.get_current_span().set_attribute("smg.cache_match_ratio", ratio)

    return on_match
