"""`smg.upstream.anthropic`: OpenAI chat completions and completions sent to a provider that
speaks only Anthropic's Messages API, and its answers, streams and errors read back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from smg.apis.anthropic.messages_format import MessagesStream, chat_request, message_from_chat
from smg.http.errors import GatewayError
from smg.http.schemas import MessagesRequest, validate
from smg.upstream.anthropic import ChatEvents, chat_answer, error_answer, messages_request

TOOLS = [{"type": "function", "function": {"name": "weather", "description": "look it up", "parameters": {"type": "object"}}}]
CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "be brief"},
    {"role": "developer", "content": [{"type": "text", "text": "use tools"}]},
    {"role": "user", "content": "weather in Oslo and Rome?"},
    {
        "role": "assistant",
        "content": "checking",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Rome"}'}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "warm"}]},
    {"role": "user", "content": "thanks"},
]


def test_a_chat_request_becomes_a_messages_request() -> None:
    out = messages_request(
        "chat",
        {
            "model": "claude",
            "messages": CONVERSATION,
            "max_completion_tokens": 50,
            "max_tokens": 9,
            "stop": "END",
            "temperature": 0.5,
            "user": "u-1",
            "tools": TOOLS,
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "stream": True,
            "seed": 3,
        },
    )
    assert out["system"] == "be brief\n\nuse tools"
    assert [t["role"] for t in out["messages"]] == ["user", "assistant", "user"]
    assistant, results = out["messages"][1]["content"], out["messages"][2]["content"]
    assert assistant[0] == {"type": "text", "text": "checking"}
    assert assistant[1] == {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}}
    # both tool results and the next user message are one user turn, as Anthropic requires
    assert [b["type"] for b in results] == ["tool_result", "tool_result", "text"]
    assert results[1] == {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "warm"}]}
    assert out["max_tokens"] == 50 and out["stop_sequences"] == ["END"] and out["temperature"] == 0.5
    assert out["metadata"] == {"user_id": "u-1"} and out["stream"] is True and "seed" not in out
    assert out["tools"] == [{"name": "weather", "input_schema": {"type": "object"}, "description": "look it up"}]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


def test_anthropic_requires_max_tokens_so_a_default_is_sent() -> None:
    out = messages_request("chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert out["max_tokens"] == 4096 and "tool_choice" not in out and "system" not in out


def test_images_go_as_base64_or_url_sources() -> None:
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    blocks = messages_request("chat", {"model": "m", "messages": [{"role": "user", "content": parts}]})["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0"}}
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}


def test_a_completion_is_one_user_turn() -> None:
    out = messages_request("completions", {"model": "m", "prompt": ["once upon"], "max_tokens": 3, "stop": ["\n"]})
    assert out["messages"] == [{"role": "user", "content": "once upon"}]
    assert out["max_tokens"] == 3 and out["stop_sequences"] == ["\n"]


@pytest.mark.parametrize(
    ("route", "request_", "param"),
    [
        ("chat", {"n": 2}, "n"),
        ("chat", {"logprobs": True}, "logprobs"),
        ("chat", {"response_format": {"type": "json_object"}}, "response_format"),
        ("chat", {"tools": [{"type": "code_interpreter"}]}, "tools[0]"),
        (
            "chat",
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages[0].content[0]",
        ),
        ("completions", {"prompt": ["one", "two"]}, "prompt"),
        ("completions", {"prompt": [1, 2, 3]}, "prompt"),
        ("completions", {"prompt": "x", "echo": True}, "echo"),
        ("chat", {"temperature": 1.5}, "temperature"),
        ("chat", {"top_logprobs": 2}, "top_logprobs"),
        ("chat", {"logit_bias": {"50256": -100}}, "logit_bias"),
        ("chat", {"reasoning_effort": "high"}, "reasoning_effort"),
        ("chat", {"modalities": ["text", "audio"]}, "modalities"),
        ("chat", {"tools": TOOLS, "tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}, "tool_choice"),
    ],
)
def test_what_has_no_messages_counterpart_is_a_400_naming_the_field(route: str, request_: dict[str, Any], param: str) -> None:
    base: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]} if route == "chat" else {"model": "m"}
    with pytest.raises(GatewayError) as refused:
        messages_request(route, {**base, **request_})
    assert refused.value.status == 400 and refused.value.param == param
    assert refused.value.code == "unsupported_by_provider" and "Anthropic provider" in refused.value.message


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": "only a system prompt"}],
        [{"role": "narrator", "content": "x"}],
        "not a list",
    ],
)
def test_malformed_chat_messages_are_400s(messages: Any) -> None:
    with pytest.raises(GatewayError) as refused:
        messages_request("chat", {"model": "m", "messages": messages})
    assert refused.value.status == 400


def test_what_anthropic_would_refuse_is_made_acceptable() -> None:
    """A history's malformed tool arguments are kept as text; a prefill loses its trailing
    space; a refusal part is text; a tool result keeps its image; a completion's default
    length is OpenAI's."""
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{bad"}}]},
        {"role": "tool", "tool_call_id": "c", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I would rather "}]},
    ]
    out = messages_request("chat", {"model": "m", "messages": messages})
    assert out["messages"][1]["content"] == [{"type": "tool_use", "id": "c", "name": "f", "input": {"_raw": "{bad"}}]
    assert out["messages"][2]["content"][0]["content"] == [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]
    assert out["messages"][3]["content"] == [{"type": "text", "text": "I would rather"}]
    assert messages_request("completions", {"model": "m", "prompt": "hi"})["max_tokens"] == 16


def test_the_two_translations_agree_a_chat_request_survives_the_round_trip() -> None:
    """chat -> Messages (this module) -> chat (`messages_format`, the Messages API's own)."""
    chat = {"model": "m", "messages": CONVERSATION, "max_tokens": 20, "tools": TOOLS, "tool_choice": "auto"}
    back = chat_request(validate(MessagesRequest, messages_request("chat", chat)))
    assert back["messages"][0] == {"role": "system", "content": "be brief\n\nuse tools"}
    assert back["messages"][1:3] == [CONVERSATION[2], {**CONVERSATION[3], "content": "checking"}]
    assert back["messages"][3:5] == [CONVERSATION[4], {**CONVERSATION[5], "content": "warm"}]
    assert back["messages"][5] == CONVERSATION[6]
    assert back["max_tokens"] == 20 and back["tool_choice"] == "auto"
    assert back["tools"][0]["function"] == TOOLS[0]["function"]


MESSAGE = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 10, "cache_read_input_tokens": 90, "cache_creation_input_tokens": 5, "output_tokens": 7},
}


