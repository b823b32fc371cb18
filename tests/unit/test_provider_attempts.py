"""Providers, fallbacks and Retry-After in the attempt loop (issue 17), against a scripted upstream
on trio's mock clock: every wait is exact, and what reached which worker is recorded."""

from __future__ import annotations

import json
from typing import Any

import trio
from trio.testing import MockClock

from smg.context import GatewayContext
from smg.dataplane.attempts import proxy
from smg.dataplane.routes import ROUTES, InferenceRoute
from smg.http.exchange import Exchange
from smg.workers.breaker import BreakerState
from smg.workers.registry import Worker
from tests.fakes import FakeClient, FakeUpstream, UpstreamCall, add_ready_worker, exchange, gateway, json_reply, sse_reply

CHAT = ROUTES["/v1/chat/completions"]
GPT, CLAUDE, LLAMA = "http://gpt.test:8000", "http://claude.test:8000", "http://llama.test:8000"
OK = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}


def fleet(upstream: FakeUpstream, **settings: Any) -> GatewayContext:
    """gpt (an OpenAI provider), claude (an Anthropic provider), llama (an engine)."""
    ctx = gateway(upstream, 0, **settings)
    add_ready_worker(ctx, GPT, models=["gpt"], provider="openai", api_key="sk-gpt", runtime_type="external")
    add_ready_worker(ctx, CLAUDE, models=["claude"], provider="anthropic", api_key="sk-ant", runtime_type="external")
    add_ready_worker(ctx, LLAMA, models=["llama"], runtime_type="sglang")
    return ctx


async def ask(ctx: GatewayContext, model: str, **fields: Any) -> tuple[FakeClient, Exchange]:
    request = {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}
    client = FakeClient()
    ex = exchange(client, model=model)
    await proxy(ctx, ex, CHAT, request, json.dumps(request).encode())
    return client, ex


def by_url(ctx: GatewayContext, url: str) -> Worker:
    return next(w for w in ctx.registry if w.url == url)


def sample(ctx: GatewayContext, name: str, **labels: str) -> float | None:
    return ctx.metrics.registry.get_sample_value(name, labels)


MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "model": "claude",
    "content": [{"type": "text", "text": "hello"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 4, "cache_read_input_tokens": 6, "output_tokens": 3},
}


def claude_events(*, stop: bool = True) -> list[bytes]:
    def event(kind: str, **body: Any) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **body})}\n\n".encode()

    start = {**MESSAGE, "content": [], "stop_reason": None, "usage": {"input_tokens": 4, "output_tokens": 1}}
    events = [
        event("message_start", message=start),
        event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        event("content_block_delta", index=0, delta={"type": "text_delta", "text": "hel"}),
        event("content_block_delta", index=0, delta={"type": "text_delta", "text": "lo"}),
        event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 3}),
    ]
    return [*events, event("message_stop")] if stop else events


