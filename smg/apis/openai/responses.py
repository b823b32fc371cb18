"""The Responses API, served by the gateway over its own history storage.

`POST /v1/responses` rebuilds the conversation so far (the chain of
`previous_response_id`, or a stored `conversation`), sends it with the new
input to a worker as a chat completion through the normal routing, and
answers as a response object or as the Responses stream events. With
`store` (the default) the response and its input are saved, and appended
to the conversation if one was named. `background` runs it after
answering (`queued`); `POST /v1/responses/{id}/cancel` stops it.

Stored responses are scoped like conversations (`conversations`' docstring): a caller reads
its tenant's and those stored without a tenant identity (also as `previous_response_id` or as
a `conversation` to continue); a tenant may not change the latter (delete, cancel, or add to
such a conversation by storing a response in it): 403.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from smg.apis.chat import KEEPALIVE, answer_error, chat_completion, never_disconnects
from smg.apis.openai.conversations import (
    history_of,
    item_list,
    lookup,
    normalize_item,
    pagination,
    parse_metadata,
    read_only,
    refusal,
    stored,
    tenant_of,
)
from smg.apis.openai.responses_format import (
    ResponseShell,
    StreamState,
    chat_messages,
    chat_tool_choice,
    chat_tools,
    error_object,
    output_items,
    status_of,
    usage_of,
)
from smg.context import GatewayContext
from smg.dataplane.relay import KEEPALIVE_COMMENT
from smg.http.asgi import Receive, read_body, send_json
from smg.http.errors import GatewayError, load_json_object, missing_parameter
from smg.http.exchange import Exchange
from smg.http.schemas import ConversationRef, InputItem, ResponsesRequest, validate
from smg.limits.tenants import DEFAULT_TENANT
from smg.storage.records import Item, StoredResponse, new_id

log = logging.getLogger("smg.router")

MAX_CHAIN = 1000  # previous_response_id links followed at most


@dataclass
class Plan:
    """A parsed `POST /v1/responses`: what to send, and what to store."""

    shell: ResponseShell
    tenant: str
    input_items: list[dict[str, Any]]  # as stored, and replayed by later requests: JSON
    chat: dict[str, Any]  # the chat completion's body, for the data plane: JSON
    store: bool
    stream: bool
    background: bool
    lineage: str | None  # the conversation's key for sticky sessions: its first response, or the conversation id


# -- POST /v1/responses ---------------------------------------------------------------------


async def create_response(ctx: GatewayContext, ex: Exchange) -> None:
    body = load_json_object(await read_body(ex.scope, ex.receive, ctx.config.max_payload_size))
    plan = await _plan(ctx, ex, validate(ResponsesRequest, body), body)
    ex.model, ex.lineage = plan.shell.model, plan.lineage
    if plan.background:
        await _start_background(ctx, ex, plan)
    elif plan.stream:
        await _stream(ctx, ex, plan)
    else:
        await send_json(ex.send, 200, await _complete(ctx, ex, plan, ex.receive))


async def _plan(ctx: GatewayContext, ex: Exchange, request: ResponsesRequest, body: dict[str, Any]) -> Plan:
    """Check what the typed `request` leaves to the handler, and rebuild the history. `body` is
    the same request as parsed JSON: its input items are stored as sent, and its tools repeated."""
    model = request.model
    if model is None:
        raise missing_parameter("model")
    if not model:
        raise GatewayError(400, "invalid_value", "'model' must be a non-empty string", param="model")
    # an alias (--model-alias) is the canonical model's name from here on: the response object
    # names the model that ran, as a chat completion's answer (from the worker) does
    model = ctx.canonical_model(model) or model
    previous, conversation = request.previous_response_id, request.conversation
    if isinstance(conversation, ConversationRef):
        conversation = conversation.id
    if previous is not None and conversation is not None:
        raise GatewayError(
            400,
            "invalid_request",
            "'previous_response_id' and 'conversation' cannot both be given: continue a response chain or a conversation",
            param="conversation",
        )
    for name, value in (("previous_response_id", previous), ("conversation", conversation)):
        if value is not None and not value:
            raise GatewayError(400, "invalid_value", f"'{name}' must be an id", param=name)
    store, stream, background = request.store, request.stream is True, request.background is True
    if store is None:
        raise GatewayError(400, "invalid_value", "'store' must be a boolean", param="store")
    if background and not store:
        raise GatewayError(400, "invalid_value", "a background response must be stored ('store': true)", param="background")
    if background and stream:
        raise GatewayError(400, "invalid_value", "'background' with 'stream' is not supported here", param="stream")
    background = background and ctx.background is not None  # --max-background-responses 0: in the foreground
    parse_metadata(request.metadata)
    tenant = tenant_of(ex)
    if request.input is None:
        raise missing_parameter("input")
    if isinstance(request.input, str):
        data = {"type": "message", "role": "user", "content": request.input}
        input_items = [normalize_item(InputItem(type="message", role="user", content=request.input), data, "input[0]")]
    else:  # each item typed for its checks, stored as the JSON it came as
        input_items = [
            normalize_item(item, data, f"input[{index}]")
            for index, (item, data) in enumerate(zip(request.input, body["input"], strict=True))
        ]

    history: list[dict[str, Any]] = []
    needs_storage = store or previous is not None or conversation is not None
    if needs_storage:
        history_of(ctx)  # 501 when history is off
    lineage = conversation
    if previous is not None:
        history, lineage = await _chain(ctx, tenant, previous)
    elif conversation is not None:
        history, owner = await _conversation_items(ctx, tenant, conversation)
        if store and owner != tenant:  # storing the response adds its items to the conversation
            raise read_only(f"conversation '{conversation}'", "conversation")

    chat: dict[str, Any] = {
        "model": model,
        "messages": chat_messages(request.instructions, history + input_items),
        "stream": stream,
    }
    if stream:
        chat["stream_options"] = {"include_usage": True}
    if request.max_output_tokens is not None:
        chat["max_tokens"] = request.max_output_tokens
    given = request.model_fields_set
    passed = {"temperature": request.temperature, "top_p": request.top_p, "user": request.user,
              "parallel_tool_calls": request.parallel_tool_calls, "seed": request.seed, "stop": request.stop}  # fmt: skip
    chat.update((name, value) for name, value in passed.items() if name in given)  # given, even as null
    tools = chat_tools(request.tools)
    if tools:
        chat["tools"] = tools
        if "tool_choice" in given:
            chat["tool_choice"] = chat_tool_choice(request.tool_choice)
    shell = ResponseShell(
        new_id("response"),
        model,
        request,
        previous_response_id=previous,
        conversation_id=conversation,
        background=background,
        tools=body.get("tools") or [],
        tool_choice=body.get("tool_choice", "auto"),
    )
    if lineage is None and store:  # a new chain: its follow-ups name this response as their first
        lineage = shell.id
    return Plan(shell, tenant, input_items, chat, store, stream, background, lineage)


async def _chain(ctx: GatewayContext, tenant: str, response_id: str) -> tuple[list[dict[str, Any]], str]:
    """The items of a response chain, oldest first (each response's input, then its output),
    and the chain's first response id."""
    history = history_of(ctx)
    items: list[dict[str, Any]] = []
    next_id: str | None = response_id
    first = response_id
    for _ in range(MAX_CHAIN):
        if next_id is None:
            return items, first
        found = await lookup(history, history.backend.get_response, tenant, next_id)
        if found is None:
            raise GatewayError(404, "not_found", f"no response with id '{next_id}'", param="previous_response_id")
        items = found.input_items + list(found.data.get("output") or []) + items
        first, next_id = next_id, found.previous_response_id
    raise GatewayError(400, "invalid_request", f"the response chain is longer than {MAX_CHAIN}", param="previous_response_id")


async def _conversation_items(ctx: GatewayContext, tenant: str, conversation_id: str) -> tuple[list[dict[str, Any]], str]:
    """The conversation's items, oldest first, and the tenant it is stored under (the caller's,
    or none's when it was stored without a tenant identity)."""
    history = history_of(ctx)
    items: list[dict[str, Any]] = []
    after = None
    owner = tenant
    while True:
        page = await stored(history.run(history.backend.list_items, owner, conversation_id, 100, "asc", after))
        if page is None and after is None and owner != DEFAULT_TENANT:  # maybe one every caller may read
            owner = DEFAULT_TENANT
            page = await stored(history.run(history.backend.list_items, owner, conversation_id, 100, "asc", after))
        if page is None:
            raise GatewayError(404, "not_found", f"no conversation with id '{conversation_id}'", param="conversation")
        items += [i.data for i in page.items]
        if not page.has_more:
            return items, owner
        after = page.items[-1].id


async def _save(ctx: GatewayContext, plan: Plan, response: dict[str, Any]) -> None:
    """Store the response (and extend its conversation) once it is complete."""
    if not plan.store:
        return
    history = history_of(ctx)
    shell = plan.shell
    record = StoredResponse(
        shell.id, plan.tenant, shell.created_at, response, plan.input_items, shell.previous_response_id, shell.conversation_id
    )
    await stored(history.save_response(record))
    if shell.conversation_id is not None and response["status"] in ("completed", "incomplete"):  # an answer, if cut short
        items = [
            Item(data["id"], shell.conversation_id, plan.tenant, shell.created_at, data)
            for data in plan.input_items + response["output"]
        ]
        if not await stored(history.run(history.backend.add_items, plan.tenant, shell.conversation_id, items)):
            log.warning("response %s: its conversation %s was deleted meanwhile", shell.id, shell.conversation_id)


def _failed(shell: ResponseShell, error: GatewayError, output: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return shell.object_with("failed", output or [], error=error_object(error.code, error.message))


async def _complete(ctx: GatewayContext, ex: Exchange, plan: Plan, receive: Receive) -> dict[str, Any]:
    """Run the chat completion to its end and save the response, completed or (cut short by a
    limit) incomplete; GatewayError when the answer is an error."""
    async with chat_completion(ctx, ex, plan.chat, receive) as answer:
        body = await answer.json()
        status = answer.status
    if status != 200:
        raise answer_error(status, body)
    choices = body.get("choices") if isinstance(body, dict) else None
    if not choices or not isinstance(choices[0], dict):
        raise GatewayError(502, "upstream_invalid_response", "the worker's chat answer has no choices")
    message = choices[0].get("message") or {}
    outcome, details = status_of(answer.finish_reason)
    output = output_items(message, "completed" if outcome == "completed" else "incomplete")
    response = plan.shell.object_with(outcome, output, usage_of(body.get("usage")), incomplete_details=details)
    await _save(ctx, plan, response)
    return response


async def _stream(ctx: GatewayContext, ex: Exchange, plan: Plan) -> None:
    state = StreamState(plan.shell)
    async with chat_completion(ctx, ex, plan.chat) as answer:
        if answer.status != 200:
            raise answer_error(answer.status, await answer.json())
        ex.event_stream = True
        await ex.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
            }
        )
        await _write(ex, state.start())
        async for event in answer.events(keepalives=True):
            if event is KEEPALIVE:  # --sse-keepalive-secs of worker silence: a comment, as on chat streams
                await _write(ex, [KEEPALIVE_COMMENT])
            else:
                await _write(ex, state.chunk(event))
    failure = answer.failure  # the stream broke off: the response failed, and is stored so
    error = None
    if failure is not None:
        ex.error_code, ex.error_message = failure.code, failure.message
        error = error_object(failure.code, failure.message)
    response, last = state.end(error)
    await _save(ctx, plan, response)  # before the last event: a client that saw it finds it stored
    await ex.send({"type": "http.response.body", "body": b"".join(last), "more_body": False})


