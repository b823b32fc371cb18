"""One contract, every history backend: the same tests run against each."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from smg.storage.base import HistoryBackend, UnknownCursor
from smg.storage.memory import MemoryHistory
from smg.storage.records import Conversation, Item, StoredResponse, new_id
from smg.storage.sql import CURRENT, SqlHistory
from tests.storage_backends import BACKENDS, backend


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HistoryBackend]:
    with backend(request.param, tmp_path) as opened:
        opened.migrate()
        yield opened


def conversation(store: HistoryBackend, tenant: str = "t1", items: int = 0) -> Conversation:
    conv = Conversation(new_id("conversation"), tenant, 1_700_000_000, {"topic": "tests"})
    store.create_conversation(conv, [message(conv.id, tenant, f"hello {i}") for i in range(items)])
    return conv


def message(conversation_id: str, tenant: str, text: str) -> Item:
    item_id = new_id("message")
    data = {"type": "message", "id": item_id, "role": "user", "content": [{"type": "input_text", "text": text}]}
    return Item(item_id, conversation_id, tenant, 1_700_000_000, data)


def texts(items: list[Item]) -> list[str]:
    return [i.data["content"][0]["text"] for i in items]


def test_a_conversation_round_trips_and_is_invisible_to_other_tenants(store: HistoryBackend) -> None:
    conv = conversation(store, items=2)
    found = store.get_conversation("t1", conv.id)
    assert found is not None and found.to_json() == conv.to_json()
    assert store.get_conversation("t2", conv.id) is None
    assert store.get_conversation("t1", "conv_missing") is None
    assert store.list_items("t2", conv.id, 10, "asc", None) is None
    assert not store.add_items("t2", conv.id, [message(conv.id, "t2", "intruder")])
    assert not store.delete_conversation("t2", conv.id)
    assert store.update_conversation("t2", conv.id, {"a": "b"}) is None


def test_metadata_is_replaced(store: HistoryBackend) -> None:
    conv = conversation(store)
    updated = store.update_conversation("t1", conv.id, {"topic": "changed", "x": "y"})
    assert updated is not None and updated.metadata == {"topic": "changed", "x": "y"}
    assert store.get_conversation("t1", conv.id).metadata == {"topic": "changed", "x": "y"}  # type: ignore[union-attr]


def test_items_keep_their_order_and_paginate_both_ways(store: HistoryBackend) -> None:
    conv = conversation(store, items=3)
    assert store.add_items("t1", conv.id, [message(conv.id, "t1", f"more {i}") for i in range(4)])
    everything = ["hello 0", "hello 1", "hello 2", "more 0", "more 1", "more 2", "more 3"]
    page = store.list_items("t1", conv.id, 100, "asc", None)
    assert page is not None and texts(page.items) == everything and not page.has_more
    first = store.list_items("t1", conv.id, 3, "desc", None)
    assert first is not None and texts(first.items) == everything[::-1][:3] and first.has_more
    second = store.list_items("t1", conv.id, 3, "desc", first.items[-1].id)
    assert second is not None and texts(second.items) == everything[::-1][3:6] and second.has_more
    last = store.list_items("t1", conv.id, 3, "desc", second.items[-1].id)
    assert last is not None and texts(last.items) == ["hello 0"] and not last.has_more
    after = store.list_items("t1", conv.id, 2, "asc", page.items[4].id)
    assert after is not None and texts(after.items) == ["more 2", "more 3"] and not after.has_more
    with pytest.raises(UnknownCursor):
        store.list_items("t1", conv.id, 3, "asc", "msg_not_here")


def test_single_items_are_read_and_deleted(store: HistoryBackend) -> None:
    conv = conversation(store, items=2)
    page = store.list_items("t1", conv.id, 10, "asc", None)
    assert page is not None
    first = page.items[0]
    got = store.get_item("t1", conv.id, first.id)
    assert got is not None and got.data == first.data
    assert store.get_item("t2", conv.id, first.id) is None
    assert store.delete_item("t1", conv.id, first.id)
    assert not store.delete_item("t1", conv.id, first.id)
    assert store.get_item("t1", conv.id, first.id) is None
    left = store.list_items("t1", conv.id, 10, "asc", None)
    assert left is not None and texts(left.items) == ["hello 1"]


def test_deleting_a_conversation_deletes_its_items(store: HistoryBackend) -> None:
    conv = conversation(store, items=2)
    item_id = store.list_items("t1", conv.id, 1, "asc", None).items[0].id  # type: ignore[union-attr]
    assert store.delete_conversation("t1", conv.id)
    assert store.get_conversation("t1", conv.id) is None
    assert store.get_item("t1", conv.id, item_id) is None
    assert not store.delete_conversation("t1", conv.id)


def test_responses_round_trip_replace_and_delete(store: HistoryBackend) -> None:
    response = StoredResponse(
        new_id("response"),
        "t1",
        1_700_000_000,
        {"id": "x", "object": "response", "status": "in_progress", "output": []},
        [{"type": "message", "role": "user", "content": "hi"}],
        previous_response_id="resp_earlier",
    )
    store.put_responses([response])
    got = store.get_response("t1", response.id)
    assert got == response
    assert store.get_response("t2", response.id) is None
    response.data["status"] = "completed"
    store.put_responses([response])
    assert store.get_response("t1", response.id).data["status"] == "completed"  # type: ignore[union-attr]
    assert not store.delete_response("t2", response.id)
    assert store.delete_response("t1", response.id)
    assert store.get_response("t1", response.id) is None


def test_migration_is_idempotent(store: HistoryBackend) -> None:
    conv = conversation(store, items=1)
    again = store.migrate()
    assert again == store.migrate()
    assert store.get_conversation("t1", conv.id) is not None


def test_an_existing_database_is_brought_to_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = SqlHistory.sqlite(str(path))
    assert store.migrate() == CURRENT
    with store.engine.begin() as conn:
        versions = conn.execute(sa.text("SELECT version FROM smg_schema_version")).scalars().all()
    assert versions == [CURRENT]
    store.close()
    reopened = SqlHistory.sqlite(str(path))
    assert reopened.migrate() == CURRENT
    reopened.close()


def test_memory_bounds_drop_the_oldest_whole() -> None:
    now = [1000.0]
    store = MemoryHistory(lambda: now[0], max_responses=2, max_items=4, retention_secs=60)
    for i in range(3):
        store.put_responses([StoredResponse(f"resp_{i}", "t", int(now[0]), {})])
    assert store.get_response("t", "resp_0") is None and store.get_response("t", "resp_2") is not None
    old = conversation(store, items=3)
    new = conversation(store, items=1)
    assert store.get_conversation("t1", old.id) is not None
    store.add_items("t1", new.id, [message(new.id, "t1", "x")])  # 5 items > 4: the oldest conversation goes, whole
    assert store.get_conversation("t1", old.id) is None
    assert texts(store.list_items("t1", new.id, 10, "asc", None).items) == ["hello 0", "x"]  # type: ignore[union-attr]
    now[0] += 61
    assert store.get_conversation("t1", new.id) is None and store.get_response("t", "resp_2") is None