async def test_a_chat_request_goes_to_an_anthropic_provider_as_messages_with_its_key_only(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(lambda call: json_reply(200, MESSAGE))
    ctx = fleet(upstream)
    client, ex = await ask(ctx, "claude", max_tokens=9)
    call = upstream.calls[0]
    assert call.target == b"/v1/messages" and json.loads(call.body)["max_tokens"] == 9
    assert call.header(b"x-api-key") == b"sk-ant" and call.header(b"anthropic-version") == b"2023-06-01"
    assert call.header(b"authorization") is None  # neither the client's nor the gateway's
    answer = client.json()
    assert client.status == 200 and answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == "hello" and answer["usage"]["prompt_tokens"] == 10
    assert ex.completion_tokens == 3
    for kind, count in (("prompt", 10), ("completion", 3), ("cached", 6)):
        assert sample(ctx, "smg_router_tokens_total", model="claude", backend="anthropic", kind=kind) == count


async def test_an_anthropic_stream_becomes_chat_chunks_and_is_counted(autojump_clock: MockClock) -> None:
    ctx = fleet(FakeUpstream(lambda call: sse_reply(*claude_events())))
    client, ex = await ask(ctx, "claude", stream=True)
    datas = [line[6:] for line in client.body_bytes.split(b"\n") if line.startswith(b"data: ")]
    assert datas[-1] == b"[DONE]"
    text = "".join(json.loads(d)["choices"][0]["delta"].get("content", "") for d in datas[:-1] if json.loads(d)["choices"])
    assert text == "hello" and client.headers[b"content-type"] == b"text/event-stream"
    assert ex.completion_tokens == 3 and ex.error_code is None
    assert sample(ctx, "smg_router_tokens_total", model="claude", backend="anthropic", kind="prompt") == 4


async def test_an_anthropic_stream_cut_before_message_stop_ends_with_an_error(autojump_clock: MockClock) -> None:
    ctx = fleet(FakeUpstream(lambda call: sse_reply(*claude_events(stop=False))))
    client, ex = await ask(ctx, "claude", stream=True)
    assert b"[DONE]" not in client.body_bytes and b"upstream_stream_incomplete" in client.body_bytes
    assert ex.error_code == "upstream_stream_incomplete"
    assert by_url(ctx, CLAUDE).breaker.failures == 1


async def test_a_malformed_provider_answer_is_a_502_and_retried(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(lambda call: json_reply(200, ["not", "a", "chat", "answer"]))
    ctx = fleet(upstream, retry_max_retries=2)
    client, _ = await ask(ctx, "gpt")
    assert len(upstream.calls) == 2 and client.status == 502
    assert client.json()["error"]["code"] == "upstream_invalid_response"


async def test_retry_after_keeps_a_provider_out_for_that_long_and_spares_its_breaker(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(lambda call: json_reply(429, {"error": {"message": "slow down"}}, [(b"retry-after", b"30")]))
    ctx = fleet(upstream, retry_max_retries=3)
    client, _ = await ask(ctx, "gpt")
    assert client.status == 429 and client.headers[b"retry-after"] == b"30" and len(upstream.calls) == 1
    await trio.sleep(10)
    client, _ = await ask(ctx, "gpt")
    assert client.status == 429 and client.headers[b"retry-after"] == b"20" and len(upstream.calls) == 1
    assert client.json()["error"]["code"] == "rate_limit_exceeded"
    worker = by_url(ctx, GPT)
    assert worker.breaker.state is BreakerState.CLOSED and worker.breaker.failures == 0
    await trio.sleep(20)
    upstream.handler = lambda call: json_reply(200, OK)
    client, _ = await ask(ctx, "gpt")
    assert client.status == 200 and len(upstream.calls) == 2  # asked again once the wait was over


async def test_retry_after_that_is_not_seconds_is_an_ordinary_failure(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(lambda call: json_reply(429, {}, [(b"retry-after", b"Wed, 21 Oct 2026 07:28:00 GMT")]))
    ctx = fleet(upstream, retry_max_retries=2)
    client, _ = await ask(ctx, "gpt")
    assert client.status == 429 and len(upstream.calls) == 2  # retried, as any 429


async def test_a_fallback_chain_moves_on_and_names_the_step(autojump_clock: MockClock) -> None:
    def handler(call: UpstreamCall) -> Any:
        if call.worker_url in (GPT, CLAUDE):
            return json_reply(503, {"error": {"message": "down"}})
        return json_reply(200, {**OK, "model": "llama"})

    ctx = fleet(FakeUpstream(handler), retry_max_retries=1, model_fallback=("gpt=claude,llama",))
    client, _ = await ask(ctx, "gpt")
    assert client.status == 200 and client.json()["model"] == "llama"
    assert client.headers[b"x-smg-fallback-step"] == b"2" and client.headers[b"x-smg-fallback-model"] == b"llama"
    assert client.headers[b"x-smg-routed-worker-id"] == LLAMA.encode()
    assert sample(ctx, "smg_router_fallbacks_total", model="gpt", fallback="claude", reason="upstream_error") == 1
    assert sample(ctx, "smg_router_fallbacks_total", model="gpt", fallback="llama", reason="upstream_error") == 1


async def test_a_refused_request_or_a_started_stream_never_falls_back(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(lambda call: json_reply(200, OK))
    ctx = fleet(upstream, model_fallback=("claude=gpt",))
    client, _ = await ask(ctx, "claude", n=2)  # the Anthropic provider cannot: a 400, no fallback
    assert client.status == 400 and client.json()["error"]["code"] == "unsupported_by_provider" and not upstream.calls
    upstream.handler = lambda call: sse_reply(*claude_events(stop=False))
    client, _ = await ask(ctx, "claude", stream=True)
    assert [call.worker_url for call in upstream.calls] == [CLAUDE] and b"x-smg-fallback-step" not in client.headers


async def test_a_fallback_with_no_worker_leaves_the_primarys_429_and_its_retry_after(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(lambda call: json_reply(429, {"error": {"message": "slow"}}, [(b"retry-after", b"30")]))
    ctx = fleet(upstream, retry_max_retries=1, model_fallback=("gpt=nobody-serves-this",))
    client, _ = await ask(ctx, "gpt")
    assert client.status == 429 and client.headers[b"retry-after"] == b"30"
    assert b"x-smg-fallback-step" not in client.headers  # the answer is the primary's


async def test_a_retry_after_for_one_model_leaves_the_providers_other_models_alone(autojump_clock: MockClock) -> None:
    def handler(call: UpstreamCall) -> Any:
        if json.loads(call.body)["model"] == "gpt":
            return json_reply(429, {}, [(b"retry-after", b"60")])
        return json_reply(200, OK)

    upstream = FakeUpstream(handler)
    ctx = fleet(upstream, retry_max_retries=1)
    by_url(ctx, GPT).models.append("gpt-mini")
    ctx.registry.refresh()
    assert (await ask(ctx, "gpt"))[0].status == 429
    assert (await ask(ctx, "gpt-mini"))[0].status == 200 and len(upstream.calls) == 2


async def test_a_relayed_messages_stream_in_one_piece_counts_its_prompt_too(autojump_clock: MockClock) -> None:
    """Native /v1/messages: the prompt's usage is in message_start, the output's in message_delta."""
    ctx = fleet(FakeUpstream(lambda call: sse_reply(b"".join(claude_events()))))
    request = {"model": "claude", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    client = FakeClient()
    ex = exchange(client, "/v1/messages", model="claude")
    await proxy(ctx, ex, InferenceRoute("messages", b"/v1/messages"), request, json.dumps(request).encode())
    assert b"message_stop" in client.body_bytes
    assert sample(ctx, "smg_router_tokens_total", model="claude", backend="anthropic", kind="prompt") == 4
    assert sample(ctx, "smg_router_tokens_total", model="claude", backend="anthropic", kind="completion") == 3