async def _write(ex: Exchange, events: list[bytes]) -> None:
    if events:
        await ex.send({"type": "http.response.body", "body": b"".join(events), "more_body": True})


# -- background ----------------------------------------------------------------------------------


async def _start_background(ctx: GatewayContext, ex: Exchange, plan: Plan) -> None:
    background = ctx.background
    assert background is not None
    key = plan.shell.id
    if not background.claim(key):  # the slot is taken before the first await: concurrent requests cannot overrun it
        raise GatewayError(
            429,
            "too_many_background_responses",
            f"{background.limit} background responses are already running here (--max-background-responses)",
            type="rate_limit_error",
        )
    queued = plan.shell.object_with("queued", [])
    try:
        await _save(ctx, plan, queued)
    except BaseException:
        background.release(key)
        raise
    background.start(key, partial(_run_background, ctx, ex, plan))
    await send_json(ex.send, 200, queued)


async def _run_background(ctx: GatewayContext, ex: Exchange, plan: Plan, scope: trio.CancelScope) -> None:
    try:
        with scope:
            await _save(ctx, plan, plan.shell.object_with("in_progress", []))
            await _complete(ctx, ex, plan, never_disconnects)
        if scope.cancelled_caught:
            with trio.CancelScope(shield=True):
                await _save(ctx, plan, plan.shell.object_with("cancelled", []))
    except GatewayError as error:
        await _save(ctx, plan, _failed(plan.shell, error))
    except Exception:
        log.exception("background response %s failed", plan.shell.id)
        with contextlib.suppress(Exception):  # never left `in_progress` for a client to poll forever
            await _save(ctx, plan, _failed(plan.shell, GatewayError(500, "internal_error", "the response failed")))


