"""History in this process's memory: bounded, lost on restart.

For tests, development and stateless deployments that still want
`previous_response_id` within a session. Bounded three ways: at most
`max_responses` responses (the oldest go first), at most `max_items`
conversation items (the least recently used conversations go first, whole,
so none is left with a hole), and nothing unused for `retention_secs`.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable

from smg.storage.base import UnknownCursor
from smg.storage.records import Conversation, Item, Page, StoredResponse


class MemoryHistory:
    name = "memory"
    blocking = False
    pool_size = 1

    def __init__(
        self,
        clock: Callable[[], float],
        max_responses: int = 10_000,
        max_items: int = 100_000,
        retention_secs: float | None = None,
    ) -> None:
        self.clock = clock
        self.max_responses = max_responses
        self.max_items = max_items
        self.retention_secs = retention_secs
        self._conversations: OrderedDict[str, Conversation] = OrderedDict()  # least recently used first
        self._used: dict[str, float] = {}  # conversation id -> last use
        self._items: dict[str, list[Item]] = {}  # conversation id -> items in order
        self._item_count = 0
        self._responses: OrderedDict[str, tuple[float, StoredResponse]] = OrderedDict()  # (stored at, ...), oldest first

    def migrate(self) -> int:
        return 0

    def close(self) -> None:
        pass

    # -- conversations -----------------------------------------------------------------

    def create_conversation(self, conversation: Conversation, items: list[Item]) -> None:
        self._expire()
        self._conversations[conversation.id] = copy.deepcopy(conversation)
        self._used[conversation.id] = self.clock()
        self._items[conversation.id] = copy.deepcopy(items)
        self._item_count += len(items)
        self._bound(keep=conversation.id)

    def _use(self, tenant: str, conversation_id: str) -> Conversation | None:
        """The tenant's conversation, marked as just used; None when missing or another's."""
        self._expire()
        found = self._conversations.get(conversation_id)
        if found is None or found.tenant != tenant:
            return None
        self._conversations.move_to_end(conversation_id)
        self._used[conversation_id] = self.clock()
        return found

    def get_conversation(self, tenant: str, conversation_id: str) -> Conversation | None:
        found = self._use(tenant, conversation_id)
        return copy.deepcopy(found) if found is not None else None

    def update_conversation(self, tenant: str, conversation_id: str, metadata: dict[str, str]) -> Conversation | None:
        found = self._use(tenant, conversation_id)
        if found is None:
            return None
        found.metadata = dict(metadata)
        return copy.deepcopy(found)

    def delete_conversation(self, tenant: str, conversation_id: str) -> bool:
        if self._use(tenant, conversation_id) is None:
            return False
        self._drop_conversation(conversation_id)
        return True

    def add_items(self, tenant: str, conversation_id: str, items: list[Item]) -> bool:
        if self._use(tenant, conversation_id) is None:
            return False
        self._items[conversation_id].extend(copy.deepcopy(items))
        self._item_count += len(items)
        self._bound(keep=conversation_id)
        return True

    def list_items(self, tenant: str, conversation_id: str, limit: int, order: str, after: str | None) -> Page | None:
        if self._use(tenant, conversation_id) is None:
            return None
        items = self._items[conversation_id]
        ordered = items if order == "asc" else items[::-1]
        start = 0
        if after is not None:
            positions = [i for i, item in enumerate(ordered) if item.id == after]
            if not positions:
                raise UnknownCursor(after)
            start = positions[0] + 1
        chosen = ordered[start : start + limit]
        return Page(copy.deepcopy(chosen), start + limit < len(ordered))

    def get_item(self, tenant: str, conversation_id: str, item_id: str) -> Item | None:
        if self._use(tenant, conversation_id) is None:
            return None
        return next((copy.deepcopy(i) for i in self._items[conversation_id] if i.id == item_id), None)

    def delete_item(self, tenant: str, conversation_id: str, item_id: str) -> bool:
        if self._use(tenant, conversation_id) is None:
            return False
        items = self._items[conversation_id]
        kept = [i for i in items if i.id != item_id]
        if len(kept) == len(items):
            return False
        self._items[conversation_id] = kept
        self._item_count -= 1
        return True

    # -- responses -----------------------------------------------------------------------

    def put_responses(self, responses: list[StoredResponse]) -> None:
        self._expire()
        for response in responses:
            self._responses.pop(response.id, None)
            self._responses[response.id] = (self.clock(), copy.deepcopy(response))
        while len(self._responses) > self.max_responses:
            self._responses.popitem(last=False)

    def get_response(self, tenant: str, response_id: str) -> StoredResponse | None:
        self._expire()
        found = self._responses.get(response_id)
        return copy.deepcopy(found[1]) if found is not None and found[1].tenant == tenant else None

    def delete_response(self, tenant: str, response_id: str) -> bool:
        found = self._responses.get(response_id)
        if found is None or found[1].tenant != tenant:
            return False
        del self._responses[response_id]
        return True

    # -- bounds ----------------------------------------------------------------------------

    def _drop_conversation(self, conversation_id: str) -> None:
        del self._conversations[conversation_id]
        del self._used[conversation_id]
        self._item_count -= len(self._items.pop(conversation_id))

    def _bound(self, keep: str | None = None) -> None:
        """Least recently used conversations go until the items fit (never `keep`, just written)."""
        for conversation_id in list(self._conversations):
            if self._item_count <= self.max_items:
                break
            if conversation_id != keep:
                self._drop_conversation(conversation_id)

    def _expire(self) -> None:
        if self.retention_secs is None:
            return
        horizon = self.clock() - self.retention_secs
        while self._conversations:
            oldest = next(iter(self._conversations))
            if self._used[oldest] >= horizon:
                break
            self._drop_conversation(oldest)
        while self._responses:
            stored_at, _ = next(iter(self._responses.values()))
            if stored_at >= horizon:
                break
            self._responses.popitem(last=False)