def test_a_message_becomes_a_chat_completion_with_openai_usage() -> None:
    chat = chat_answer("chat", MESSAGE, 1700000000)
    choice = chat["choices"][0]
    assert chat["object"] == "chat.completion" and chat["model"] == "claude-x" and chat["created"] == 1700000000
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Let me look."
    assert choice["message"]["reasoning_content"] == "hmm"
    call = choice["message"]["tool_calls"][0]
    assert call["id"] == "toolu_1" and call["function"] == {"name": "weather", "arguments": '{"city": "Oslo"}'}
    # Anthropic counts cached prompt tokens apart from input_tokens; OpenAI counts them in
    assert chat["usage"] == {
        "prompt_tokens": 105,
        "completion_tokens": 7,
        "total_tokens": 112,
        "prompt_tokens_details": {"cached_tokens": 90},
    }
    completion = chat_answer("completions", {**MESSAGE, "stop_reason": "max_tokens"}, 1)
    assert completion["object"] == "text_completion" and completion["choices"][0] == {
        "index": 0,
        "text": "Let me look.",
        "finish_reason": "length",
        "logprobs": None,
    }


@pytest.mark.parametrize("answer", [[], {"type": "message"}, {"content": "text"}, {"content": ["x"]}])
def test_an_answer_that_is_not_a_message_is_a_502(answer: Any) -> None:
    with pytest.raises(GatewayError) as bad:
        chat_answer("chat", answer, 0)
    assert bad.value.status == 502 and bad.value.code == "upstream_invalid_response"


def sse(kind: str, **payload: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **payload})}\n\n".encode()


