"""The Conversations API, answered by the gateway from its own history storage.

OpenAI's shapes: `conv_...` conversations with string metadata, items in
the order they were added, paginated with `limit`, `order` and `after`.
Every record belongs to the tenant that wrote it (a tenant key's, or the trusted tenant
header's: see `smg.app`); another tenant's id answers 404 like an unknown one. Records stored
without a tenant identity (by callers that had none: no key checked and no tenant header) stay
readable by every caller, tenants included, but only callers without a tenant may change them:
a tenant trying to gets 403, not 404, since it can read the record it is refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs

from smg.context import GatewayContext
from smg.http.asgi import read_body, send_json
from smg.http.errors import GatewayError, load_json_object
from smg.http.exchange import Exchange
from smg.http.schemas import ContentPart, ConversationBody, InputItem, validate
from smg.limits.tenants import DEFAULT_TENANT
from smg.storage.base import ORDERS, StorageError, UnknownCursor
from smg.storage.records import Conversation, Item, new_id
from smg.storage.service import History

T = TypeVar("T")
MAX_ITEMS_PER_REQUEST = 20  # as OpenAI: items in one create or add
MAX_ITEM_BYTES = 1024 * 1024
MAX_METADATA_KEYS, MAX_KEY_CHARS, MAX_VALUE_CHARS = 16, 64, 512
BODY_LIMIT = MAX_ITEMS_PER_REQUEST * MAX_ITEM_BYTES + 64 * 1024
MESSAGE_ROLES = ("user", "assistant", "system", "developer")


def history_of(ctx: GatewayContext) -> History:
    if ctx.history is None:
        raise GatewayError(501, "storage_disabled", "history storage is off (--history-backend none)")
    return ctx.history


async def stored(operation: Awaitable[T]) -> T:
    """Await a storage operation; a failure is 503 storage_unavailable (stateless routes go on)."""
    try:
        return await operation
    except StorageError as exc:
        raise GatewayError(503, "storage_unavailable", f"history storage is unavailable: {exc}") from None


def tenant_of(ex: Exchange) -> str:
    return ex.tenant or DEFAULT_TENANT


async def lookup(history: History, operation: Callable[..., T | None], tenant: str, *args: object) -> T | None:
    """`operation(tenant, *args)`, a read, among the caller's records, then (for a caller with a
    tenant that found nothing) among those stored without one, which every caller may read. The
    second call is made only on a miss: reading one's own records costs one call as before."""
    found = await stored(history.run(operation, tenant, *args))
    if found is None and tenant != DEFAULT_TENANT:
        found = await stored(history.run(operation, DEFAULT_TENANT, *args))
    return found


def read_only(what: str, param: str) -> GatewayError:
    """A tenant's change to a record stored without a tenant identity."""
    return GatewayError(
        403,
        "permission_denied",
        f"{what} was stored without a tenant: every caller can read it, only callers without a tenant can change it",
        param=param,
    )


async def refusal(
    history: History, tenant: str, get: Callable[[str, str], Any], record_id: str, what: str, missing: GatewayError
) -> GatewayError:
    """Why a change found no record of the caller's: 403 when `get` finds one stored without a
    tenant (the caller can read it, not change it), else `missing` (404)."""
    if tenant != DEFAULT_TENANT:
        shared = await stored(history.run(get, DEFAULT_TENANT, record_id))
        if shared is not None:
            return read_only(f"{what} '{record_id}'", f"{what}_id")
    return missing


async def _refusal(history: History, tenant: str, conversation_id: str, missing: GatewayError) -> GatewayError:
    return await refusal(history, tenant, history.backend.get_conversation, conversation_id, "conversation", missing)


# -- validation ----------------------------------------------------------------------------


def parse_metadata(value: dict[str, str] | None) -> dict[str, str]:
    """Metadata within OpenAI's limits (its types the schema checked), {} for none."""
    if value is None:
        return {}
    if len(value) > MAX_METADATA_KEYS:
        raise GatewayError(
            400, "invalid_value", f"'metadata' must map at most {MAX_METADATA_KEYS} strings to strings", param="metadata"
        )
    for key, text in value.items():
        if len(key) > MAX_KEY_CHARS or len(text) > MAX_VALUE_CHARS:
            raise GatewayError(
                400,
                "invalid_value",
                f"metadata keys are at most {MAX_KEY_CHARS} characters and values at most {MAX_VALUE_CHARS}",
                param="metadata",
            )
    return dict(value)