# -- GET, DELETE, cancel, input_items -----------------------------------------------------------


async def _found(ctx: GatewayContext, ex: Exchange, response_id: str) -> StoredResponse:
    history = history_of(ctx)
    found = await lookup(history, history.backend.get_response, tenant_of(ex), response_id)
    if found is None:
        raise GatewayError(404, "not_found", f"no response with id '{response_id}'", param="response_id")
    return found


async def get_response(ctx: GatewayContext, ex: Exchange, response_id: str) -> None:
    await send_json(ex.send, 200, (await _found(ctx, ex, response_id)).data)


async def delete_response(ctx: GatewayContext, ex: Exchange, response_id: str) -> None:
    history = history_of(ctx)
    tenant = tenant_of(ex)
    if not await stored(history.run(history.backend.delete_response, tenant, response_id)):
        missing = GatewayError(404, "not_found", f"no response with id '{response_id}'", param="response_id")
        raise await refusal(history, tenant, history.backend.get_response, response_id, "response", missing)
    await send_json(ex.send, 200, {"id": response_id, "object": "response.deleted", "deleted": True})


async def cancel_response(ctx: GatewayContext, ex: Exchange, response_id: str) -> None:
    found = await _found(ctx, ex, response_id)
    if found.tenant != tenant_of(ex):  # stored without a tenant: readable, not the caller's to stop
        raise read_only(f"response '{response_id}'", "response_id")
    if not found.data.get("background"):
        raise GatewayError(400, "invalid_request", "only background responses can be cancelled", param="response_id")
    if ctx.background is None or not await ctx.background.cancel(response_id):
        await send_json(ex.send, 200, found.data)  # already finished (or running on another node)
        return
    await send_json(ex.send, 200, (await _found(ctx, ex, response_id)).data)  # as the task recorded it: cancelled