STREAM = [
    sse(
        "message_start",
        message={
            **MESSAGE,
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 90, "output_tokens": 1},
        },
    ),
    sse("ping"),
    sse("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""}),
    sse("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "hmm"}),
    sse("content_block_stop", index=0),
    sse("content_block_start", index=1, content_block={"type": "text", "text": ""}),
    sse("content_block_delta", index=1, delta={"type": "text_delta", "text": "Let me"}),
    sse("content_block_delta", index=1, delta={"type": "text_delta", "text": " look."}),
    sse("content_block_stop", index=1),
    sse("content_block_start", index=2, content_block={"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}),
    sse("content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": '{"city": '}),
    sse("content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": '"Oslo"}'}),
    sse("content_block_stop", index=2),
    sse("message_delta", delta={"stop_reason": "tool_use", "stop_sequence": None}, usage={"output_tokens": 7}),
    sse("message_stop"),
]


def chunks_of(out: bytes) -> list[Any]:
    datas = [line[6:] for line in out.split(b"\n") if line.startswith(b"data: ")]
    assert datas[-1] == b"[DONE]"
    return [json.loads(d) for d in datas[:-1]]


def accumulate(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What an OpenAI client makes of a chat stream."""
    message: dict[str, Any] = {"content": "", "reasoning_content": "", "tool_calls": {}}
    finish = usage = None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            delta = choice["delta"]
            message["content"] += delta.get("content") or ""
            message["reasoning_content"] += delta.get("reasoning_content") or ""
            for call in delta.get("tool_calls") or []:
                into = message["tool_calls"].setdefault(call["index"], {"id": None, "name": "", "arguments": ""})
                into["id"] = call.get("id") or into["id"]
                into["name"] += call.get("function", {}).get("name") or ""
                into["arguments"] += call.get("function", {}).get("arguments") or ""
            finish = choice["finish_reason"] or finish
    return {"message": message, "finish": finish, "usage": usage}


@pytest.mark.parametrize("split", ["whole", "per event"])
def test_a_stream_says_what_the_whole_answer_says(split: str) -> None:
    events = ChatEvents("chat", 1700000000, include_usage=True)
    pieces = [b"".join(STREAM)] if split == "whole" else STREAM
    out = b"".join(events.feed(piece) for piece in pieces) + events.finish()
    assert events.failure is None and events.done
    chunks = chunks_of(out)
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    streamed = accumulate(chunks)
    whole = chat_answer("chat", MESSAGE, 1700000000)
    message = whole["choices"][0]["message"]
    assert streamed["message"]["content"] == message["content"]
    assert streamed["message"]["reasoning_content"] == message["reasoning_content"]
    call = streamed["message"]["tool_calls"][0]
    assert (call["id"], call["name"], json.loads(call["arguments"])) == ("toolu_1", "weather", {"city": "Oslo"})
    assert streamed["finish"] == "tool_calls"
    assert streamed["usage"] == {
        "prompt_tokens": 100,
        "completion_tokens": 7,
        "total_tokens": 107,
        "prompt_tokens_details": {"cached_tokens": 90},
    }


def test_the_round_trip_of_a_stream_keeps_text_and_tool_calls() -> None:
    """Messages events -> chat chunks (this module) -> Messages events (`messages_format`)."""
    events = ChatEvents("chat", 0, include_usage=True)
    chunks = chunks_of(events.feed(b"".join(STREAM)))
    back = MessagesStream("claude-x")
    out = back.start() + b"".join(back.chunk(c) for c in chunks) + back.finish()
    datas = [json.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: ")]
    text = "".join(d["delta"].get("text", "") for d in datas if d["type"] == "content_block_delta")
    arguments = "".join(d["delta"].get("partial_json", "") for d in datas if d["type"] == "content_block_delta")
    assert text == "Let me look." and json.loads(arguments) == {"city": "Oslo"}
    assert datas[-2]["delta"]["stop_reason"] == "tool_use" and datas[-2]["usage"]["output_tokens"] == 7


def test_a_completion_stream_carries_text_choices() -> None:
    events = ChatEvents("completions", 0, include_usage=False)
    chunks = chunks_of(events.feed(b"".join(STREAM)))
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Let me look."
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls" and all("usage" not in c for c in chunks)


def test_a_stream_that_breaks_leaves_its_reason() -> None:
    overloaded = ChatEvents("chat", 0, include_usage=False)
    out = overloaded.feed(STREAM[0] + sse("error", error={"type": "overloaded_error", "message": "Overloaded"}) + STREAM[6])
    assert overloaded.failure is not None and overloaded.failure.status == 503 and overloaded.failure.code == "overloaded_error"
    assert b"Let me" not in out  # nothing after the error event
    cut = ChatEvents("chat", 0, include_usage=False)
    cut.feed(b"".join(STREAM[:8]))
    cut.finish()
    assert cut.failure is not None and cut.failure.code == "upstream_stream_incomplete"
    garbled = ChatEvents("chat", 0, include_usage=False)
    garbled.feed(b"event: message_start\ndata: {not json\n\n")
    assert garbled.failure is not None and garbled.failure.code == "upstream_invalid_response"


def test_anthropic_errors_become_openai_errors() -> None:
    status, body = error_answer(529, b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')
    assert status == 503 and json.loads(body)["error"] == {
        "type": "server_error",
        "code": "overloaded_error",
        "message": "Overloaded",
        "param": None,
    }
    status, body = error_answer(429, b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}')
    assert status == 429 and json.loads(body)["error"]["type"] == "rate_limit_error"
    status, body = error_answer(502, b"<html>bad gateway</html>")
    assert status == 502 and "answered 502" in json.loads(body)["error"]["message"]


def test_the_answers_of_both_translations_agree() -> None:
    """Messages -> chat (this module) -> Messages (`messages_format`): text, tool call, stop reason."""
    back = message_from_chat(chat_answer("chat", MESSAGE, 0), "claude-x")
    assert [b["type"] for b in back["content"]] == ["text", "tool_use"]
    assert back["content"][1]["input"] == {"city": "Oslo"} and back["stop_reason"] == "tool_use"
