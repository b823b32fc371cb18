"""`--enable-trace` end to end: a real gateway exporting over OTLP/gRPC to a collector the test runs.

The collector is a grpcio server on 127.0.0.1 implementing OTLP's `TraceService` (from the
opentelemetry-proto package) that keeps every `ExportTraceServiceRequest`. Spans are batched:
the gateway's `BatchSpanProcessor` reads the SDK's `OTEL_BSP_SCHEDULE_DELAY` (set small here
for the process under test), and one test leaves the 5 s default to show the flush at SIGTERM.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.helpers import Proc, start_gateway, wait_until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
MODEL = "sim-model"  # what `start_sim` workers serve
SERVER_SPAN = "POST /v1/chat/completions"


@dataclass
class Received:
    span: Span
    resource: dict[str, Any]

    @property
    def attributes(self) -> dict[str, Any]:
        return attributes(self.span.attributes)


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps what it is sent."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[Received]:
        with self.lock:
            requests = list(self.requests)
        return [
            Received(span, attributes(resource_spans.resource.attributes))
            for request in requests
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]

    def named(self, name: str) -> list[Received]:
        return [received for received in self.spans() if received.span.name == name]


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(grace=None)


def traced_gateway(sim: Proc, endpoint: str, *flags: str) -> Proc:
    return start_gateway(sim.urls, "--policy", "round_robin", "--enable-trace", "--otlp-traces-endpoint", endpoint, *flags)


def chat(gateway: Proc, **extra: Any) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3, **extra}
    headers = {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01", "tracestate": "vendor=1"}
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response


def stop_gracefully(gateway: Proc, within: float = 15.0) -> float:
    """SIGTERM; how long the gateway took to exit."""
    began = time.monotonic()
    gateway.signal(signal.SIGTERM)
    gateway.popen.wait(timeout=within)
    return time.monotonic() - began


def test_a_request_reaches_the_collector_as_one_trace_continuing_the_client(
    sim: Proc, collector: tuple[Collector, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    received, port = collector
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # ms, read by the gateway's SDK
    gateway = traced_gateway(sim, f"127.0.0.1:{port}")
    try:
        assert f"tracing: spans go to the OTLP/gRPC collector at 127.0.0.1:{port} (plain)" in gateway.log()
        answer = chat(gateway)
        stream = chat(gateway, stream=True)
        wait_until(lambda: len(received.named(SERVER_SPAN)) == 2 and len(received.named("smg.attempt")) == 2, "spans exported")
    finally:
        gateway.stop()

    plain, streamed = sorted(received.named(SERVER_SPAN), key=lambda r: r.span.start_time_unix_nano)
    attempts = {r.span.parent_span_id: r for r in received.named("smg.attempt")}
    routes = {r.span.parent_span_id: r for r in received.named("smg.route")}
    for server, response in ((plain, answer), (streamed, stream)):
        # the client's trace, continued from its span
        assert server.span.trace_id.hex() == TRACE_ID
        assert server.span.parent_span_id.hex() == CLIENT_SPAN
        assert server.span.kind == Span.SPAN_KIND_SERVER
        assert server.resource["service.name"] == "smg" and "service.version" in server.resource
        worker = response.headers["x-smg-routed-worker-id"]
        assert server.attributes["gen_ai.request.model"] == MODEL
        assert server.attributes["smg.worker"] == worker
        assert server.attributes["http.response.status_code"] == 200
        assert server.attributes["smg.request_id"] == response.headers["x-request-id"]
        # its children: the routing decision and the attempt, in the same trace
        route, attempt = routes[server.span.span_id], attempts[server.span.span_id]
        assert route.span.trace_id == attempt.span.trace_id == server.span.trace_id
        assert route.attributes["smg.policy"] == "round_robin" and route.attributes["smg.worker"] == worker
        assert attempt.span.kind == Span.SPAN_KIND_CLIENT
        assert attempt.attributes["smg.worker"] == worker and attempt.attributes["smg.attempt"] == 1
    assert streamed.attributes["smg.stream"] is True and streamed.attributes["smg.ttft_ms"] > 0
    assert [event.name for event in streamed.span.events] == ["first_token"]


def test_sigterm_flushes_the_spans_still_batched(
    sim: Proc, collector: tuple[Collector, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    received, port = collector
    monkeypatch.delenv("OTEL_BSP_SCHEDULE_DELAY", raising=False)  # the SDK's 5 s: nothing leaves before exit
    gateway = traced_gateway(sim, f"http://127.0.0.1:{port}", "--shutdown-grace-period-secs", "0.2")
    try:
        chat(gateway)
        assert received.spans() == []
        stop_gracefully(gateway)
    finally:
        gateway.stop()
    [server] = received.named(SERVER_SPAN)
    assert server.span.trace_id.hex() == TRACE_ID
    assert {r.span.name for r in received.spans()} == {SERVER_SPAN, "smg.route", "smg.attempt"}


def test_an_unreachable_collector_fails_no_request_and_does_not_hold_the_exit(sim: Proc, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # the exporter tries, and fails, all along
    gateway = traced_gateway(sim, f"127.0.0.1:{port}", "--shutdown-grace-period-secs", "0.2")
    try:
        for _ in range(20):
            chat(gateway)  # each answered while the exporter keeps failing
        stop_gracefully(gateway)  # exits within its deadline: the flush gives up (FLUSH_SECS)
        log = gateway.log()
    finally:
        gateway.stop()
    # export failures are reported, but not once per batch (one of each kind a minute)
    failures = [line for line in log.splitlines() if "opentelemetry" in line and ("export" in line.lower())]
    assert len(failures) <= 4, "\n".join(failures)