async def input_items(ctx: GatewayContext, ex: Exchange, response_id: str) -> None:
    found = await _found(ctx, ex, response_id)
    limit, order, after = pagination(ex)
    items = found.input_items if order == "asc" else found.input_items[::-1]
    start = 0
    if after is not None:
        ids = [i.get("id") for i in items]
        if after not in ids:
            raise GatewayError(400, "invalid_value", f"'after': no input item '{after}' in this response", param="after")
        start = ids.index(after) + 1
    page = items[start : start + limit]
    await send_json(ex.send, 200, item_list(page, start + limit < len(items)))


# -- routes --------------------------------------------------------------------------------------

PREFIX = "/v1/responses"
ONE = {"GET": get_response, "DELETE": delete_response}


def route(method: str, path: str) -> tuple[Any, str, dict[str, str]] | None:
    """As `conversations.route`, for paths under /v1/responses."""
    if path == PREFIX:
        return ({"POST": create_response}.get(method), PREFIX, {})
    if not path.startswith(PREFIX + "/"):
        return None
    parts = path[len(PREFIX) + 1 :].split("/")
    if not all(parts):
        return None
    if len(parts) == 1:
        return ONE.get(method), PREFIX + "/{response_id}", {"response_id": parts[0]}
    if len(parts) == 2 and parts[1] == "cancel":
        return ({"POST": cancel_response}.get(method), PREFIX + "/{response_id}/cancel", {"response_id": parts[0]})
    if len(parts) == 2 and parts[1] == "input_items":
        return ({"GET": input_items}.get(method), PREFIX + "/{response_id}/input_items", {"response_id": parts[0]})
    return None
