"""Anthropic's Messages API (`POST /v1/messages`), JSON and SSE.

Workers that speak it (their `/v1/models` says `owned_by: anthropic`, or a
hosted Anthropic provider) get the request unchanged and their answer is relayed as it comes, like any
inference route. For every other worker the gateway translates: the
request becomes a chat completion (`messages_format.chat_request`), sent
through the normal routing, and its answer (or stream) comes back as a
message object (or Messages events). Errors answer in Anthropic's shape.

`--sse-keepalive-secs`: a stream carries Anthropic's `ping` event after that much worker
silence, on both ways (relayed: `attempts.relay_events` sends it; translated: the inner
chat stream's keep-alive comment becomes one here).
"""

from __future__ import annotations

from typing import Any

from smg.apis.anthropic.messages_format import MessagesStream, chat_request, error_body, message_from_chat
from smg.apis.chat import KEEPALIVE, answer_error, chat_completion
from smg.config.workers import fallback_table
from smg.context import GatewayContext
from smg.dataplane.dispatch import dispatch
from smg.dataplane.relay import MESSAGES_PING
from smg.dataplane.routes import InferenceRoute
from smg.http.asgi import read_body, send_json
from smg.http.errors import GatewayError, load_json_object
from smg.http.exchange import Exchange
from smg.http.schemas import MessagesRequest, validate
from smg.workers.providers import ANTHROPIC

NATIVE = InferenceRoute("messages", b"/v1/messages")
NATIVE_RUNTIME = "anthropic"


async def create_message(ctx: GatewayContext, ex: Exchange) -> None:
    ex.error_shape = error_body  # every error from here on, the gateway's or the routing's
    body = await read_body(ex.scope, ex.receive, ctx.config.max_payload_size)
    sent = load_json_object(body)  # a native worker gets it as sent (unknown fields too), with the original bytes
    request = validate(MessagesRequest, sent)  # every known field's type, whichever way the request goes
    chat = chat_request(request)  # and the values translating needs
    model = request.model
    if not model:
        raise GatewayError(400, "invalid_value", "'model' must be a non-empty string", param="model")
    canonical = ctx.canonical_model(model)  # an alias: the served model's workers, and its name
    if _native(ctx, canonical or model):
        ex.model = model  # as the client named it: `dispatch` puts the canonical name in the body it sends
        await dispatch(ctx, ex, NATIVE, sent, body)
        return
    model = canonical or model
    ex.model = model
    if request.stream is True:
        await _stream(ctx, ex, chat, model)
    else:
        async with chat_completion(ctx, ex, chat) as answer:
            status, payload = answer.status, await answer.json()
        if status != 200:
            raise answer_error(status, payload)
        await send_json(ex.send, 200, message_from_chat(payload, model))


def _native(ctx: GatewayContext, model: str) -> bool:
    """Every worker serving `model`, and its `--model-fallback` pools', speaks the Messages API
    itself (a fallback to a pool that does not is reached through the chat translation)."""
    chain = (model, *(ctx.canonical_model(m) or m for m in fallback_table(ctx.config.model_fallback).get(model, ())))
    for name in chain:
        workers = ctx.registry.serving(name)
        if not workers or not all(w.runtime_type == NATIVE_RUNTIME or w.provider == ANTHROPIC for w in workers):
            return False
    return True


async def _stream(ctx: GatewayContext, ex: Exchange, chat: dict[str, Any], model: str) -> None:
    state = MessagesStream(model)
    async with chat_completion(ctx, ex, chat) as answer:
        if answer.status != 200:
            raise answer_error(answer.status, await answer.json())
        ex.event_stream = True
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await ex.send({"type": "http.response.start", "status": 200, "headers": headers})
        await ex.send({"type": "http.response.body", "body": state.start(), "more_body": True})
        async for event in answer.events(keepalives=True):  # the inner relay times the worker's silence
            out = MESSAGES_PING if event is KEEPALIVE else state.chunk(event)
            if out:
                await ex.send({"type": "http.response.body", "body": out, "more_body": True})
    failure = answer.failure
    if failure is not None:
        ex.error_code, ex.error_message = failure.code, failure.message
    last = state.error(failure) if failure is not None else state.finish()
    await ex.send({"type": "http.response.body", "body": last, "more_body": False})
