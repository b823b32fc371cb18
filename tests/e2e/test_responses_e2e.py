"""The Responses API end to end: the official `openai` client, a real gateway, a simulated
worker whose `/sim/requests` shows what the gateway sent it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import Proc, start_gateway, wait_until


@pytest.fixture(scope="module")
def gateway(worker: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    db = tmp_path_factory.mktemp("history") / "history.db"
    proc = start_gateway(
        worker.urls, "--tenant-api-key", "alpha:alpha-key", "--tenant-api-key", "beta:beta-key",
        "--history-db-path", str(db), "--max-background-responses", "2",
    )  # fmt: skip
    yield proc
    proc.stop()


def client(gateway: Proc, key: str = "alpha-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def last_sent(worker: Proc) -> dict[str, Any]:
    return httpx.get(worker.url + "/sim/requests").json()["requests"][-1]["body"]


def roles_and_texts(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in body["messages"]]


def test_three_turns_with_previous_response_id_send_the_whole_history(gateway: Proc, worker: Proc) -> None:
    api = client(gateway)
    first = api.responses.create(model="sim-model", input="My name is Ada.", instructions="Answer briefly.")
    assert first.id.startswith("resp_") and first.status == "completed" and first.output_text
    assert first.usage is not None and first.usage.output_tokens > 0
    assert roles_and_texts(last_sent(worker)) == [("system", "Answer briefly."), ("user", "My name is Ada.")]
    second = api.responses.create(model="sim-model", input="I like trains.", previous_response_id=first.id)
    third = api.responses.create(model="sim-model", input="What is my name?", previous_response_id=second.id)
    assert third.previous_response_id == second.id
    assert roles_and_texts(last_sent(worker)) == [  # instructions are not carried over, as OpenAI
        ("user", "My name is Ada."),
        ("assistant", first.output_text),
        ("user", "I like trains."),
        ("assistant", second.output_text),
        ("user", "What is my name?"),
    ]
    stored = api.responses.retrieve(third.id)
    assert stored.output_text == third.output_text and stored.previous_response_id == second.id
    items = list(api.responses.input_items.list(third.id))
    assert [i.content[0].text for i in items] == ["What is my name?"]  # type: ignore[union-attr]


def test_responses_continue_a_conversation_and_extend_it(gateway: Proc, worker: Proc) -> None:
    api = client(gateway)
    conv = api.conversations.create(items=[{"type": "message", "role": "user", "content": "Remember: blue."}])
    one = api.responses.create(model="sim-model", input="What colour?", conversation=conv.id)
    assert one.conversation is not None and one.conversation.id == conv.id
    two = api.responses.create(model="sim-model", input="Again?", conversation={"id": conv.id})
    assert roles_and_texts(last_sent(worker)) == [
        ("user", "Remember: blue."),
        ("user", "What colour?"),
        ("assistant", one.output_text),
        ("user", "Again?"),
    ]
    texts = [i.content[0].text for i in api.conversations.items.list(conv.id, order="asc")]  # type: ignore[union-attr]
    assert texts == ["Remember: blue.", "What colour?", one.output_text, "Again?", two.output_text]


def test_streaming_sends_the_event_sequence_and_stores_what_it_streamed(gateway: Proc, worker: Proc) -> None:
    api = client(gateway)
    first = api.responses.create(model="sim-model", input="Hello")
    events = list(api.responses.create(model="sim-model", input="Stream please", previous_response_id=first.id, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    done = events[-1].response  # type: ignore[union-attr]
    assert streamed and done.output_text == streamed and done.usage.output_tokens > 0
    assert api.responses.retrieve(done.id).output_text == streamed
    assert [m["role"] for m in last_sent(worker)["messages"]] == ["user", "assistant", "user"]


def test_store_false_keeps_nothing(gateway: Proc) -> None:
    api = client(gateway)
    response = api.responses.create(model="sim-model", input="forget me", store=False)
    assert response.status == "completed"
    with pytest.raises(openai.NotFoundError):
        api.responses.retrieve(response.id)


def test_tenants_cannot_read_or_continue_each_others_responses(gateway: Proc) -> None:
    alpha, beta = client(gateway, "alpha-key"), client(gateway, "beta-key")
    mine = alpha.responses.create(model="sim-model", input="private")
    with pytest.raises(openai.NotFoundError):
        beta.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        beta.responses.create(model="sim-model", input="continue", previous_response_id=mine.id)
    with pytest.raises(openai.NotFoundError):
        beta.responses.delete(mine.id)
    assert alpha.responses.retrieve(mine.id).id == mine.id


def test_bad_requests(gateway: Proc) -> None:
    api = client(gateway)
    conv = api.conversations.create()
    first = api.responses.create(model="sim-model", input="x")
    with pytest.raises(openai.BadRequestError, match="cannot both be given"):
        api.responses.create(model="sim-model", input="x", previous_response_id=first.id, conversation=conv.id)
    with pytest.raises(openai.NotFoundError):
        api.responses.create(model="sim-model", input="x", previous_response_id="resp_missing")
    with pytest.raises(openai.NotFoundError):
        api.responses.create(model="sim-model", input="x", conversation="conv_missing")
    with pytest.raises(openai.NotFoundError, match="model"):
        api.responses.create(model="no-such-model", input="x")
    with pytest.raises(openai.BadRequestError):
        api.responses.create(model="sim-model", input=[{"type": "message", "role": "robot", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        api.responses.create(model="sim-model", input="x", background=True, store=False)
    response = httpx.post(gateway.url + "/v1/responses", json={"input": "x"}, headers={"authorization": "Bearer alpha-key"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "missing_required_parameter"


def test_background_responses_complete_cancel_and_are_bounded(gateway: Proc, worker: Proc) -> None:
    api = client(gateway)
    queued = api.responses.create(model="sim-model", input="in the background", background=True)
    assert queued.status == "queued" and queued.background
    wait_until(lambda: api.responses.retrieve(queued.id).status == "completed", "background response completed")
    assert api.responses.retrieve(queued.id).output_text
    httpx.post(worker.url + "/sim/config", json={"tpot_ms": 2000}).raise_for_status()  # slow: 2 s a token
    try:
        slow = [api.responses.create(model="sim-model", input=f"slow {i}", background=True) for i in range(2)]
        with pytest.raises(openai.RateLimitError):  # --max-background-responses 2
            api.responses.create(model="sim-model", input="one too many", background=True)
        cancelled = api.responses.cancel(slow[0].id)
        assert cancelled.status == "cancelled"
        assert api.responses.retrieve(slow[0].id).status == "cancelled"
        api.responses.cancel(slow[1].id)
    finally:
        httpx.post(worker.url + "/sim/config", json={"tpot_ms": 1.0}).raise_for_status()
    with pytest.raises(openai.BadRequestError, match="only background"):
        api.responses.cancel(api.responses.create(model="sim-model", input="x").id)


def test_a_worker_dying_mid_stream_ends_with_response_failed(gateway: Proc, worker: Proc) -> None:
    api = client(gateway)
    httpx.post(worker.url + "/sim/config", json={"die_mid_stream_rate": 1.0}).raise_for_status()
    try:
        events = list(api.responses.create(model="sim-model", input="this will break", stream=True))
    finally:
        httpx.post(worker.url + "/sim/config", json={"die_mid_stream_rate": 0.0}).raise_for_status()
    assert events[0].type == "response.created" and events[-1].type == "response.failed"
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None and failed.error.code
    assert api.responses.retrieve(failed.id).status == "failed"  # stored as it ended, never as completed
