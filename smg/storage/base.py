"""The one interface every history backend implements, synchronously.

Backends are plain classes (a dict, a SQLAlchemy engine, a Redis client):
the trio side (`smg.storage.service`) runs a blocking backend's calls in
worker threads under a timeout, so the backends never see trio and can be
tested and benchmarked alone. Every call is one transaction: it happens
whole or not at all.
"""

from __future__ import annotations

from typing import Protocol

from smg.storage.records import Conversation, Item, Page, StoredResponse

ORDERS = ("asc", "desc")


class StorageError(Exception):
    """The backend could not do the operation (down, timed out, refused): 503 storage_unavailable."""


class UnknownCursor(ValueError):
    """`after` names no item of the conversation."""


class HistoryBackend(Protocol):
    name: str
    blocking: bool  # True: call from a worker thread (network or disk I/O)
    pool_size: int  # concurrent calls worth making

    def migrate(self) -> int:
        """Bring the schema to the current version at start; returns it."""
        ...

    def create_conversation(self, conversation: Conversation, items: list[Item]) -> None: ...

    def get_conversation(self, tenant: str, conversation_id: str) -> Conversation | None: ...

    def update_conversation(self, tenant: str, conversation_id: str, metadata: dict[str, str]) -> Conversation | None: ...

    def delete_conversation(self, tenant: str, conversation_id: str) -> bool:
        """Deletes its items too."""
        ...

    def add_items(self, tenant: str, conversation_id: str, items: list[Item]) -> bool:
        """Append in order; False when the conversation does not exist."""
        ...

    def list_items(self, tenant: str, conversation_id: str, limit: int, order: str, after: str | None) -> Page | None:
        """None when the conversation does not exist; UnknownCursor for a bad `after`."""
        ...

    def get_item(self, tenant: str, conversation_id: str, item_id: str) -> Item | None: ...

    def delete_item(self, tenant: str, conversation_id: str, item_id: str) -> bool: ...

    def put_responses(self, responses: list[StoredResponse]) -> None:
        """Insert or replace, all in one transaction (a background response is stored again when
        it completes; the service commits the responses that arrive together as one group)."""
        ...

    def get_response(self, tenant: str, response_id: str) -> StoredResponse | None: ...

    def delete_response(self, tenant: str, response_id: str) -> bool: ...

    def close(self) -> None: ...
