"""A stream broken mid-event, end to end: whatever the worker cut, every event a client receives
parses by itself, the official clients raise their API errors, and a broken answer is never
stored as completed. Also: the background-responses limit under concurrent requests, and the
back-pressure of the gateway's inner chat call."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anthropic
import httpx
import openai
import pytest
import trio
import trio.testing

from smg.apis import chat
from smg.background import Background
from smg.http.exchange import Exchange
from tests.helpers import Proc, start_gateway, start_sim, wait_until

KEY = "gateway-key"
CHAT = [{"role": "user", "content": "tell me something"}]


# -- a worker that breaks in ways the simulated one does not --------------------------------------


class _FakeWorker(BaseHTTPRequestHandler):
    """Serves `fake-model`. A chat asking "stop early" streams two chunks and closes cleanly,
    with no finish_reason and no [DONE]; any other non-streaming chat gets half a JSON body."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._answer(200, b"OK", "text/plain")
        elif self.path == "/v1/models":
            model = {"id": "fake-model", "object": "model", "owned_by": "vllm", "created": 0}
            self._answer(200, json.dumps({"object": "list", "data": [model]}).encode())
        else:
            self._answer(404, b'{"error":{"message":"no such route"}}')

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.close_connection = True
        if request.get("stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("connection", "close")  # the body ends when the connection does
            self.end_headers()
            for text in ("", "Hel"):
                chunk = {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            return
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "400")
        self.end_headers()
        self.wfile.write(b'{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assis')


@pytest.fixture(scope="module")
def fake_worker() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeWorker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def workers() -> Iterator[tuple[Proc, Proc]]:
    chat = start_sim(1, "--tpot-ms", "0")
    native = start_sim(1, "--tpot-ms", "0", "--owned-by", "anthropic", "--model", "claude-sim")
    yield chat, native
    chat.stop()
    native.stop()


@pytest.fixture(scope="module")
def gateway(workers: tuple[Proc, Proc], fake_worker: str) -> Iterator[Proc]:
    chat, native = workers
    proc = start_gateway(
        [*chat.urls, *native.urls, fake_worker], "--api-key", KEY, "--max-background-responses", "2", "--disable-circuit-breaker"
    )
    yield proc
    proc.stop()


@contextmanager
def dying(worker: Proc) -> Iterator[None]:
    """Every stream of `worker` breaks off half-way through an event in its middle."""
    httpx.post(worker.url + "/sim/config", json={"die_mid_stream_rate": 1.0}).raise_for_status()
    try:
        yield
    finally:
        httpx.post(worker.url + "/sim/config", json={"die_mid_stream_rate": 0.0}).raise_for_status()


def openai_client(gateway: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)


def anthropic_client(gateway: Proc) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0)


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """(event, data) of each event of an SSE body."""
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        lines = block.split("\n")
        kind = next((line[7:] for line in lines if line.startswith("event: ")), None)
        out.append((kind, "\n".join(line[6:] for line in lines if line.startswith("data: "))))
    return out


# -- chat completions: relayed, whole events only -------------------------------------------------


def test_a_chat_stream_cut_mid_event_ends_with_an_error_event_that_parses(gateway: Proc, workers: tuple[Proc, Proc]) -> None:
    chat, _ = workers
    body = {"model": "sim-model", "messages": CHAT, "stream": True, "max_tokens": 8}
    with dying(chat):
        response = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"})
        with pytest.raises(openai.APIError) as raised:  # the API error, not a JSON decode error
            for _ in openai_client(gateway).chat.completions.create(model="sim-model", messages=CHAT, stream=True):  # type: ignore[arg-type]
                pass
    assert response.status_code == 200 and response.text.endswith("\n\n")
    datas = [json.loads(data) for _, data in sse_events(response.text)]  # each one parses by itself
    assert datas[-1]["error"]["code"] == "upstream_stream_error"
    assert [d["choices"][0]["delta"].get("content") for d in datas[1:-1]] and len(datas) < 8
    assert type(raised.value) is openai.APIError and raised.value.code == "upstream_stream_error"


