"""The attempt loop (`smg/dataplane/attempts.py`) against a scripted upstream, on trio's mock clock.

Retries, backoff, first-byte, stall and request deadlines, the circuit breaker and the client
leaving are all timing logic; here they run in virtual time (`autojump_clock`), so every delay
is exact and a test of minutes of worker silence takes milliseconds. The end-to-end suites
cover the same behaviours through real sockets; these pin the details.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from smg.context import GatewayContext
from smg.dataplane import attempts
from smg.dataplane.attempts import choose_worker, proxy
from smg.dataplane.routes import ROUTES
from smg.http.errors import GatewayError
from smg.http.exchange import Exchange
from smg.routing.policies import RequestInfo
from smg.upstream import UpstreamConnectError, UpstreamProtocolError, UpstreamProtocolViolation
from smg.workers.breaker import BreakerState
from smg.workers.health import HealthState
from smg.workers.registry import Worker
from tests.fakes import (
    MODEL,
    FakeClient,
    FakeUpstream,
    Handler,
    Reply,
    UpstreamCall,
    add_ready_worker,
    exchange,
    gateway,
    hang,
    json_reply,
    sse_reply,
    worker_url,
)

CHAT = ROUTES["/v1/chat/completions"]
REQUEST: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
A, B, C = worker_url(0), worker_url(1), worker_url(2)
OK = {"id": "chatcmpl-1", "object": "chat.completion"}


async def ask(
    ctx: GatewayContext,
    client: FakeClient | None = None,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes | None = None,
) -> tuple[FakeClient, Exchange]:
    """One chat completion through `proxy`, as `dispatch` hands it over."""
    client = client or FakeClient()
    ex = exchange(client, headers=headers or [])
    await proxy(ctx, ex, CHAT, REQUEST, body if body is not None else json.dumps(REQUEST).encode())
    return client, ex


def by_worker(**replies: Reply | Handler) -> Handler:
    """A handler answering per worker: keys `a`, `b`, `c` are `worker_url(0..2)`."""
    urls = {"a": A, "b": B, "c": C}
    table = {urls[key]: reply for key, reply in replies.items()}

    async def handler(call: UpstreamCall) -> Reply:
        reply = table[call.worker_url]
        if isinstance(reply, Reply):
            return reply
        result = reply(call)
        return result if isinstance(result, Reply) else await result

    return handler


def raising(error: Exception) -> Handler:
    def handler(call: UpstreamCall) -> Reply:
        raise error

    return handler


def workers(ctx: GatewayContext) -> list[Worker]:
    return list(ctx.registry)


def state(worker: Worker) -> BreakerState:
    """A call, so that mypy does not narrow the state across the awaits that change it."""
    return worker.breaker.state


def sample(ctx: GatewayContext, name: str, **labels: str) -> float | None:
    return ctx.metrics.registry.get_sample_value(name, labels)


def error_of(client: FakeClient) -> dict[str, Any]:
    error: dict[str, Any] = client.json()["error"]
    return error


def sse_error(chunk: bytes) -> dict[str, Any]:
    """The `{"error": ...}` of a final `data:` event, which must parse on its own."""
    assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n"), chunk
    error: dict[str, Any] = json.loads(chunk[len(b"data: ") : -2])["error"]
    return error


# -- retries ---------------------------------------------------------------------------------------


async def test_a_retryable_status_moves_to_another_worker(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(by_worker(a=json_reply(503, {"busy": True}), b=json_reply(200, OK)))
    ctx = gateway(upstream, 2)
    a, b = workers(ctx)

    client, ex = await ask(ctx)

    assert upstream.urls == [A, B]
    assert client.status == 200 and client.json() == OK
    assert client.headers[b"x-smg-routed-worker-id"] == B.encode()  # the worker URL, as the README says
    assert client.headers[b"x-request-id"] == b"req-test"
    assert ex.worker is b and ex.error_code is None
    assert sample(ctx, "smg_worker_retries_total", worker=A) == 1
    assert (a.breaker.failures, b.breaker.failures) == (1, 0)
    assert a.in_flight == b.in_flight == 0


async def test_backoff_between_attempts_follows_the_retry_schedule(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(lambda call: json_reply(503, {}))
    ctx = gateway(
        upstream,
        3,
        retry_max_retries=5,
        retry_initial_backoff_ms=100,
        retry_backoff_multiplier=2,
        retry_max_backoff_ms=300,
        retry_jitter_factor=0,
    )
    start = trio.current_time()

    await ask(ctx)

    started = [call.started_at - start for call in upstream.calls]
    assert started == pytest.approx([0.0, 0.1, 0.3, 0.6, 0.9])  # 100 ms, doubled, capped at 300 ms
    assert trio.current_time() - start == pytest.approx(0.9)  # no pause after the last attempt


@pytest.mark.parametrize(("unit_random", "factor"), [(0.0, 0.5), (0.75, 1.25)])
async def test_backoff_jitter_scales_each_pause(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch, unit_random: float, factor: float
) -> None:
    monkeypatch.setattr(attempts.random, "random", lambda: unit_random)
    upstream = FakeUpstream(lambda call: json_reply(502, {}))
    ctx = gateway(
        upstream, 2, retry_max_retries=3, retry_initial_backoff_ms=400, retry_backoff_multiplier=1.5, retry_jitter_factor=0.5
    )
    start = trio.current_time()

    await ask(ctx)

    started = [call.started_at - start for call in upstream.calls]
    assert started == pytest.approx([0.0, 0.4 * factor, 0.4 * factor + 0.6 * factor])


async def test_exhausted_retries_pass_the_last_worker_answer_through(autojump_clock: MockClock) -> None:
    answers = [
        json_reply(500, {"n": 1}),
        json_reply(502, {"n": 2}),
        Reply(429, [(b"content-type", b"text/plain")], b"slow down"),
    ]
    upstream = FakeUpstream(lambda call: answers[len(upstream.calls) - 1])
    ctx = gateway(upstream, 2, retry_max_retries=3, retry_jitter_factor=0)

    client, ex = await ask(ctx)

    assert upstream.urls == [A, B, A]  # untried workers first, then round robin over all again
    assert client.status == 429 and client.body_bytes == b"slow down"
    assert client.headers[b"content-type"] == b"text/plain"
    assert client.headers[b"x-smg-routed-worker-id"] == A.encode()
    assert b"x-smg-error-code" not in client.headers and ex.error_code is None  # the worker's answer, not the gateway's
    assert sample(ctx, "smg_worker_retries_exhausted_total", route="chat") == 1
    assert sample(ctx, "smg_worker_retries_total", worker=A) == 1  # the third attempt was not retried
    assert sample(ctx, "smg_worker_retries_total", worker=B) == 1


@pytest.mark.parametrize("status", [400, 404, 422, 501])
async def test_a_final_worker_answer_is_not_retried(autojump_clock: MockClock, status: int) -> None:
    upstream = FakeUpstream(lambda call: json_reply(status, {"error": {"message": "no"}}))
    ctx = gateway(upstream, 2)
    a, _ = workers(ctx)

    client, _ = await ask(ctx)

    assert upstream.urls == [A]
    assert client.status == status and client.json() == {"error": {"message": "no"}}
    assert a.breaker.failures == 0  # a client error says nothing against the worker


async def test_a_connect_error_moves_to_another_worker(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(by_worker(a=raising(UpstreamConnectError("refused")), b=json_reply(200, OK)))
    ctx = gateway(upstream, 2)
    a, _ = workers(ctx)

    client, _ = await ask(ctx)

    assert upstream.urls == [A, B]
    assert client.status == 200 and client.headers[b"x-smg-routed-worker-id"] == B.encode()
    assert a.breaker.failures == 1


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UpstreamConnectError("connection refused"), "upstream_connect_error"),
        (UpstreamProtocolError("worker failed before responding"), "upstream_error"),
        (UpstreamProtocolViolation("worker broke HTTP/1.1"), "upstream_protocol_error"),
    ],
)
async def test_failures_before_any_answer_end_in_a_502_with_their_code(
    autojump_clock: MockClock, error: Exception, code: str
) -> None:
    upstream = FakeUpstream(raising(error))
    ctx = gateway(upstream, 2, retry_max_retries=3)

    client, ex = await ask(ctx)

    assert upstream.urls == [A, B, A]
    assert client.status == 502 and client.headers[b"x-smg-error-code"] == code.encode()
    body = error_of(client)
    assert body["code"] == code and body["type"] == "server_error"
    assert A in body["message"]  # the last attempt's worker
    assert ex.error_code == code


async def test_the_body_goes_unchanged_with_only_allow_listed_headers(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(lambda call: json_reply(200, OK))
    ctx = gateway(upstream, 1)
    body = b'{"model":  "test-model", "messages": [] , "x": 1}'  # odd spacing: not re-serialised
    client_headers = [
        (b"authorization", b"Bearer client-key"),
        (b"cookie", b"session=1"),
        (b"x-correlation-id", b"corr-1"),
        (b"traceparent", b"00-abc-def-01"),
        (b"x-smg-routing-key", b"user-7"),
        (b"x-internal", b"secret"),
    ]

    await ask(ctx, headers=client_headers, body=body)

    (call,) = upstream.calls
    assert (call.method, call.target, call.body) == (b"POST", b"/v1/chat/completions", body)
    assert call.headers == [
        (b"content-type", b"application/json"),
        (b"x-request-id", b"req-test"),
        (b"authorization", b"Bearer client-key"),  # the gateway checks no keys: the client's goes on
        (b"x-correlation-id", b"corr-1"),
        (b"traceparent", b"00-abc-def-01"),
        (b"x-smg-routing-key", b"user-7"),
    ]


async def test_a_worker_key_replaces_the_client_authorization(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(lambda call: json_reply(200, OK))
    ctx = gateway(upstream, 0)
    add_ready_worker(ctx, A, models=[MODEL], api_key="worker-key")

    await ask(ctx, headers=[(b"authorization", b"Bearer client-key")])

    assert [value for name, value in upstream.calls[0].headers if name == b"authorization"] == [b"Bearer worker-key"]


# -- worker choice ---------------------------------------------------------------------------------


async def test_choose_worker_prefers_workers_the_request_has_not_tried(autojump_clock: MockClock) -> None:
    ctx = gateway(FakeUpstream(hang), 3)
    a, b, c = workers(ctx)
    info = RequestInfo(model=MODEL)

    assert choose_worker(ctx, info, [a.id, b.id]) is c
    assert choose_worker(ctx, info, [a.id, c.id]) is b
    picks = [choose_worker(ctx, info, [a.id, b.id, c.id]) for _ in range(3)]  # all tried: any of them again
    assert {w.id for w in picks} == {a.id, b.id, c.id}


async def test_no_routable_worker_is_answered_without_an_upstream_call(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(hang)
    ctx = gateway(upstream, 1)
    (a,) = workers(ctx)

    unknown = FakeClient()
    await proxy(ctx, exchange(unknown, model="other-model"), CHAT, REQUEST, b"{}")
    assert unknown.status == 404 and error_of(unknown)["code"] == "model_not_found"

    starting = add_ready_worker(ctx, B, models=[])
    starting.discovered = False  # its models are not known yet: it may serve the model
    unsure = FakeClient()
    await proxy(ctx, exchange(unsure, model="other-model"), CHAT, REQUEST, b"{}")
    assert unsure.status == 503 and error_of(unsure)["message"] == "no available worker for model 'other-model'"

    a.health.reset(HealthState.NOT_READY)
    ctx.registry.refresh()
    down, ex = await ask(ctx)
    assert down.status == 503 and error_of(down)["code"] == "no_available_workers"
    assert ex.worker is None and upstream.calls == []


# -- deadlines -------------------------------------------------------------------------------------


async def test_a_first_byte_timeout_fails_the_attempt_and_moves_on(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(by_worker(a=hang, b=json_reply(200, OK)))
    ctx = gateway(upstream, 2, worker_first_byte_timeout_secs=2, retry_initial_backoff_ms=50, retry_jitter_factor=0)
    a, _ = workers(ctx)
    start = trio.current_time()

    client, _ = await ask(ctx)

    silent, answered = upstream.calls
    assert silent.cancelled and silent.ended_at is not None and silent.ended_at - start == pytest.approx(2.0)
    assert answered.worker_url == B and answered.started_at - start == pytest.approx(2.05)
    assert client.status == 200 and client.headers[b"x-smg-routed-worker-id"] == B.encode()
    assert a.breaker.failures == 1


async def test_every_worker_silent_gives_504_upstream_timeout(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(hang)
    ctx = gateway(upstream, 2, worker_first_byte_timeout_secs=2, retry_max_retries=2, retry_jitter_factor=0)
    start = trio.current_time()

    client, _ = await ask(ctx)

    assert trio.current_time() - start == pytest.approx(2 + 0.05 + 2)
    assert client.status == 504
    error = error_of(client)
    assert error["code"] == "upstream_timeout"
    assert error["message"] == f"worker {B} sent no response headers within 2s"


async def test_the_first_byte_timeout_stops_at_the_response_head(autojump_clock: MockClock) -> None:
    async def slow_body(call: UpstreamCall) -> Reply:
        await trio.sleep(1.5)  # the head, within the 2 s
        return Reply(200, [(b"content-type", b"application/json")], [b'{"slow":', 5.0, b"true}"])

    upstream = FakeUpstream(slow_body)
    ctx = gateway(upstream, 2, worker_first_byte_timeout_secs=2)
    start = trio.current_time()

    client, _ = await ask(ctx)

    assert upstream.urls == [A]
    assert client.status == 200 and client.json() == {"slow": True}
    assert trio.current_time() - start == pytest.approx(6.5)


async def test_the_request_deadline_gives_504_upstream_timeout(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(hang)
    ctx = gateway(upstream, 1, request_timeout_secs=5)
    start = trio.current_time()

    client, ex = await ask(ctx)

    assert trio.current_time() - start == pytest.approx(5)
    assert upstream.calls[0].cancelled
    assert client.status == 504 and error_of(client)["code"] == "upstream_timeout"
    assert error_of(client)["message"] == "no answer within 5s"
    assert ex.error_code == "upstream_timeout"


async def test_the_request_deadline_covers_retries_and_backoff(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(lambda call: json_reply(503, {"busy": True}))
    ctx = gateway(
        upstream,
        2,
        request_timeout_secs=5,
        retry_max_retries=10,
        retry_initial_backoff_ms=2000,
        retry_backoff_multiplier=1,
        retry_jitter_factor=0,
    )
    start = trio.current_time()

    client, _ = await ask(ctx)

    assert [call.started_at - start for call in upstream.calls] == pytest.approx([0, 2, 4])
    assert trio.current_time() - start == pytest.approx(5)
    assert client.status == 504 and error_of(client)["code"] == "upstream_timeout"  # not the workers' 503


# -- streams ---------------------------------------------------------------------------------------


async def test_a_stalled_stream_ends_with_an_error_event(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(lambda call: sse_reply(b"data: 1\n\n", 1.0, b"data: 2\n\n", math.inf))
    ctx = gateway(upstream, 2, stream_stall_timeout_secs=3)
    a, _ = workers(ctx)
    start = trio.current_time()

    client, ex = await ask(ctx)

    assert upstream.urls == [A]  # a started stream is never retried
    assert trio.current_time() - start == pytest.approx(1 + 3)
    assert client.status == 200 and ex.status == 200
    assert client.headers[b"content-type"] == b"text/event-stream"
    assert client.headers[b"cache-control"] == b"no-cache"
    assert client.headers[b"x-smg-routed-worker-id"] == A.encode()
    assert client.chunks[:2] == [b"data: 1\n\n", b"data: 2\n\n"]
    assert len(client.chunks) == 3 and client.complete
    assert sse_error(client.chunks[2]) == {
        "type": "server_error",
        "code": "upstream_stream_stalled",
        "message": f"worker {A} sent nothing for 3s",
        "param": None,
    }
    assert ex.error_code == "upstream_stream_stalled"
    assert a.breaker.failures == 1


async def test_the_stall_deadline_restarts_with_every_piece(autojump_clock: MockClock) -> None:
    pieces = [b"data: %d\n\n" % i for i in range(5)]
    upstream = FakeUpstream(lambda call: sse_reply(*[step for piece in pieces for step in (2.5, piece)]))
    ctx = gateway(upstream, 1, stream_stall_timeout_secs=3)
    (a,) = workers(ctx)

    client, ex = await ask(ctx)

    assert client.chunks == [*pieces, b""] and client.complete  # 12.5 s in all, never 3 s silent
    assert ex.error_code is None and a.breaker.failures == 0


async def test_a_stream_cut_mid_event_drops_the_fragment(autojump_clock: MockClock) -> None:
    cut = UpstreamProtocolError("worker connection broke mid-response: reset")
    upstream = FakeUpstream(lambda call: sse_reply(b"data: a\n\ndata: b", b'\n\ndata: {"par', cut))
    ctx = gateway(upstream, 2)
    a, _ = workers(ctx)

    client, ex = await ask(ctx)

    assert upstream.urls == [A]
    assert client.chunks[:2] == [b"data: a\n\n", b"data: b\n\n"]  # whole events only
    error = sse_error(client.chunks[2])
    assert error["code"] == "upstream_stream_error" and error["message"].startswith(f"worker {A} failed mid-stream: ")
    assert len(client.chunks) == 3 and client.complete
    assert a.breaker.failures == 1 and ex.error_code == "upstream_stream_error"


async def test_a_clean_end_relays_a_trailing_unterminated_event_as_sent(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(lambda call: sse_reply(b"data: a\n\nda", b"ta: b\n\n", b"data: [DONE]"))
    ctx = gateway(upstream, 1)

    client, ex = await ask(ctx)

    assert client.chunks == [b"data: a\n\n", b"data: b\n\n", b"data: [DONE]", b""]
    assert [m.get("more_body") for m in client.messages[1:]] == [True, True, True, False]
    assert ex.error_code is None


async def test_a_messages_api_stream_ends_with_its_own_error_event(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(lambda call: sse_reply(b"event: ping\ndata: {}\n\n", math.inf))
    ctx = gateway(upstream, 1, stream_stall_timeout_secs=3)
    client = FakeClient()
    ex = exchange(client)
    ex.error_shape = lambda error: {"type": "error", "error": {"type": "api_error", "message": error.message}}

    await proxy(ctx, ex, CHAT, REQUEST, b"{}")

    assert client.chunks[-1] == (
        b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"worker '
        + A.encode()
        + b' sent nothing for 3s"}}\n\n'
    )
    assert client.complete and ex.error_code == "upstream_stream_stalled"


async def test_the_request_deadline_ends_a_started_stream_with_an_error_event(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(lambda call: sse_reply(*[step for _ in range(100) for step in (b"data: x\n\n", 1.0)]))
    ctx = gateway(upstream, 1, request_timeout_secs=5.5)
    start = trio.current_time()

    client, _ = await ask(ctx)

    assert trio.current_time() - start == pytest.approx(5.5)
    assert client.chunks[:-1] == [b"data: x\n\n"] * 6
    assert sse_error(client.chunks[-1])["code"] == "upstream_timeout" and client.complete


@pytest.mark.parametrize(
    ("reply", "tokens"),
    [
        (json_reply(200, {**OK, "usage": {"prompt_tokens": 3, "completion_tokens": 11}}), 11),
        (sse_reply(b'data: {"choices":[]}\n\n', b'data: {"choices":[],"usage":{"completion_tokens":7}}\n\ndata: [DONE]\n\n'), 7),
    ],
)
async def test_completion_tokens_are_read_when_asked(autojump_clock: MockClock, reply: Reply, tokens: int) -> None:
    ctx = gateway(FakeUpstream(lambda call: reply), 1)
    client = FakeClient()
    ex = exchange(client)
    ex.want_usage = True

    await proxy(ctx, ex, CHAT, REQUEST, b"{}")

    assert client.status == 200 and ex.completion_tokens == tokens


# -- circuit breaker -------------------------------------------------------------------------------


async def test_an_open_breaker_hides_its_worker(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(by_worker(a=json_reply(500, {}), b=json_reply(200, OK)))
    ctx = gateway(upstream, 2, cb_failure_threshold=2, retry_max_retries=3)
    a, b = workers(ctx)

    await ask(ctx)
    assert state(a) is BreakerState.CLOSED and a.breaker.failures == 1
    await ask(ctx)  # A's second consecutive failure opens it
    assert state(a) is BreakerState.OPEN
    for _ in range(3):
        client, _ = await ask(ctx)
        assert client.status == 200

    assert upstream.urls == [A, B, A, B, B, B, B]
    assert sample(ctx, "smg_worker_cb_state", worker=A) == 1
    assert sample(ctx, "smg_worker_cb_transitions_total", **{"worker": A, "from": "closed", "to": "open"}) == 1
    assert state(b) is BreakerState.CLOSED


async def test_every_breaker_open_gives_503_no_available_workers(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(lambda call: json_reply(500, {"n": len(upstream.calls)}))
    ctx = gateway(upstream, 1, cb_failure_threshold=2, retry_max_retries=1)

    first, _ = await ask(ctx)
    second, _ = await ask(ctx)
    refused, ex = await ask(ctx)

    assert (first.status, second.status) == (500, 500)  # one attempt each: the answers pass through
    assert len(upstream.calls) == 2
    assert refused.status == 503 and refused.headers[b"x-smg-error-code"] == b"no_available_workers"
    assert error_of(refused)["message"] == "every worker's circuit breaker is open; try again shortly"
    assert ex.worker is None


async def test_an_open_breaker_half_opens_after_its_timeout_and_closes_after_enough_successes(
    autojump_clock: MockClock,
) -> None:
    upstream = FakeUpstream(lambda call: json_reply(500, {}) if len(upstream.calls) == 1 else json_reply(200, OK))
    ctx = gateway(upstream, 1, cb_failure_threshold=1, cb_success_threshold=2, cb_timeout_duration_secs=30, retry_max_retries=1)
    (a,) = workers(ctx)
    start = trio.current_time()

    await ask(ctx)
    assert state(a) is BreakerState.OPEN

    await trio.sleep_until(start + 29.9)
    refused, _ = await ask(ctx)
    assert refused.status == 503 and len(upstream.calls) == 1

    await trio.sleep_until(start + 30)
    probe, _ = await ask(ctx)
    assert probe.status == 200 and state(a) is BreakerState.HALF_OPEN
    assert sample(ctx, "smg_worker_cb_state", worker=A) == 2

    closing, _ = await ask(ctx)
    assert closing.status == 200 and state(a) is BreakerState.CLOSED
    assert sample(ctx, "smg_worker_cb_state", worker=A) == 0
    assert len(upstream.calls) == 3


async def test_a_failed_half_open_probe_opens_the_breaker_for_another_timeout(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(lambda call: json_reply(502, {}))
    ctx = gateway(upstream, 1, cb_failure_threshold=1, cb_timeout_duration_secs=30, retry_max_retries=1)
    (a,) = workers(ctx)
    start = trio.current_time()

    await ask(ctx)
    await trio.sleep_until(start + 30)
    await ask(ctx)  # the probe fails
    assert state(a) is BreakerState.OPEN

    await trio.sleep_until(start + 59.9)
    refused, _ = await ask(ctx)
    await trio.sleep_until(start + 60)
    await ask(ctx)
    assert refused.status == 503
    assert [call.started_at - start for call in upstream.calls] == pytest.approx([0, 30, 60])


async def test_a_half_open_worker_takes_one_probe_at_a_time(autojump_clock: MockClock) -> None:
    async def handler(call: UpstreamCall) -> Reply:
        if len(upstream.calls) == 1:
            return json_reply(500, {})
        await trio.sleep(2)
        return json_reply(200, OK)

    upstream = FakeUpstream(handler)
    ctx = gateway(upstream, 1, cb_failure_threshold=1, cb_success_threshold=1, cb_timeout_duration_secs=10, retry_max_retries=1)
    (a,) = workers(ctx)
    await ask(ctx)
    await trio.sleep(10)

    results: dict[str, FakeClient] = {}

    async def request(name: str) -> None:
        results[name], _ = await ask(ctx)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request, "probe")
        await trio.sleep(1)  # the probe is in flight
        await request("second")
    await request("after")

    assert results["second"].status == 503 and error_of(results["second"])["code"] == "no_available_workers"
    assert results["probe"].status == 200 and results["after"].status == 200
    assert len(upstream.calls) == 3 and state(a) is BreakerState.CLOSED


async def test_choose_worker_skips_open_breakers(autojump_clock: MockClock) -> None:
    ctx = gateway(FakeUpstream(hang), 2, cb_failure_threshold=1, cb_timeout_duration_secs=5)
    a, b = workers(ctx)
    a.breaker.record_failure(trio.current_time())
    info = RequestInfo(model=MODEL)

    assert {choose_worker(ctx, info).id for _ in range(4)} == {b.id}
    b.breaker.record_failure(trio.current_time())
    with pytest.raises(GatewayError) as refused:
        choose_worker(ctx, info)
    assert (refused.value.status, refused.value.code) == (503, "no_available_workers")
    await trio.sleep(5)
    assert {choose_worker(ctx, info).id for _ in range(4)} == {a.id, b.id}


# -- the client leaving ----------------------------------------------------------------------------


async def test_a_client_leaving_cancels_the_upstream_call_and_spares_the_breaker(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(hang)
    ctx = gateway(upstream, 2, cb_failure_threshold=1)
    a, _ = workers(ctx)
    start = trio.current_time()

    client, ex = await ask(ctx, FakeClient(disconnect_at=start + 1))

    assert trio.current_time() - start == pytest.approx(1)
    (call,) = upstream.calls  # not retried elsewhere
    assert call.cancelled and call.ended_at == pytest.approx(start + 1)
    assert ex.status == 499 and client.messages == []
    assert state(a) is BreakerState.CLOSED and a.breaker.failures == 0
    assert a.in_flight == 0


async def test_a_client_leaving_mid_stream_stops_the_relay(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(lambda call: sse_reply(b"data: 1\n\n", math.inf))
    ctx = gateway(upstream, 1)
    (a,) = workers(ctx)
    start = trio.current_time()

    client, ex = await ask(ctx, FakeClient(disconnect_at=start + 2))

    assert upstream.calls[0].cancelled
    assert client.status == 200 and client.chunks == [b"data: 1\n\n"] and not client.complete
    assert ex.status == 499 and a.breaker.failures == 0


async def test_a_client_leaving_during_a_half_open_probe_frees_the_probe(autojump_clock: MockClock) -> None:
    async def handler(call: UpstreamCall) -> Reply:
        if len(upstream.calls) == 1:
            return json_reply(500, {})
        if len(upstream.calls) == 2:
            await trio.sleep_forever()
        return json_reply(200, OK)

    upstream = FakeUpstream(handler)
    ctx = gateway(upstream, 1, cb_failure_threshold=1, cb_timeout_duration_secs=10, retry_max_retries=1)
    (a,) = workers(ctx)
    start = trio.current_time()
    await ask(ctx)
    await trio.sleep_until(start + 10)
    _, probe = await ask(ctx, FakeClient(disconnect_at=start + 11))
    assert probe.status == 499

    await trio.sleep_until(start + 1000)
    later, _ = await ask(ctx)

    # the abandoned probe freed its slot: the breaker, still half-open, admits the next probe
    assert later.status == 200 and len(upstream.calls) == 3
    assert state(a) is BreakerState.HALF_OPEN  # one success of the three it needs to close
