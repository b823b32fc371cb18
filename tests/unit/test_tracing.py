"""`--enable-trace`: the spans of a request through the whole app, in one process.

The SDK's `InMemorySpanExporter` behind a `SimpleSpanProcessor` receives each span as it ends,
so a test reads the finished tree right after its request. Pinned here: the span tree and
its attributes, the client's W3C trace context continued and the attempt's sent to the worker,
retries as one attempt span each, streams ending the server span with the stream, errors as
status ERROR with the gateway's code, storage calls inside requests only, and tracing off
leaving the client's `traceparent` untouched and making no spans.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from trio.testing import MockClock

import smg
from smg.config import GatewayConfig
from smg.context import GatewayContext
from smg.observability import tracing
from smg.settings import ConfigError
from smg.storage.base import StorageError
from smg.storage.memory import MemoryHistory
from smg.storage.service import History
from smg.upstream import UpstreamProtocolError
from tests import fakes
from tests.fakes import MODEL, FakeClient, FakeUpstream, Reply, UpstreamCall, gateway, hang, json_reply, sse_reply, worker_url

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CLIENT_SPAN = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{CLIENT_SPAN:016x}-01".encode()
CHAT: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory, for one test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.install(None)
    provider.shutdown()


async def call(
    ctx: GatewayContext, path: str = "/v1/chat/completions", body: Any = CHAT, *, method: str = "POST", headers: Any = ()
) -> FakeClient:
    """`tests.fakes.call`, a chat completion unless told otherwise."""
    return await fakes.call(ctx, path, body, method=method, headers=headers)


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    [span] = named(exporter, name)
    return span


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def traceparent_naming(span: ReadableSpan, flags: str = "01") -> bytes:
    assert span.context is not None
    return f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-{flags}".encode()


def ok(call: UpstreamCall) -> Reply:
    return json_reply(200, ANSWER)


# -- the span tree ---------------------------------------------------------------------------------


async def test_a_chat_completion_is_a_server_span_over_its_route_and_attempt(
    autojump_clock: MockClock, spans: InMemorySpanExporter
) -> None:
    upstream = FakeUpstream(ok)
    ctx = gateway(upstream, 2, api_key="k")

    client = await call(
        ctx, headers=[(b"traceparent", TRACEPARENT), (b"tracestate", b"vendor=1"), (b"authorization", b"Bearer k")]
    )

    assert client.status == 200
    server = only(spans, "POST /v1/chat/completions")
    route, attempt = only(spans, "smg.route"), only(spans, "smg.attempt")
    assert server.kind is SpanKind.SERVER and attempt.kind is SpanKind.CLIENT and route.kind is SpanKind.INTERNAL
    # the client's trace, continued: same trace id, the client's span as the parent
    assert server.context is not None and server.context.trace_id == TRACE_ID
    assert parent_of(server) == CLIENT_SPAN and server.parent is not None and server.parent.is_remote
    assert parent_of(route) == parent_of(attempt) == server.context.span_id
    assert len(spans.get_finished_spans()) == 3
    assert server.attributes == {
        "http.request.method": "POST",
        "http.route": "/v1/chat/completions",
        "url.path": "/v1/chat/completions",
        "smg.request_id": client.headers[b"x-request-id"].decode(),
        "http.response.status_code": 200,
        "gen_ai.request.model": MODEL,
        "smg.tenant": "admin",
        "smg.worker": upstream.calls[0].worker_url,
    }
    assert server.status.status_code is StatusCode.UNSET
    assert route.attributes == {
        "smg.policy": "round_robin",
        "smg.attempt": 1,
        "smg.candidates": 2,
        "smg.worker": upstream.calls[0].worker_url,
    }
    assert attempt.attributes == {"smg.worker": upstream.calls[0].worker_url, "smg.attempt": 1, "http.response.status_code": 200}
    # the worker's parent is the attempt span; the client's tracestate travels on
    sent = upstream.calls[0]
    assert sent.header(b"traceparent") == traceparent_naming(attempt)
    assert sent.header(b"tracestate") == b"vendor=1"
    assert [name for name, _ in sent.headers].count(b"traceparent") == 1


async def test_without_a_client_traceparent_the_gateway_starts_the_trace(
    autojump_clock: MockClock, spans: InMemorySpanExporter
) -> None:
    upstream = FakeUpstream(ok)
    ctx = gateway(upstream, 1)

    await call(ctx)

    server, attempt = only(spans, "POST /v1/chat/completions"), only(spans, "smg.attempt")
    assert server.parent is None and attempt.context is not None and server.context is not None
    assert attempt.context.trace_id == server.context.trace_id
    sent = upstream.calls[0].header(b"traceparent")
    assert sent is not None and sent[:-2] == traceparent_naming(attempt)[:-2]  # flags: sampled, and maybe "random id"
    assert upstream.calls[0].header(b"tracestate") is None


async def test_a_retried_request_has_one_attempt_span_per_try(autojump_clock: MockClock, spans: InMemorySpanExporter) -> None:
    upstream = FakeUpstream(lambda call: json_reply(503, {}) if call.worker_url == worker_url(0) else json_reply(200, ANSWER))
    ctx = gateway(upstream, 2)

    client = await call(ctx, headers=[(b"traceparent", TRACEPARENT)])

    assert client.status == 200 and upstream.urls == [worker_url(0), worker_url(1)]
    server = only(spans, "POST /v1/chat/completions")
    assert server.context is not None
    first, second = named(spans, "smg.attempt")
    routes = named(spans, "smg.route")
    assert [r.attributes["smg.attempt"] for r in routes if r.attributes] == [1, 2]
    assert all(parent_of(span) == server.context.span_id for span in (first, second, *routes))
    assert first.attributes == {
        "smg.worker": worker_url(0),
        "smg.attempt": 1,
        "http.response.status_code": 503,
        "error.type": "upstream_error",
        "smg.error.message": "worker answered 503",
    }
    assert first.status.status_code is StatusCode.ERROR and first.status.description == "upstream_error"
    assert second.attributes == {
        "smg.worker": worker_url(1),
        "smg.attempt": 2,
        "smg.retry_reason": "upstream_error",
        "http.response.status_code": 200,
    }
    assert second.status.status_code is StatusCode.UNSET
    # each try names its own span to its worker, in the client's trace
    assert [call.header(b"traceparent") for call in upstream.calls] == [traceparent_naming(first), traceparent_naming(second)]
    assert server.status.status_code is StatusCode.UNSET


async def test_admission_is_a_span_with_how_the_request_got_in(autojump_clock: MockClock, spans: InMemorySpanExporter) -> None:
    ctx = gateway(FakeUpstream(ok), 1, max_concurrent_requests=4)

    await call(ctx)

    server, admission = only(spans, "POST /v1/chat/completions"), only(spans, "smg.admission")
    assert server.context is not None and parent_of(admission) == server.context.span_id
    assert admission.attributes == {"smg.admission.result": "admitted"}
    # the permit is taken before routing
    assert admission.end_time is not None and admission.end_time <= only(spans, "smg.route").start_time  # type: ignore[operator]


async def test_cache_aware_puts_its_match_ratio_on_the_routing_span(
    autojump_clock: MockClock, spans: InMemorySpanExporter
) -> None:
    ctx = gateway(FakeUpstream(ok), 2, policy="cache_aware", enable_trace=True)

    await call(ctx)
    await call(ctx)

    first, second = named(spans, "smg.route")
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["smg.policy"] == "cache_aware"
    assert first.attributes["smg.cache_match_ratio"] == 0.0
    assert second.attributes["smg.cache_match_ratio"] == 1.0  # the same prompt, sent where it went before


# -- streams and errors -----------------------------------------------------------------------------


async def test_a_stream_ends_its_server_span_with_the_stream_and_records_ttft(
    autojump_clock: MockClock, spans: InMemorySpanExporter
) -> None:
    chunk = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
    upstream = FakeUpstream(lambda call: sse_reply(chunk, 1.0, chunk, b"data: [DONE]\n\n"))
    ctx = gateway(upstream, 1)

    client = await call(ctx, body={**CHAT, "stream": True})

    assert client.complete
    server, attempt = only(spans, "POST /v1/chat/completions"), only(spans, "smg.attempt")
    assert server.attributes is not None
    assert server.attributes["smg.stream"] is True and server.attributes["http.response.status_code"] == 200
    assert isinstance(server.attributes["smg.ttft_ms"], float)
    assert [event.name for event in server.events] == ["first_token"]
    assert [event.name for event in attempt.events] == ["first_token"]
    assert server.end_time is not None and attempt.end_time is not None and attempt.end_time <= server.end_time


async def test_a_stream_failing_midway_marks_the_spans_with_the_error_code(
    autojump_clock: MockClock, spans: InMemorySpanExporter
) -> None:
    chunk = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
    upstream = FakeUpstream(lambda call: sse_reply(chunk, UpstreamProtocolError("connection reset")))
    ctx = gateway(upstream, 1)

    await call(ctx, body={**CHAT, "stream": True})

    for span in (only(spans, "POST /v1/chat/completions"), only(spans, "smg.attempt")):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "upstream_stream_error"
        assert span.attributes is not None and span.attributes["error.type"] == "upstream_stream_error"


async def test_a_request_no_worker_can_take_fails_its_route_and_server_spans(
    autojump_clock: MockClock, spans: InMemorySpanExporter
) -> None:
    ctx = gateway(FakeUpstream(ok), 0)

    client = await call(ctx)

    code = client.json()["error"]["code"]
    assert client.status == 404 and code == "model_not_found"
    server, route = only(spans, "POST /v1/chat/completions"), only(spans, "smg.route")
    assert not named(spans, "smg.attempt")
    for span in (server, route):
        assert span.status.status_code is StatusCode.ERROR and span.status.description == code
    assert server.attributes is not None and server.attributes["http.response.status_code"] == client.status


async def test_a_request_past_its_deadline_cancels_its_attempt_span(
    autojump_clock: MockClock, spans: InMemorySpanExporter
) -> None:
    ctx = gateway(FakeUpstream(hang), 1, request_timeout_secs=5, worker_first_byte_timeout_secs=60)

    client = await call(ctx)

    assert client.status == 504
    server, attempt = only(spans, "POST /v1/chat/completions"), only(spans, "smg.attempt")
    assert attempt.status.status_code is StatusCode.ERROR and attempt.status.description == "cancelled"
    assert server.status.status_code is StatusCode.ERROR and server.status.description == "upstream_timeout"


async def test_a_sampled_out_client_trace_is_continued_without_recording(
    autojump_clock: MockClock, spans: InMemorySpanExporter
) -> None:
    upstream = FakeUpstream(ok)
    ctx = gateway(upstream, 1)
    unsampled = TRACEPARENT[:-2] + b"00"

    await call(ctx, headers=[(b"traceparent", unsampled)])

    assert spans.get_finished_spans() == ()
    sent = upstream.calls[0].header(b"traceparent")
    assert sent is not None and sent != unsampled
    assert sent.startswith(f"00-{TRACE_ID:032x}-".encode()) and sent.endswith(b"-00")


async def test_control_plane_routes_make_no_spans(autojump_clock: MockClock, spans: InMemorySpanExporter) -> None:
    ctx = gateway(FakeUpstream(ok), 1)

    await call(ctx, "/health", None, method="GET")
    await call(ctx, "/workers", None, method="GET")

    assert spans.get_finished_spans() == ()


# -- tracing off ------------------------------------------------------------------------------------


async def test_off_the_client_traceparent_goes_to_the_worker_unchanged_and_no_span_is_made(
    autojump_clock: MockClock, spans: InMemorySpanExporter
) -> None:
    tracing.install(None)
    upstream = FakeUpstream(ok)
    ctx = gateway(upstream, 2, policy="cache_aware")

    client = await call(ctx, headers=[(b"traceparent", TRACEPARENT), (b"tracestate", b"vendor=1")])

    assert client.status == 200 and not tracing.ENABLED
    assert upstream.calls[0].header(b"traceparent") == TRACEPARENT
    assert upstream.calls[0].header(b"tracestate") == b"vendor=1"
    assert spans.get_finished_spans() == ()


# -- storage ------------------------------------------------------------------------------------------


class FailingHistory(MemoryHistory):
    def get_response(self, tenant: str, response_id: str) -> Any:
        raise StorageError("disk on fire")


async def test_history_calls_are_spans_inside_a_request_only(spans: InMemorySpanExporter) -> None:
    history = History(MemoryHistory(time.time), 1.0)
    history.ready = True
    tracer = TracerProvider().get_tracer("test")  # any parent will do: the span joins the current trace

    await history.run(history.backend.get_response, "t", "resp_1")  # outside a request: nothing
    assert spans.get_finished_spans() == ()

    with tracer.start_as_current_span("request") as parent:
        await history.run(history.backend.get_response, "t", "resp_1")
    storage = only(spans, "smg.storage")
    assert parent_of(storage) == parent.get_span_context().span_id
    assert storage.attributes == {
        "smg.storage.operation": "get_response",
        "smg.storage.backend": "memory",
        "smg.storage.result": "ok",
    }
    assert storage.status.status_code is StatusCode.UNSET

    failing = History(FailingHistory(time.time), 1.0)
    failing.ready = True
    spans.clear()
    with tracer.start_as_current_span("request"), pytest.raises(StorageError):
        await failing.run(failing.backend.get_response, "t", "resp_1")
    storage = only(spans, "smg.storage")
    assert storage.status.status_code is StatusCode.ERROR and storage.status.description == "storage_error"


async def test_a_history_route_has_its_storage_call_under_its_server_span(
    autojump_clock: MockClock, spans: InMemorySpanExporter
) -> None:
    ctx = gateway(FakeUpstream(ok), 1)
    ctx.history = History(MemoryHistory(time.time), 1.0)
    ctx.history.ready = True

    client = await call(ctx, "/v1/responses/resp_missing", None, method="GET")

    assert client.status == 404
    server = only(spans, "GET /v1/responses/{response_id}")
    storage = only(spans, "smg.storage")
    assert server.context is not None and parent_of(storage) == server.context.span_id
    assert storage.attributes is not None and storage.attributes["smg.storage.operation"] == "get_response"


# -- configuration and the collector ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("localhost:4317", ("localhost:4317", True)),
        ("10.0.0.5:4317", ("10.0.0.5:4317", True)),
        ("[::1]:4317", ("[::1]:4317", True)),
        ("http://otel-collector:4317", ("otel-collector:4317", True)),
        ("https://otel.example.com:443/", ("otel.example.com:443", False)),
    ],
)
def test_endpoints_the_exporter_is_given(endpoint: str, expected: tuple[str, bool]) -> None:
    assert tracing.parse_endpoint(endpoint) == expected


@pytest.mark.parametrize("endpoint", ["localhost", ":4317", "host:port", "host:0", "host:70000", "grpc://h:4317", "h:4317/v1"])
def test_an_endpoint_that_is_not_host_port_is_refused_naming_the_flag_with_enable_trace(endpoint: str) -> None:
    with pytest.raises(ConfigError, match=r"^--otlp-traces-endpoint: .* is not HOST:PORT"):
        GatewayConfig(enable_trace=True, otlp_traces_endpoint=endpoint)
    assert GatewayConfig(otlp_traces_endpoint=endpoint).otlp_traces_endpoint == endpoint  # unused without it


def test_export_failures_are_logged_once_a_minute_not_per_batch() -> None:
    tracing.quiet_export_failures()
    tracing.quiet_export_failures()  # idempotent
    logger = logging.getLogger(tracing.EXPORT_LOGGERS[0])
    [quiet] = logger.filters

    def record(msg: str) -> logging.LogRecord:
        return logger.makeRecord(logger.name, logging.ERROR, __file__, 1, msg, ("x",), None)

    first = quiet.filter(record("Failed to export %s"))
    again = quiet.filter(record("Failed to export %s"))
    other = quiet.filter(record("Transient error %s"))
    assert (first, again, other) == (True, False, True)


async def test_start_describes_the_gateway_and_stop_turns_tracing_off(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="smg.tracing"):
        tracing.start("http://127.0.0.1:4317", node="node-a")
    try:
        assert tracing.ENABLED
        assert "spans go to the OTLP/gRPC collector at 127.0.0.1:4317 (plain)" in caplog.text
        provider = tracing._provider
        assert provider is not None
        resource = provider.resource.attributes
        assert resource["service.name"] == "smg" and resource["service.version"] == smg.__version__
        assert resource["service.instance.id"] == "node-a"
    finally:
        await tracing.stop()  # nothing queued: no export is attempted
    assert not tracing.ENABLED and tracing._provider is None


async def test_the_responses_api_inner_chat_completion_nests_under_its_request(
    autojump_clock: MockClock, spans: InMemorySpanExporter
) -> None:
    upstream = FakeUpstream(ok)
    ctx = gateway(upstream, 1)

    client = await call(ctx, "/v1/responses", {"model": MODEL, "input": "hello", "store": False})

    assert client.status == 200, client.body_bytes
    server, attempt = only(spans, "POST /v1/responses"), only(spans, "smg.attempt")
    assert server.context is not None and parent_of(attempt) == server.context.span_id
    assert upstream.calls[0].header(b"traceparent") is not None


async def test_background_work_runs_outside_the_trace_of_the_request_that_started_it(
    spans: InMemorySpanExporter,
) -> None:
    """trio hands a new task its spawner's context: a background response would otherwise make its
    spans under a request span that ended when the request answered."""
    from opentelemetry import trace

    from smg.background import Background

    background = Background(1)
    inside: list[bool] = []

    async def work(scope: trio.CancelScope) -> None:
        inside.append(tracing.in_request())

    async with trio.open_nursery() as nursery:
        await nursery.start(background.run)
        request = trace.NonRecordingSpan(trace.SpanContext(TRACE_ID, CLIENT_SPAN, is_remote=False))
        with trace.use_span(request):  # the request's span, current while it starts the work
            assert tracing.in_request()
            assert background.claim("resp_1")
            background.start("resp_1", work)
        while not inside:
            await trio.sleep(0)
        nursery.cancel_scope.cancel()
    assert inside == [False]