def test_an_sse_event_over_the_cap_ends_the_stream_counted_and_logged_once(workers: tuple[Proc, Proc]) -> None:
    chat, _ = workers
    gateway = start_gateway(chat.urls, "--max-sse-event-size", "100")  # every chunk the worker sends is longer
    try:
        with pytest.raises(openai.APIError) as raised:
            for _ in openai_client(gateway).chat.completions.create(model="sim-model", messages=CHAT, stream=True):  # type: ignore[arg-type]
                pass
        assert raised.value.code == "upstream_protocol_error"
        assert "--max-sse-event-size" in raised.value.message
        assert gateway.metrics_url is not None
        metrics = httpx.get(gateway.metrics_url + "/metrics").text
        assert 'smg_router_request_errors_total{error_code="upstream_protocol_error",route="/v1/chat/completions"} 1.0' in metrics
        wait_until(lambda: "upstream_protocol_error" in gateway.log(), "the access line")  # lines are flushed in batches
        assert sum("upstream_protocol_error" in line for line in gateway.log().splitlines()) == 1
    finally:
        gateway.stop()


# -- Responses: failed or incomplete, stored as such ----------------------------------------------


def test_a_responses_stream_cut_mid_event_is_failed_and_stored_failed(gateway: Proc, workers: tuple[Proc, Proc]) -> None:
    chat, _ = workers
    api = openai_client(gateway)
    with dying(chat):
        events = list(api.responses.create(model="sim-model", input="this will break", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.failed"
    assert "response.completed" not in {e.type for e in events}
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "upstream_stream_error" and failed.error.message  # type: ignore[comparison-overlap]
    stored = api.responses.retrieve(failed.id)
    assert stored.status == "failed" and stored.error is not None and stored.error.code == "upstream_stream_error"  # type: ignore[comparison-overlap]


def test_a_responses_stream_that_stops_without_a_finish_is_failed(gateway: Proc) -> None:
    api = openai_client(gateway)
    events = list(api.responses.create(model="fake-model", input="stop early", stream=True))
    assert events[-1].type == "response.failed"
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.error is not None and failed.error.code == "upstream_stream_incomplete"  # type: ignore[comparison-overlap]
    assert api.responses.retrieve(failed.id).status == "failed"


def test_a_broken_responses_answer_is_a_502_in_openais_shape(gateway: Proc) -> None:
    with pytest.raises(openai.InternalServerError) as raised:
        openai_client(gateway).responses.create(model="fake-model", input="half a body")
    assert raised.value.status_code == 502 and raised.value.code == "upstream_error"
    assert raised.value.response.headers["x-smg-error-code"] == "upstream_error"


def test_a_broken_background_response_is_stored_failed(gateway: Proc) -> None:
    api = openai_client(gateway)
    queued = api.responses.create(model="fake-model", input="half a body", background=True)
    wait_until(lambda: api.responses.retrieve(queued.id).status not in ("queued", "in_progress"), "background response ended")
    stored = api.responses.retrieve(queued.id)
    assert stored.status == "failed" and stored.error is not None and stored.error.code == "upstream_error"  # type: ignore[comparison-overlap]


def test_a_response_cut_by_max_output_tokens_is_incomplete(gateway: Proc) -> None:
    api = openai_client(gateway)
    answer = api.responses.create(model="sim-model", input="count to ten", max_output_tokens=3)
    assert answer.status == "incomplete" and answer.incomplete_details is not None
    assert answer.incomplete_details.reason == "max_output_tokens" and answer.output_text
    assert api.responses.retrieve(answer.id).status == "incomplete"
    events = list(api.responses.create(model="sim-model", input="count to ten", max_output_tokens=3, stream=True))
    assert events[-1].type == "response.incomplete"
    streamed = events[-1].response  # type: ignore[union-attr]
    assert streamed.incomplete_details is not None and streamed.incomplete_details.reason == "max_output_tokens"
    assert api.responses.retrieve(streamed.id).status == "incomplete"
    whole = api.responses.create(model="sim-model", input="count to ten")  # no limit: the model stopped
    assert whole.status == "completed" and whole.incomplete_details is None


# -- Messages: Anthropic's error event, Anthropic's error body ------------------------------------


def test_a_translated_messages_stream_cut_mid_event_ends_with_an_error_event(gateway: Proc, workers: tuple[Proc, Proc]) -> None:
    chat, _ = workers
    api = anthropic_client(gateway)
    seen: list[str] = []
    with (
        dying(chat),
        pytest.raises(anthropic.APIStatusError) as raised,
        api.messages.stream(model="sim-model", max_tokens=8, messages=[{"role": "user", "content": "x"}]) as stream,
    ):
        seen.extend(event.type for event in stream)
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": raised.value.body["error"]["message"]},
    }  # type: ignore[index]
    assert "mid-stream" in raised.value.body["error"]["message"]  # type: ignore[index]
    assert seen[0] == "message_start" and "message_stop" not in seen


def test_a_translated_messages_stream_without_a_finish_ends_with_an_error_event(gateway: Proc) -> None:
    body = {"model": "fake-model", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "stop early"}]}
    response = httpx.post(gateway.url + "/v1/messages", json=body, headers={"x-api-key": KEY})
    events = sse_events(response.text)
    assert events[0][0] == "message_start" and events[-1][0] == "error"
    assert json.loads(events[-1][1])["error"]["type"] == "api_error"
    assert all(json.loads(data) for _, data in events) and "message_stop" not in [kind for kind, _ in events]


