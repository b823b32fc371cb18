"""`--model-alias ALIAS=CANONICAL` through the whole app, in one process, on trio's mock clock.

The rules pinned here (the reference gateway's, read from its source; the behaviour notes say
nothing about aliases): a request naming an alias is routed to the canonical model's workers,
which receive the canonical name (they were registered under it and do not know the alias);
the answer passes through, so its `model` names the model that ran (as OpenAI's own answers
name the snapshot an alias resolved to); a served model's own name is never taken as an
alias; matching is case-sensitive. Beyond the reference, `/v1/models` lists each alias of a
served model after the models, as OpenAI lists its aliases.
"""

from __future__ import annotations

import json
from typing import Any

from trio.testing import MockClock

from smg.config.workers import alias_table
from smg.context import GatewayContext
from tests.fakes import (
    MODEL,
    FakeUpstream,
    Reply,
    UpstreamCall,
    add_ready_worker,
    call,
    gateway,
    json_reply,
    sse_reply,
)

ALIAS = "fast"
CHAT: dict[str, Any] = {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def echo_model(call: UpstreamCall) -> Reply:
    """A worker answering with the model its request named, as vLLM and SGLang do."""
    sent = json.loads(call.body)
    if call.target == b"/v1/rerank":
        return json_reply(200, [{"index": 0, "score": 0.5, "document": "d"}])
    return json_reply(200, {"id": "chatcmpl-1", "object": "chat.completion", "model": sent.get("model"), "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})  # fmt: skip


def aliased(upstream: FakeUpstream, *aliases: str, **settings: Any) -> GatewayContext:
    return gateway(upstream, 1, model_alias=aliases or (f"{ALIAS}={MODEL}",), **settings)


def test_the_flag_entries_become_a_table() -> None:
    assert alias_table(("fast=m-1", "big=org/m-2=v2")) == {"fast": "m-1", "big": "org/m-2=v2"}
    assert alias_table(()) == {}


async def test_an_alias_reaches_the_canonical_model_which_the_worker_receives(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(echo_model)
    ctx = aliased(upstream)
    client = await call(ctx, "/v1/chat/completions", CHAT)
    assert client.status == 200
    sent = json.loads(upstream.calls[0].body)
    assert sent == {**CHAT, "model": MODEL}  # only the model changed
    assert client.json()["model"] == MODEL  # the answer, untouched, names the model that ran
    counted = {s.labels["model"] for m in ctx.metrics.registry.collect() if m.name == "smg_router_requests" for s in m.samples}
    assert counted == {MODEL}  # counted as the model it is


async def test_a_request_without_an_alias_keeps_its_bytes(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(echo_model)
    ctx = aliased(upstream)
    raw = b'{ "model" : "test-model",  "messages": [{"role": "user", "content": "h\\u00e9"}] }'
    assert (await call(ctx, "/v1/chat/completions", raw)).status == 200
    assert upstream.calls[0].body == raw  # not parsed and dumped again: the hot path is unchanged


async def test_an_aliased_stream_with_tenant_token_limits_is_rewritten_once(autojump_clock: MockClock, tmp_path: Any) -> None:
    limits = tmp_path / "limits.json"
    limits.write_text(json.dumps({"default": {"tokens_per_minute": 10_000}}))
    done = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"model":"test-model"}\n\ndata: [DONE]\n\n'
    upstream = FakeUpstream(lambda call: sse_reply(done))
    ctx = aliased(upstream, tenant_rate_limit_config=str(limits))
    client = await call(ctx, "/v1/chat/completions", {**CHAT, "stream": True})
    assert client.status == 200 and client.body_bytes == done
    sent = json.loads(upstream.calls[0].body)
    assert sent["model"] == MODEL and sent["stream_options"] == {"include_usage": True}


async def test_a_served_model_is_never_shadowed_by_an_alias(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(echo_model)
    ctx = aliased(upstream, f"other-model={MODEL}")
    own = add_ready_worker(ctx, "http://own.test:8000", models=["other-model"])
    client = await call(ctx, "/v1/chat/completions", {**CHAT, "model": "other-model"})
    assert client.status == 200 and upstream.calls[0].worker_url == own.url
    assert json.loads(upstream.calls[0].body)["model"] == "other-model"


async def test_matching_is_exact_and_an_alias_of_nothing_served_names_itself(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(echo_model)
    ctx = aliased(upstream, f"{ALIAS}={MODEL}", "ghost=not-served")
    for name in ("Fast", "ghost"):
        client = await call(ctx, "/v1/chat/completions", {**CHAT, "model": name})
        assert client.status == 404, name
        error = client.json()["error"]
        assert error["code"] == "model_not_found" and f"'{name}'" in error["message"]
    assert upstream.calls == []


async def test_models_lists_aliases_after_the_models(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(echo_model)
    ctx = aliased(upstream, f"{ALIAS}={MODEL}", f"a-first={MODEL}", "ghost=not-served")
    for worker in ctx.registry:
        worker.runtime_type = "vllm"
    client = await call(ctx, "/v1/models", method="GET")
    ids = [(m["id"], m["owned_by"]) for m in client.json()["data"]]
    assert ids == [(MODEL, "vllm"), ("a-first", "vllm"), (ALIAS, "vllm")]  # `data[0]` stays a served model


async def test_every_inference_route_resolves_aliases(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(echo_model)
    ctx = aliased(upstream)
    rerank = await call(ctx, "/v1/rerank", {"model": ALIAS, "query": "q", "documents": ["d"]})
    assert rerank.status == 200 and rerank.json()["model"] == MODEL  # the wrapper the gateway builds, too
    assert (await call(ctx, "/v1/completions", {"model": ALIAS, "prompt": "p"})).status == 200
    assert (await call(ctx, "/v1/embeddings", {"model": ALIAS, "input": "p"})).status == 200
    assert (await call(ctx, "/generate", {"model": ALIAS, "text": "p"})).status == 200
    assert [json.loads(c.body)["model"] for c in upstream.calls] == [MODEL] * 4


async def test_the_responses_and_messages_apis_inner_chats_resolve_aliases(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(echo_model)
    ctx = aliased(upstream)
    response = await call(ctx, "/v1/responses", {"model": ALIAS, "input": "hi", "store": False})
    assert response.status == 200, response.body_bytes
    assert response.json()["model"] == MODEL  # the response object names the model that ran
    message = await call(ctx, "/v1/messages", {"model": ALIAS, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert message.status == 200, message.body_bytes
    assert [json.loads(c.body)["model"] for c in upstream.calls] == [MODEL, MODEL]
    assert [c.target for c in upstream.calls] == [b"/v1/chat/completions"] * 2


async def test_an_alias_follows_its_model_as_workers_come_and_go(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(echo_model)
    ctx = aliased(upstream, f"{ALIAS}=later-model")
    assert (await call(ctx, "/v1/chat/completions", CHAT)).status == 404
    add_ready_worker(ctx, "http://later.test:8000", models=["later-model"])
    assert (await call(ctx, "/v1/chat/completions", CHAT)).status == 200
    assert json.loads(upstream.calls[0].body)["model"] == "later-model"


async def test_an_alias_of_a_native_messages_model_reaches_its_worker_by_the_canonical_name(
    autojump_clock: MockClock,
) -> None:
    """A worker that speaks the Messages API itself gets the body passed through, with the
    canonical name in place of the alias (it was registered under that name only)."""
    sent: list[dict[str, Any]] = []

    def native(call: UpstreamCall) -> Reply:
        sent.append(json.loads(call.body))
        return json_reply(200, {"id": "msg_1", "type": "message", "role": "assistant", "model": sent[-1]["model"],
                                "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                                "usage": {"input_tokens": 3, "output_tokens": 1}})  # fmt: skip

    ctx = gateway(FakeUpstream(native), 0, model_alias=("fast-claude=claude-sim",))
    add_ready_worker(ctx, "http://127.0.0.1:9100", models=["claude-sim"], runtime_type="anthropic")
    body = {"model": "fast-claude", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    client = await call(ctx, "/v1/messages", body)
    assert client.status == 200, client.body
    assert sent and sent[0]["model"] == "claude-sim" and sent[0]["messages"] == body["messages"]
