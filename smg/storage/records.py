"""What history storage holds: conversations, their items, and stored responses.

Records are plain data with the OpenAI object (`data`) kept as JSON, plus the
columns storage needs to find, scope and order them. Every record carries
its tenant; a lookup with another tenant finds nothing, so another tenant's
id is indistinguishable from an unknown one (404 either way).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

ID_PREFIX = {
    "conversation": "conv_",
    "response": "resp_",
    "message": "msg_",
    "function_call": "fc_",
    "call": "call_",
    "toolu": "toolu_",
}


def new_id(kind: str) -> str:
    """An id shaped like OpenAI's: a type prefix and 48 hex digits."""
    return ID_PREFIX.get(kind, "item_") + secrets.token_hex(24)


@dataclass
class Conversation:
    id: str
    tenant: str
    created_at: int
    metadata: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "object": "conversation", "created_at": self.created_at, "metadata": self.metadata}


@dataclass
class Item:
    """One conversation item (a message, a function call or its output, ...): `data` is the
    OpenAI item object, `id` included."""

    id: str
    conversation_id: str
    tenant: str
    created_at: int
    data: dict[str, Any]


@dataclass
class StoredResponse:
    """A response object as the client received it, with the input it answered: what
    `previous_response_id` rebuilds the history from."""

    id: str
    tenant: str
    created_at: int
    data: dict[str, Any]  # the response object
    input_items: list[dict[str, Any]] = field(default_factory=list)
    previous_response_id: str | None = None
    conversation_id: str | None = None


@dataclass(frozen=True)
class Page:
    """Items in the asked order, and whether more follow the last one."""

    items: list[Item]
    has_more: bool
