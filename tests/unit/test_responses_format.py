"""Responses API shapes without I/O: history to chat messages, chat answers and streams back."""

from __future__ import annotations

import json

from smg.apis.openai.responses_format import (
    ResponseShell,
    StreamState,
    chat_messages,
    chat_tools,
    output_items,
)
from smg.http.schemas import ResponsesRequest, ResponsesTool
from smg.http.sse import SseReader


def test_history_with_tool_calls_becomes_chat_messages() -> None:
    items = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Use tools."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in "}, {"type": "input_text", "text": "Oslo?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call", "call_id": "call_2", "name": "time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "rain"},
        {"type": "function_call_output", "call_id": "call_2", "output": {"hour": 9}},
        {"type": "reasoning", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Rain at nine."}]},
    ]  # fmt: skip
    messages = chat_messages("Be brief.", items)
    assert messages[:3] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Oslo?"},
    ]
    calls = messages[3]
    assert calls["role"] == "assistant" and [c["id"] for c in calls["tool_calls"]] == ["call_1", "call_2"]
    assert calls["tool_calls"][0]["function"] == {"name": "weather", "arguments": '{"city":"Oslo"}'}
    assert messages[4:] == [
        {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
        {"role": "tool", "tool_call_id": "call_2", "content": json.dumps({"hour": 9})},
        {"role": "assistant", "content": "Rain at nine."},
    ]


def test_images_keep_their_parts() -> None:
    item = {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": "data:image/png;base64,AA"}]}  # fmt: skip
    assert chat_messages(None, [item])[0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
    ]


def test_tools_and_answers_convert_both_ways() -> None:
    tools = [{"type": "function", "name": "weather", "parameters": {"type": "object"}}, {"type": "web_search"}]
    typed = [ResponsesTool.model_validate(tool) for tool in tools]
    assert chat_tools(typed) == [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    items = output_items(
        {"content": "Checking.", "tool_calls": [{"id": "call_9", "function": {"name": "weather", "arguments": "{}"}}]}
    )
    assert [i["type"] for i in items] == ["message", "function_call"]
    assert items[0]["content"][0] == {"type": "output_text", "text": "Checking.", "annotations": []}
    assert items[1]["call_id"] == "call_9" and items[1]["id"].startswith("fc_")


def test_sse_reader_joins_lines_split_across_chunks() -> None:
    reader = SseReader()
    assert reader.feed(b'data: {"a"') == []
    assert reader.feed(b":1}\n\ndata: [DO") == [b'{"a":1}']
    assert reader.feed(b"NE]\n\n") == [b"[DONE]"]


def test_stream_state_numbers_events_and_gathers_tool_calls() -> None:
    state = StreamState(ResponseShell("resp_1", "m", ResponsesRequest(store=True)))
    events = state.start()
    events += state.chunk({"choices": [{"delta": {"content": "Hel"}}]})
    events += state.chunk({"choices": [{"delta": {"content": "lo"}}]})
    events += state.chunk({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "wea"}}]}}]})
    events += state.chunk(
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "ther", "arguments": '{"c'}}]}}]}
    )
    events += state.chunk({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '":1}'}}]}}]})
    events += state.chunk({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    events += state.finish()
    response, last = state.completed()
    parsed = [json.loads(e.split(b"data: ", 1)[1]) for e in [*events, last]]
    assert [p["sequence_number"] for p in parsed] == list(range(len(parsed)))
    assert [p["type"] for p in parsed] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.output_item.added",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed",
    ]  # fmt: skip
    assert response["output"][0]["content"][0]["text"] == "Hello"
    call = response["output"][1]
    assert (call["call_id"], call["name"], call["arguments"]) == ("call_1", "weather", '{"c":1}')
    assert response["usage"]["total_tokens"] == 5 and response["status"] == "completed"


def test_a_stream_cut_by_its_length_limit_ends_incomplete() -> None:
    state = StreamState(ResponseShell("resp_2", "m", ResponsesRequest(max_output_tokens=2)))
    state.start()
    state.chunk({"choices": [{"delta": {"content": "Hi"}, "finish_reason": None}]})
    state.chunk({"choices": [{"delta": {}, "finish_reason": "length"}]})
    response, events = state.end(None)
    last = json.loads(events[-1].split(b"data: ", 1)[1])
    assert last["type"] == "response.incomplete" and response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete" and response["output"][0]["content"][0]["text"] == "Hi"


def test_a_stream_that_broke_off_ends_failed_with_its_error() -> None:
    state = StreamState(ResponseShell("resp_3", "m", ResponsesRequest()))
    state.start()
    state.chunk({"choices": [{"delta": {"content": "Hel"}}]})
    response, events = state.end({"code": "upstream_stream_error", "message": "worker died"})
    last = json.loads(events[-1].split(b"data: ", 1)[1])
    assert last["type"] == "response.failed" and last["response"]["status"] == "failed"
    assert last["response"]["error"] == {"code": "upstream_stream_error", "message": "worker died"}
    assert response["output"][0]["status"] == "incomplete" and response["incomplete_details"] is None
