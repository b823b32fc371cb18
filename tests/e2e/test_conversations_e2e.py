"""The Conversations API end to end: the official `openai` client against a real gateway process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import Proc, start_gateway

ADMIN = "admin-key"


@pytest.fixture(scope="module")
def gateway(worker: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    db = tmp_path_factory.mktemp("history") / "history.db"
    proc = start_gateway(
        worker.urls,
        "--api-key", ADMIN, "--tenant-api-key", "alpha:alpha-key", "--tenant-api-key", "beta:beta-key",
        "--history-db-path", str(db),
    )  # fmt: skip
    yield proc
    proc.stop()


def client(gateway: Proc, key: str = "alpha-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def test_conversation_crud(gateway: Proc) -> None:
    api = client(gateway)
    conv = api.conversations.create(
        items=[{"type": "message", "role": "user", "content": "hello"}], metadata={"topic": "greetings"}
    )
    assert conv.id.startswith("conv_") and conv.object == "conversation" and conv.metadata == {"topic": "greetings"}
    assert api.conversations.retrieve(conv.id).created_at == conv.created_at
    updated = api.conversations.update(conv.id, metadata={"topic": "farewells"})
    assert updated.metadata == {"topic": "farewells"}
    deleted = api.conversations.delete(conv.id)
    assert deleted.id == conv.id and deleted.deleted and deleted.object == "conversation.deleted"
    with pytest.raises(openai.NotFoundError):
        api.conversations.retrieve(conv.id)


def test_items_are_added_listed_paginated_read_and_deleted(gateway: Proc) -> None:
    api = client(gateway)
    conv = api.conversations.create(items=[{"type": "message", "role": "user", "content": "first"}])
    added = api.conversations.items.create(
        conv.id,
        items=[
            {"type": "message", "role": "assistant", "content": "second"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "third"}]},
        ],
    )
    assert [item.content[0].text for item in added.data] == ["second", "third"]  # type: ignore[union-attr]
    assert added.data[0].content[0].type == "output_text"  # type: ignore[union-attr]
    everything = [item.content[0].text for item in api.conversations.items.list(conv.id, order="asc")]  # type: ignore[union-attr]
    assert everything == ["first", "second", "third"]
    page = api.conversations.items.list(conv.id, limit=2)  # newest first by default
    assert [i.content[0].text for i in page.data] == ["third", "second"] and page.has_more  # type: ignore[union-attr]
    rest = api.conversations.items.list(conv.id, limit=2, after=page.data[-1].id)
    assert [i.content[0].text for i in rest.data] == ["first"] and not rest.has_more  # type: ignore[union-attr]
    auto = [i.content[0].text for i in api.conversations.items.list(conv.id, limit=1)]  # type: ignore[union-attr]
    assert auto == ["third", "second", "first"]  # the client follows has_more/after itself
    second = added.data[0].id
    assert api.conversations.items.retrieve(second, conversation_id=conv.id).id == second
    assert api.conversations.items.delete(second, conversation_id=conv.id).id == conv.id
    with pytest.raises(openai.NotFoundError):
        api.conversations.items.retrieve(second, conversation_id=conv.id)


def test_tenants_see_only_their_own_conversations(gateway: Proc) -> None:
    alpha, beta = client(gateway, "alpha-key"), client(gateway, "beta-key")
    conv = alpha.conversations.create(items=[{"type": "message", "role": "user", "content": "secret"}])
    for attempt in (
        lambda: beta.conversations.retrieve(conv.id),
        lambda: beta.conversations.items.list(conv.id),
        lambda: beta.conversations.items.create(conv.id, items=[{"type": "message", "role": "user", "content": "x"}]),
        lambda: beta.conversations.delete(conv.id),
    ):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert alpha.conversations.retrieve(conv.id).id == conv.id


def test_bad_input_gets_clear_errors(gateway: Proc) -> None:
    headers = {"authorization": "Bearer alpha-key"}
    base = gateway.url + "/v1/conversations"
    conv = httpx.post(base, json={}, headers=headers).json()
    cases = [
        ("GET", f"{base}/conv_nope", None, 404, "not_found"),
        ("GET", f"{base}/{conv['id']}/items?limit=0", None, 400, "invalid_value"),
        ("GET", f"{base}/{conv['id']}/items?limit=abc", None, 400, "invalid_value"),
        ("GET", f"{base}/{conv['id']}/items?order=sideways", None, 400, "invalid_value"),
        ("GET", f"{base}/{conv['id']}/items?after=msg_unknown", None, 400, "invalid_value"),
        ("POST", base, {"metadata": {"k": 1}}, 400, "invalid_value"),
        ("POST", base, {"items": "not a list"}, 400, "invalid_value"),
        ("POST", base, {"items": [{"type": "message", "role": "robot", "content": "x"}]}, 400, "invalid_value"),
        ("POST", f"{base}/{conv['id']}/items", {}, 400, "missing_required_parameter"),
        ("POST", f"{base}/{conv['id']}/items", {"items": [{"role": "user", "content": "x" * (1024 * 1024 + 1)}]}, 413, "item_too_large"),
        ("PUT", f"{base}/{conv['id']}", {}, 405, "method_not_allowed"),
    ]  # fmt: skip
    for method, url, body, status, code in cases:
        response = httpx.request(method, url, json=body, headers=headers)
        assert response.status_code == status, (method, url, response.text)
        assert response.json()["error"]["code"] == code
    malformed = httpx.post(base, content=b"{not json", headers={**headers, "content-type": "application/json"})
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "invalid_json"
    assert httpx.post(base, json={}).status_code == 401


def test_history_none_turns_the_api_off_and_a_store_that_is_down_answers_503(worker: Proc) -> None:
    off = start_gateway(worker.urls, "--history-backend", "none")
    down = start_gateway(
        worker.urls, "--history-backend", "postgres", "--postgres-db-url", "postgresql://nobody@127.0.0.1:9/none",
        "--postgres-op-timeout-secs", "1",
    )  # fmt: skip
    try:
        response = httpx.post(off.url + "/v1/conversations", json={})
        assert response.status_code == 501 and response.json()["error"]["code"] == "storage_disabled"
        response = httpx.post(down.url + "/v1/conversations", json={})
        assert response.status_code == 503 and response.json()["error"]["code"] == "storage_unavailable"
        chat = client(down, "unused").chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "still routing"}], max_tokens=4
        )
        assert chat.choices[0].message.content
        metrics = httpx.get(down.metrics_url + "/metrics").text  # type: ignore[operator]
        assert 'smg_storage_operations_total{backend="postgres",operation="create_conversation",result="error"}' in metrics
    finally:
        off.stop()
        down.stop()


def test_conversations_survive_a_restart_with_sqlite(worker: Proc, tmp_path: Path) -> None:
    db = str(tmp_path / "history.db")
    first = start_gateway(worker.urls, "--history-db-path", db)
    try:
        conv = client(first).conversations.create(items=[{"type": "message", "role": "user", "content": "remember me"}])
    finally:
        first.stop()  # SIGKILL
    second = start_gateway(worker.urls, "--history-db-path", db)
    try:
        items = list(client(second).conversations.items.list(conv.id))
        assert [i.content[0].text for i in items] == ["remember me"]  # type: ignore[union-attr]
    finally:
        second.stop()


def test_a_database_lost_while_serving_answers_503_and_routing_goes_on(worker: Proc) -> None:
    import psycopg

    from tests.storage_backends import POSTGRES_ADMIN_URL, postgres_database

    with postgres_database() as url:
        gateway = start_gateway(
            worker.urls, "--history-backend", "postgres", "--postgres-db-url", url, "--postgres-op-timeout-secs", "2"
        )
        try:
            api = client(gateway, "unused")
            conv = api.conversations.create()
            with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
            response = httpx.get(gateway.url + f"/v1/conversations/{conv.id}")
            assert response.status_code == 503 and response.json()["error"]["code"] == "storage_unavailable"
            chat = api.chat.completions.create(model="sim-model", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
            assert chat.choices[0].message.content
            assert httpx.get(gateway.url + "/readiness").status_code == 200
        finally:
            gateway.stop()
