"""Anthropic's Messages API end to end with the official `anthropic` client: translated for an
OpenAI-only worker, passed through to a worker that speaks it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.helpers import Proc, start_gateway, start_sim

KEY = "gateway-key"


@pytest.fixture(scope="module")
def openai_worker() -> Iterator[Proc]:
    proc = start_sim(1)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def native_worker() -> Iterator[Proc]:
    proc = start_sim(1, "--owned-by", "anthropic", "--model", "claude-sim")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def gateway(openai_worker: Proc, native_worker: Proc) -> Iterator[Proc]:
    proc = start_gateway([*openai_worker.urls, *native_worker.urls], "--api-key", KEY)
    yield proc
    proc.stop()


def client(gateway: Proc, key: str = KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)


def last_request(worker: Proc) -> dict[str, Any]:
    return httpx.get(worker.url + "/sim/requests").json()["requests"][-1]


def test_a_message_is_translated_to_a_chat_completion_and_back(gateway: Proc, openai_worker: Proc) -> None:
    message = client(gateway).messages.create(
        model="sim-model",
        max_tokens=6,
        system="Be terse.",
        stop_sequences=["END"],
        messages=[
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hi there"}]},
            {"role": "user", "content": [{"type": "text", "text": "How are "}, {"type": "text", "text": "you?"}]},
        ],
    )
    assert message.id.startswith("msg_") and message.role == "assistant" and message.model == "sim-model"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 6 and message.usage.input_tokens > 0
    sent = last_request(openai_worker)
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there"},
        {"role": "user", "content": "How are you?"},
    ]
    assert sent["body"]["max_tokens"] == 6 and sent["body"]["stop"] == ["END"]


def test_tool_use_and_results_become_tool_calls_and_tool_messages(gateway: Proc, openai_worker: Proc) -> None:
    client(gateway).messages.create(
        model="sim-model",
        max_tokens=4,
        tools=[{"name": "weather", "description": "the weather", "input_schema": {"type": "object"}}],
        tool_choice={"type": "tool", "name": "weather"},
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "rain"}]},
        ],
    )  # fmt: skip
    body = last_request(openai_worker)["body"]
    assert body["tools"] == [
        {"type": "function", "function": {"name": "weather", "description": "the weather", "parameters": {"type": "object"}}}
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assistant, tool = body["messages"][1], body["messages"][2]
    assert assistant["content"] == "Checking." and assistant["tool_calls"] == [
        {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    ]
    assert tool == {"role": "tool", "tool_call_id": "toolu_1", "content": "rain"}


def test_a_translated_stream_has_the_messages_events(gateway: Proc) -> None:
    with client(gateway).messages.stream(model="sim-model", max_tokens=5, messages=[{"role": "user", "content": "Hi"}]) as s:
        kinds = [event.type for event in s]
        final = s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop", "message_delta"} <= set(kinds)
    assert final.content[0].text and final.usage.output_tokens == 5 and final.stop_reason == "max_tokens"


def test_a_worker_that_speaks_messages_gets_the_request_unchanged(gateway: Proc, native_worker: Proc) -> None:
    api = client(gateway)
    message = api.messages.create(model="claude-sim", max_tokens=3, messages=[{"role": "user", "content": "native"}])
    assert message.content[0].text and message.usage.output_tokens == 3
    sent = last_request(native_worker)
    assert sent["path"] == "/v1/messages" and sent["body"]["messages"] == [{"role": "user", "content": "native"}]
    with api.messages.stream(model="claude-sim", max_tokens=3, messages=[{"role": "user", "content": "x"}]) as s:
        text = "".join(s.text_stream)
    assert text and last_request(native_worker)["body"]["stream"] is True


def test_errors_come_back_in_anthropics_shape(gateway: Proc, openai_worker: Proc) -> None:
    api = client(gateway)
    with pytest.raises(anthropic.NotFoundError) as missing:
        api.messages.create(model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    response = httpx.post(gateway.url + "/v1/messages", json={"model": "sim-model", "messages": []}, headers={"x-api-key": KEY})
    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "missing required parameter: 'max_tokens'"},
    }
    assert response.headers["x-smg-error-code"] == "missing_required_parameter"
    with pytest.raises(anthropic.AuthenticationError):
        client(gateway, "wrong").messages.create(model="sim-model", max_tokens=4, messages=[{"role": "user", "content": "x"}])
    httpx.post(openai_worker.url + "/sim/config", json={"die_mid_stream_rate": 1.0}).raise_for_status()
    try:
        response = httpx.post(
            gateway.url + "/v1/messages",
            json={"model": "sim-model", "max_tokens": 30, "stream": True, "messages": [{"role": "user", "content": "x"}]},
            headers={"x-api-key": KEY},
        )
    finally:
        httpx.post(openai_worker.url + "/sim/config", json={"die_mid_stream_rate": 0.0}).raise_for_status()
    assert response.status_code == 200 and response.text.startswith("event: message_start")
    assert "event: error" in response.text and "event: message_stop" not in response.text
