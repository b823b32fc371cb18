"""A stream and the whole answer agree (`smg.generation.outputs`): for random token sequences cut
into random engine chunks, the streamed chat chunks fold to the non-streamed message (content,
reasoning, tool calls, finish reason), and a streamed completion's and `/generate`'s text is the
whole answer's. Each stage (detokenizer, stop strings, reasoning and tool-call parsers) promises
chunking-independence; this checks that the pipeline keeps the promise end to end."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smg.generation.outputs import complete_response, start_stream
from smg.generation.requests import PipelineOptions, Prepared, prepare_chat, prepare_completion, prepare_generate
from smg.generation.types import EngineChunk, EngineComplete, EngineOutput
from smg.simworker.grpc_model import load_shipped_tokenizer
from smg.tokenization.loader import ModelTokenizer

TOK: ModelTokenizer = load_shipped_tokenizer()
EOS = 3986
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}

# Pieces a model's output is made of here: prose, multi-byte characters, the reasoning and
# tool-call markup, JSON fragments, whitespace; each encoded alone so the ids cross their joins.
PIECES = [
    "Hello",
    " world",
    ", and",
    " ok.",
    "\n",
    "\n\n",
    " ",
    "é",
    "日本",
    "😀",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    '{"name": "other", "arguments": {"x": [1, 2]}}',
    '{"name": "get_w',
    '"}',
    "{",
    "STOP",
    "ST",
    "OP",
    # whole blocks, so calls and thoughts are common rather than lucky
    "<think>\nlet me see 日本\n</think>\n\n",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris 😀"}}\n</tool_call>',
    '<tool_call>\n{"name": "other", "arguments": {}}\n</tool_call>\n',
]
PIECE_IDS = [TOK.encode(piece, add_special_tokens=False) for piece in PIECES]
STOPS = ["STOP", "\n\n", "ok", "😀", "日"]

sequences = st.lists(
    st.one_of(
        st.sampled_from(PIECE_IDS),
        st.sampled_from(PIECE_IDS[-3:]),
        st.lists(st.integers(0, TOK.total_vocab_size - 1), min_size=1, max_size=3),  # anything at all
    ),
    max_size=24,
).map(lambda parts: [token for part in parts for token in part])
chunk_sizes = st.lists(st.integers(1, 6), min_size=1, max_size=8)
stop_lists = st.lists(st.sampled_from(STOPS), max_size=3, unique=True)


def chunks(ids: list[int], sizes: list[int]) -> list[EngineChunk]:
    out: list[EngineChunk] = []
    at = 0
    for size in itertools.cycle(sizes):
        if at >= len(ids):
            return out
        out.append(EngineChunk(0, ids[at : at + size], prompt_tokens=5, completion_tokens=min(at + size, len(ids))))
        at += size
    return out


def stream(p: Prepared, ids: list[int], sizes: list[int], finish: str) -> list[dict[str, Any]]:
    builder = start_stream(p, TOK, created=1, response_id="r")
    events: list[dict[str, Any]] = []
    outputs: list[EngineOutput] = [*chunks(ids, sizes), EngineComplete(0, ids, finish, 5, len(ids))]
    for output in outputs:
        if builder.stopped:
            break
        events += builder.feed(output)
    return events + builder.finish()


def fold(events: list[dict[str, Any]]) -> tuple[str, str, list[tuple[str, str]], str | None]:
    content, reasoning, finish = "", "", None
    calls: dict[int, list[str]] = {}
    for event in events:
        for choice in event["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            reasoning += delta.get("reasoning_content") or ""
            for call in delta.get("tool_calls") or []:
                if "id" in call:
                    calls[call["index"]] = [call["function"]["name"], ""]
                calls[call["index"]][1] += call["function"]["arguments"]
            finish = choice["finish_reason"] or finish
    return content, reasoning, [(name, args) for name, args in (calls[i] for i in sorted(calls))], finish


@settings(max_examples=300)
@given(ids=sequences, sizes=chunk_sizes, stops=stop_lists, finish=st.sampled_from(["stop", "length"]), tools=st.booleans())
@pytest.mark.parametrize("model_id", ["Qwen/Qwen3-8B", "plain-model"])
def test_chat_stream_folds_to_the_whole_answer(
    model_id: str, ids: list[int], sizes: list[int], stops: list[str], finish: str, tools: bool
) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "stop": stops or None}
    if tools:
        body["tools"] = [WEATHER]
    p = prepare_chat(body, TOK, PipelineOptions(), model_id=model_id)
    streamed = fold(stream(p, ids, sizes, finish))
    answer = complete_response(p, TOK, [EngineComplete(0, ids, finish, 5, len(ids))], created=1, response_id="r")
    assert isinstance(answer, dict)
    choice = answer["choices"][0]
    message = choice["message"]
    whole = (
        message["content"] or "",
        message.get("reasoning_content", ""),
        [(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls", [])],
        choice["finish_reason"],
    )
    assert streamed == whole


@settings(max_examples=200)
@given(ids=sequences, sizes=chunk_sizes, stops=stop_lists, echo=st.booleans())
def test_completion_and_generate_streams_match_the_whole(ids: list[int], sizes: list[int], stops: list[str], echo: bool) -> None:
    p = prepare_completion(
        {"prompt": "x", "stream": True, "stop": stops or None, "echo": echo}, TOK, PipelineOptions(), model_id="m"
    )
    text = "".join(c["text"] for e in stream(p, ids, sizes, "length") for c in e["choices"])
    answer = complete_response(p, TOK, [EngineComplete(0, ids, "length", 5, len(ids))], created=1, response_id="r")
    assert isinstance(answer, dict) and text == answer["choices"][0]["text"]

    g = prepare_generate(
        {"text": "x", "stream": True, "sampling_params": {"stop": stops or None}}, TOK, PipelineOptions(), model_id="m"
    )
    events = stream(g, ids, sizes, "length")
    whole = complete_response(g, TOK, [EngineComplete(0, ids, "length", 5, len(ids))], created=1, response_id="r")
    assert isinstance(whole, dict)
    assert events[-1]["text"] == whole["text"] and events[-1]["meta_info"]["finish_reason"] == whole["meta_info"]["finish_reason"]