def test_a_native_messages_stream_cut_mid_event_ends_with_anthropics_error_event(
    gateway: Proc, workers: tuple[Proc, Proc]
) -> None:
    _, native = workers
    with (
        dying(native),
        pytest.raises(anthropic.APIStatusError) as raised,
        anthropic_client(gateway).messages.stream(
            model="claude-sim", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        ) as stream,
    ):
        for _ in stream:
            pass
    assert raised.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_a_broken_messages_answer_is_a_502_in_anthropics_shape(gateway: Proc) -> None:
    with pytest.raises(anthropic.InternalServerError) as raised:
        anthropic_client(gateway).messages.create(model="fake-model", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == 502
    assert raised.value.body["type"] == "error" and raised.value.body["error"]["type"] == "api_error"  # type: ignore[index]


# -- review items: the background limit, and the inner call's back-pressure ----------------------


def test_concurrent_background_requests_never_exceed_the_limit(gateway: Proc, workers: tuple[Proc, Proc]) -> None:
    chat, _ = workers
    httpx.post(chat.url + "/sim/config", json={"tpot_ms": 2000}).raise_for_status()  # 2 s a token: they stay running
    try:
        body = {"model": "sim-model", "input": "slow", "background": True}
        with httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {KEY}"}, timeout=30) as client:
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda _: client.post("/v1/responses", json=body), range(8)))
            statuses = sorted(a.status_code for a in answers)
            assert statuses == [200, 200] + [429] * 6, statuses  # --max-background-responses 2
            for answer in answers:
                if answer.status_code == 200:
                    assert client.post(f"/v1/responses/{answer.json()['id']}/cancel").json()["status"] == "cancelled"
    finally:
        httpx.post(chat.url + "/sim/config", json={"tpot_ms": 0}).raise_for_status()


async def test_background_slots_are_claimed_before_any_await() -> None:
    background = Background(limit=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(background.run)
        assert background.claim("a") and not background.claim("b")
        background.release("a")
        assert background.claim("b")
        finished = trio.Event()

        async def work(scope: trio.CancelScope) -> None:
            finished.set()

        background.start("b", work)
        await finished.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert background.claim("c")  # the finished work gave its slot back
        nursery.cancel_scope.cancel()


async def test_a_slow_reader_back_pressures_the_inner_chat_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    sent = 0

    async def fake_dispatch(ctx: Any, ex: Exchange, route: Any, request: dict[str, Any], body: bytes) -> None:
        nonlocal sent
        await ex.send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(50):
            await ex.send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": i < 49})
            sent += 1

    async def receive() -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError

    monkeypatch.setattr(chat, "dispatch", fake_dispatch)
    outer = Exchange({"path": "/v1/responses", "headers": []}, receive, None, "req-1", "responses")  # type: ignore[arg-type]
    async with chat.chat_completion(None, outer, {"model": "m"}, buffer=4) as answer:  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        assert sent == 4  # the worker's side waits for the reader
        chunks = [chunk async for chunk in answer.chunks()]
    assert len(chunks) == sent == 50


def test_an_error_answer_to_a_stream_request_keeps_its_status(gateway: Proc) -> None:
    """Raised inside the inner call's nursery, the handler's error is still the client's answer (not a 500)."""
    with pytest.raises(openai.NotFoundError):
        openai_client(gateway).responses.create(model="no-such-model", input="x", stream=True)
    messages = anthropic_client(gateway).messages
    with (
        pytest.raises(anthropic.NotFoundError),
        messages.stream(model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "x"}]),
    ):
        pass