def new_items(
    items: list[InputItem] | None, data: list[Any] | None, conversation_id: str, tenant: str, now: int, param: str = "items"
) -> list[Item]:
    """Check input items, give each an id, and normalise messages to OpenAI's stored form.
    `data` is the same list as parsed JSON, the form items are stored in (`normalize_item`)."""
    if items is None or data is None:
        return []
    if len(items) > MAX_ITEMS_PER_REQUEST:
        raise GatewayError(400, "invalid_value", f"at most {MAX_ITEMS_PER_REQUEST} items per request", param=param)
    out = []
    for index, (item, sent) in enumerate(zip(items, data, strict=True)):
        kept = normalize_item(item, sent, f"{param}[{index}]")
        if len(json.dumps(kept)) > MAX_ITEM_BYTES:
            raise GatewayError(413, "item_too_large", f"{param}[{index}] is over {MAX_ITEM_BYTES} bytes", param=param)
        out.append(Item(kept["id"], conversation_id, tenant, now, kept))
    return out


def normalize_item(item: InputItem, data: dict[str, Any], where: str) -> dict[str, Any]:
    """An item in its stored form: the JSON the client sent (`data`, its unknown fields too:
    items are stored, listed and replayed to workers as given) with its `type` and `id` made
    explicit, and a message's `status` and content parts. `item` is the same item, typed, for
    the checks and the fields read here."""
    given = item.model_fields_set
    kind = item.type if "type" in given else "message" if "role" in given else None
    if kind is None:
        raise GatewayError(400, "missing_required_parameter", f"{where} needs a 'type'", param=f"{where}.type")
    kept = {**data, "type": kind}
    if kind == "message":
        role = item.role
        if role is None or role not in MESSAGE_ROLES:
            raise GatewayError(
                400, "invalid_value", f"{where}.role must be one of {', '.join(MESSAGE_ROLES)}", param=f"{where}.role"
            )
        kept["content"] = message_content(item.content, data.get("content"), role, where)
        kept.setdefault("status", "completed")
    kept["id"] = item.id or new_id(kind)
    return kept


def message_content(content: str | list[ContentPart] | None, data: Any, role: str, where: str) -> list[dict[str, Any]]:
    """A string becomes one text part (`output_text` for the assistant, else `input_text`); a
    list of parts is kept as the JSON it came as (`data`)."""
    if isinstance(content, str):
        return [{"type": "output_text" if role == "assistant" else "input_text", "text": content}]
    if content is not None:
        return list(data)
    raise GatewayError(
        400, "invalid_value", f"{where}.content must be a string or a list of typed parts", param=f"{where}.content"
    )


