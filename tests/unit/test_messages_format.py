"""Messages API shapes without I/O: requests to chat, chat answers and streams back."""

from __future__ import annotations

import json

import pytest

from smg.apis.anthropic.messages_format import MessagesStream, chat_request, message_from_chat
from smg.http.errors import GatewayError
from smg.http.schemas import MessagesRequest, validate


def translate(body: dict) -> dict:
    """As the handler does: the body typed at the edge (its 400s), then translated."""
    return chat_request(validate(MessagesRequest, body))


def events(raw: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]


def test_images_and_tool_choices_translate() -> None:
    chat = translate({
        "model": "m", "max_tokens": 5, "stream": True, "metadata": {"user_id": "u1"}, "tool_choice": {"type": "any"},
        "tools": [{"name": "t", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is it?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}]}],
    })  # fmt: skip
    assert chat["messages"][0]["content"] == [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
    ]
    assert chat["tool_choice"] == "required" and chat["user"] == "u1"
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": []}, "max_tokens"),
        ({"model": "m", "max_tokens": 0, "messages": []}, "max_tokens"),
        ({"model": "m", "max_tokens": 1, "messages": [{"role": "robot", "content": "x"}]}, "messages[0]"),
        (
            {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"text": "x"}]}]},
            "messages[0].content[0].type",  # a block without a type: refused at the edge, which names it
        ),
    ],
)
def test_bad_requests_name_the_field(body: dict, param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        translate(body)
    assert caught.value.status == 400 and caught.value.param == param


def test_a_chat_answer_with_tool_calls_becomes_tool_use_blocks() -> None:
    message = message_from_chat(
        {
            "choices": [{"finish_reason": "tool_calls", "message": {"content": "Let me look.", "tool_calls": [
                {"id": "call_1", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3},
        },
        "m",
    )  # fmt: skip
    assert message["stop_reason"] == "tool_use" and message["usage"] == {"input_tokens": 7, "output_tokens": 3}
    assert message["content"] == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}},
    ]


def test_a_stream_with_text_then_a_tool_call() -> None:
    stream = MessagesStream("m")
    raw = stream.start()
    raw += stream.chunk({"choices": [{"delta": {"content": "Let me "}}]})
    raw += stream.chunk({"choices": [{"delta": {"content": "look."}}]})
    raw += stream.chunk({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "weather"}}]}}]})
    raw += stream.chunk({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}}]})
    raw += stream.chunk({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'ty":1}'}}]}}]})
    raw += stream.chunk({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]})
    raw += stream.chunk({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 9}})
    raw += stream.finish()
    got = events(raw)
    assert [e["type"] for e in got] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    assert got[6]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "weather", "input": {}}
    assert "".join(e["delta"]["partial_json"] for e in got[7:9]) == '{"city":1}'
    assert got[10]["delta"]["stop_reason"] == "tool_use" and got[10]["usage"] == {"input_tokens": 4, "output_tokens": 9}