def pagination(ex: Exchange) -> tuple[int, str, str | None]:
    query = parse_qs(ex.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)

    def one(name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    raw_limit, order, after = one("limit"), one("order") or "desc", one("after")
    try:
        limit = int(raw_limit) if raw_limit is not None else 20
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise GatewayError(400, "invalid_value", "'limit' must be an integer from 1 to 100", param="limit")
    if order not in ORDERS:
        raise GatewayError(400, "invalid_value", "'order' must be 'asc' or 'desc'", param="order")
    if after == "":
        raise GatewayError(400, "invalid_value", "'after' must be an item id", param="after")
    return limit, order, after


async def _body(ctx: GatewayContext, ex: Exchange) -> tuple[ConversationBody, dict[str, Any]]:
    """The body typed, and as parsed JSON (whose items are stored as sent)."""
    limit = min(BODY_LIMIT, ctx.config.max_payload_size)  # 20 full items at most, and never past the flag
    body = load_json_object(await read_body(ex.scope, ex.receive, limit))
    return validate(ConversationBody, body), body


def _not_found(conversation_id: str) -> GatewayError:
    return GatewayError(404, "not_found", f"no conversation with id '{conversation_id}'", param="conversation_id")


# -- handlers ------------------------------------------------------------------------------


async def create_conversation(ctx: GatewayContext, ex: Exchange) -> None:
    history = history_of(ctx)
    body, sent = await _body(ctx, ex)
    now, tenant = int(time.time()), tenant_of(ex)
    conversation = Conversation(new_id("conversation"), tenant, now, parse_metadata(body.metadata))
    items = new_items(body.items, sent.get("items"), conversation.id, tenant, now)
    await stored(history.run(history.backend.create_conversation, conversation, items))
    await send_json(ex.send, 200, conversation.to_json())


async def get_conversation(ctx: GatewayContext, ex: Exchange, conversation_id: str) -> None:
    history = history_of(ctx)
    found = await lookup(history, history.backend.get_conversation, tenant_of(ex), conversation_id)
    if found is None:
        raise _not_found(conversation_id)
    await send_json(ex.send, 200, found.to_json())


async def update_conversation(ctx: GatewayContext, ex: Exchange, conversation_id: str) -> None:
    history = history_of(ctx)
    body, _ = await _body(ctx, ex)
    if "metadata" not in body.model_fields_set:
        raise GatewayError(400, "missing_required_parameter", "'metadata' is required", param="metadata")
    metadata = parse_metadata(body.metadata)
    tenant = tenant_of(ex)
    found = await stored(history.run(history.backend.update_conversation, tenant, conversation_id, metadata))
    if found is None:
        raise await _refusal(history, tenant, conversation_id, _not_found(conversation_id))
    await send_json(ex.send, 200, found.to_json())


async def delete_conversation(ctx: GatewayContext, ex: Exchange, conversation_id: str) -> None:
    history = history_of(ctx)
    tenant = tenant_of(ex)
    if not await stored(history.run(history.backend.delete_conversation, tenant, conversation_id)):
        raise await _refusal(history, tenant, conversation_id, _not_found(conversation_id))
    await send_json(ex.send, 200, {"id": conversation_id, "object": "conversation.deleted", "deleted": True})


async def add_items(ctx: GatewayContext, ex: Exchange, conversation_id: str) -> None:
    history = history_of(ctx)
    body, sent = await _body(ctx, ex)
    if "items" not in body.model_fields_set:
        raise GatewayError(400, "missing_required_parameter", "'items' is required", param="items")
    tenant = tenant_of(ex)
    items = new_items(body.items, sent["items"], conversation_id, tenant, int(time.time()))
    if not await stored(history.run(history.backend.add_items, tenant, conversation_id, items)):
        raise await _refusal(history, tenant, conversation_id, _not_found(conversation_id))
    await send_json(ex.send, 200, item_list([i.data for i in items], has_more=False))


async def list_items(ctx: GatewayContext, ex: Exchange, conversation_id: str) -> None:
    history = history_of(ctx)
    limit, order, after = pagination(ex)
    try:
        page = await lookup(history, history.backend.list_items, tenant_of(ex), conversation_id, limit, order, after)
    except UnknownCursor:
        raise GatewayError(400, "invalid_value", f"'after': no item '{after}' in this conversation", param="after") from None
    if page is None:
        raise _not_found(conversation_id)
    await send_json(ex.send, 200, item_list([i.data for i in page.items], page.has_more))


async def get_item(ctx: GatewayContext, ex: Exchange, conversation_id: str, item_id: str) -> None:
    history = history_of(ctx)
    item = await lookup(history, history.backend.get_item, tenant_of(ex), conversation_id, item_id)
    if item is None:
        raise GatewayError(404, "not_found", f"no item '{item_id}' in conversation '{conversation_id}'", param="item_id")
    await send_json(ex.send, 200, item.data)


async def delete_item(ctx: GatewayContext, ex: Exchange, conversation_id: str, item_id: str) -> None:
    """Answers with the conversation, as OpenAI does."""
    history = history_of(ctx)
    tenant = tenant_of(ex)
    if not await stored(history.run(history.backend.delete_item, tenant, conversation_id, item_id)):
        missing = GatewayError(404, "not_found", f"no item '{item_id}' in conversation '{conversation_id}'", param="item_id")
        raise await _refusal(history, tenant, conversation_id, missing)
    found = await stored(history.run(history.backend.get_conversation, tenant, conversation_id))
    if found is None:
        raise _not_found(conversation_id)
    await send_json(ex.send, 200, found.to_json())


def item_list(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


# -- routes --------------------------------------------------------------------------------

PREFIX = "/v1/conversations"
COLLECTION = {"POST": create_conversation}
ONE = {"GET": get_conversation, "POST": update_conversation, "DELETE": delete_conversation}
ITEMS = {"GET": list_items, "POST": add_items}
ITEM = {"GET": get_item, "DELETE": delete_item}


def route(method: str, path: str) -> tuple[Any, str, dict[str, str]] | None:
    """(handler or None when the method is not allowed, path template, path parameters) for a
    path under /v1/conversations; None for any other path."""
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        return None
    parts = path[len(PREFIX) :].split("/")[1:]
    if not parts:
        return COLLECTION.get(method), PREFIX, {}
    if not all(parts):
        return None
    if len(parts) == 1:
        return ONE.get(method), PREFIX + "/{conversation_id}", {"conversation_id": parts[0]}
    if len(parts) == 2 and parts[1] == "items":
        return ITEMS.get(method), PREFIX + "/{conversation_id}/items", {"conversation_id": parts[0]}
    if len(parts) == 3 and parts[1] == "items":
        template = PREFIX + "/{conversation_id}/items/{item_id}"
        return ITEM.get(method), template, {"conversation_id": parts[0], "item_id": parts[2]}
    return None
