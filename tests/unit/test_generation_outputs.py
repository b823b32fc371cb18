"""Engine outputs turned into OpenAI answers and chunks, and `/generate` answers
(`smg.generation.outputs`), with the simulated worker's shipped tokenizer and model."""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from smg.generation.outputs import StreamBuilder, complete_response, embedding_response, start_stream
from smg.generation.requests import PipelineOptions, Prepared, prepare_chat, prepare_completion, prepare_generate
from smg.generation.types import EngineChunk, EngineComplete, EngineOutput, TokenLogprob
from smg.simworker.grpc_model import Sampling as SimSampling
from smg.simworker.grpc_model import SimModel, load_shipped_tokenizer
from smg.tokenization.loader import ModelTokenizer

EOS = 3986
OPTIONS = PipelineOptions()
USER = [{"role": "user", "content": "What's the weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def tok() -> ModelTokenizer:
    return load_shipped_tokenizer()


def ids_of(tok: ModelTokenizer, text: str, *, eos: bool = True) -> list[int]:
    return [*tok.encode(text, add_special_tokens=False), *([EOS] if eos else [])]


def counter_ids() -> Any:
    numbers = itertools.count()
    return lambda: f"call_{next(numbers)}"


def chat(tok: ModelTokenizer, model_id: str = "sim-model", **fields: Any) -> Prepared:
    p = prepare_chat({"model": "m", "messages": USER, **fields}, tok, OPTIONS, model_id=model_id)
    p.id_factory = counter_ids()
    return p


def chunked(ids: Sequence[int], sizes: Iterable[int], *, index: int = 0, prompt: int = 10, cached: int = 0) -> list[EngineChunk]:
    out, at = [], 0
    for size in itertools.cycle(sizes):
        if at >= len(ids):
            break
        piece = list(ids[at : at + size])
        at += len(piece)
        out.append(EngineChunk(index, piece, prompt_tokens=prompt, completion_tokens=at, cached_tokens=cached))
    return out


def complete(
    ids: Sequence[int], *, index: int = 0, finish: str = "stop", prompt: int = 10, cached: int = 0, **kw: Any
) -> EngineComplete:
    matched = kw.pop("matched_stop", ids[-1] if finish == "stop" and ids else None)
    return EngineComplete(index, list(ids), finish, prompt, len(ids), cached, matched_stop=matched, **kw)


def run(p: Prepared, tok: ModelTokenizer, outputs: Iterable[EngineOutput]) -> tuple[list[dict[str, Any]], StreamBuilder]:
    builder = start_stream(p, tok, created=123, response_id="resp-1")
    events: list[dict[str, Any]] = []
    for output in outputs:
        if builder.stopped:
            break
        events += builder.feed(output)
    events += builder.finish()
    return events, builder


def fold_chat(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per choice: content, reasoning, calls (by index: name, id, arguments), finish."""
    out: dict[int, dict[str, Any]] = {}
    for event in events:
        assert event["object"] == "chat.completion.chunk" and event["id"] == "resp-1" and event["created"] == 123
        for choice in event["choices"]:
            state = out.setdefault(choice["index"], {"content": "", "reasoning": "", "calls": {}, "finish": None, "role": None})
            delta = choice["delta"]
            state["role"] = state["role"] or delta.get("role")
            state["content"] += delta.get("content") or ""
            state["reasoning"] += delta.get("reasoning_content") or ""
            for call in delta.get("tool_calls") or []:
                entry = state["calls"].setdefault(call["index"], {"name": None, "id": None, "arguments": ""})
                if "id" in call:
                    entry["id"], entry["name"] = call["id"], call["function"]["name"]
                entry["arguments"] += call["function"]["arguments"]
            if choice["finish_reason"] is not None:
                assert state["finish"] is None, "one finish per choice"
                state["finish"] = choice["finish_reason"]
    return out


# -- chat ---------------------------------------------------------------------------------------


def test_plain_chat_stream_and_whole(tok: ModelTokenizer) -> None:
    p = chat(tok, stream=True)
    ids = ids_of(tok, "Hello there, how are you?")
    events, builder = run(p, tok, [*chunked(ids, [2]), complete(ids, cached=4)])
    first = events[0]["choices"][0]
    assert first == {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    last = events[-1]["choices"][0]
    assert last["delta"] == {} and last["finish_reason"] == "stop" and last["matched_stop"] == EOS
    folded = fold_chat(events)[0]
    assert folded["content"] == "Hello there, how are you?" and folded["role"] == "assistant"
    assert builder.stopped
    assert builder.usage == {
        "prompt_tokens": 10,
        "completion_tokens": len(ids),
        "total_tokens": 10 + len(ids),
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    assert all("usage" not in e for e in events)  # no include_usage: no usage chunk

    answer = complete_response(p, tok, [complete(ids, cached=4)], created=5, response_id="r")
    assert isinstance(answer, dict)
    assert answer["object"] == "chat.completion" and answer["id"] == "r" and answer["created"] == 5 and answer["model"] == "m"
    choice = answer["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello there, how are you?"}
    assert choice["finish_reason"] == "stop" and choice["matched_stop"] == EOS and choice["logprobs"] is None
    assert answer["usage"] == builder.usage


def test_usage_chunk_with_include_usage(tok: ModelTokenizer) -> None:
    p = chat(tok, stream=True, stream_options={"include_usage": True})
    ids = ids_of(tok, "Hi")
    events, _ = run(p, tok, [*chunked(ids, [1], prompt=7, cached=3), complete(ids, prompt=7, cached=3)])
    tail = events[-1]
    assert tail["choices"] == [] and tail["object"] == "chat.completion.chunk"
    assert tail["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": len(ids),
        "total_tokens": 7 + len(ids),
        "prompt_tokens_details": {"cached_tokens": 3},
    }


def test_multibyte_characters_never_split(tok: ModelTokenizer) -> None:
    text = "héllo 😀 世界 — ok"
    ids = ids_of(tok, text)
    p = chat(tok, stream=True)
    events, _ = run(p, tok, [*chunked(ids, [1]), complete(ids)])
    pieces = [c["delta"].get("content") for e in events for c in e["choices"] if c["delta"].get("content")]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


@pytest.mark.parametrize("sizes", [[1], [2], [3, 1], [5], [100]])
def test_stop_strings_across_token_boundaries(tok: ModelTokenizer, sizes: list[int]) -> None:
    p = chat(tok, stream=True, stop=["lazy dog", "###"])
    text = "The quick brown fox jumps over the lazy dog and keeps running"
    ids = ids_of(tok, text)
    assert len(tok.encode("lazy dog", add_special_tokens=False)) > 1
    events, builder = run(p, tok, [*chunked(ids, sizes), complete(ids)])
    folded = fold_chat(events)[0]
    assert folded["content"] == "The quick brown fox jumps over the "
    assert folded["finish"] == "stop" and events[-1]["choices"][0]["matched_stop"] == "lazy dog"
    assert builder.stopped  # the stop ended the only choice: the caller aborts the engine request
    whole = complete_response(p, tok, [complete(ids, finish="length")], created=1, response_id="r")
    assert isinstance(whole, dict)
    assert whole["choices"][0]["message"]["content"] == folded["content"]
    assert whole["choices"][0]["finish_reason"] == "stop" and whole["choices"][0]["matched_stop"] == "lazy dog"


def test_stop_string_kept_with_no_stop_trim(tok: ModelTokenizer) -> None:
    p = chat(tok, stream=True, stop="fox", no_stop_trim=True)
    ids = ids_of(tok, "the brown fox jumps")
    events, _ = run(p, tok, [*chunked(ids, [1]), complete(ids)])
    assert fold_chat(events)[0]["content"] == "the brown fox"


def test_output_after_a_stop_is_ignored(tok: ModelTokenizer) -> None:
    p = chat(tok, stream=True, stop="STOP", n=2)
    a = ids_of(tok, "alpha STOP beta gamma")
    b = ids_of(tok, "one two three")
    builder = start_stream(p, tok, created=123, response_id="resp-1")
    events: list[dict[str, Any]] = []
    for chunk in chunked(a, [2]):
        events += builder.feed(chunk)
    assert not builder.stopped  # choice 1 still runs
    events += builder.feed(complete(a, finish="length"))  # the engine's later word for choice 0: ignored
    for chunk in chunked(b, [3], index=1):
        events += builder.feed(chunk)
    events += builder.feed(complete(b, index=1))
    assert builder.stopped
    events += builder.finish()
    folded = fold_chat(events)
    assert folded[0]["content"] == "alpha " and folded[0]["finish"] == "stop"
    assert folded[1]["content"] == "one two three" and folded[1]["finish"] == "stop"
    # counted: what the engine said it generated, for both choices
    usage = builder.usage
    assert usage is not None and usage["completion_tokens"] == len(a) + len(b)


def test_hidden_stop_tokens_are_cut_even_when_special_tokens_show(tok: ModelTokenizer) -> None:
    p = chat(tok, stream=True, skip_special_tokens=False, stop_token_ids=[tok.encode("!", add_special_tokens=False)[0]])
    ids = ids_of(tok, "Wow! more")
    events, _ = run(p, tok, [*chunked(ids, [1]), complete(ids)])
    assert fold_chat(events)[0]["content"] == "Wow"
    whole = complete_response(p, tok, [complete(ids)], created=1, response_id="r")
    assert isinstance(whole, dict) and whole["choices"][0]["message"]["content"] == "Wow"
    # EOS shows with skip_special_tokens off only when the request keeps stop tokens
    keep = chat(tok, skip_special_tokens=False, no_stop_trim=True)
    whole = complete_response(keep, tok, [complete(ids_of(tok, "Hi"))], created=1, response_id="r")
    assert isinstance(whole, dict) and whole["choices"][0]["message"]["content"] == "Hi<|im_end|>"


def test_n2_interleaved_chunks(tok: ModelTokenizer) -> None:
    p = chat(tok, stream=True, n=2, stream_options={"include_usage": True})
    a, b = ids_of(tok, "first answer here"), ids_of(tok, "second one, longer than the first")
    ca, cb = chunked(a, [1], cached=6), chunked(b, [2], index=1, cached=6)
    interleaved: list[EngineOutput] = [x for pair in itertools.zip_longest(ca, cb) for x in pair if x is not None]
    interleaved += [complete(b, index=1, cached=6), complete(a, cached=6)]
    events, builder = run(p, tok, interleaved)
    assert builder.stopped
    folded = fold_chat(events)
    assert folded[0]["content"] == "first answer here" and folded[1]["content"] == "second one, longer than the first"
    assert folded[0]["role"] == folded[1]["role"] == "assistant"
    assert all(len(e["choices"]) <= 1 for e in events)
    for index in (0, 1):  # each choice opens with its role chunk, as its first output comes
        first = next(e for e in events if e["choices"] and e["choices"][0]["index"] == index)
        assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    usage = events[-1]["usage"]
    assert usage == {
        "prompt_tokens": 10,
        "completion_tokens": len(a) + len(b),
        "total_tokens": 10 + len(a) + len(b),
        "prompt_tokens_details": {"cached_tokens": 6},
    }
    whole = complete_response(p, tok, [complete(b, index=1, cached=6), complete(a, cached=6)], created=1, response_id="r")
    assert isinstance(whole, dict)
    assert [c["index"] for c in whole["choices"]] == [0, 1]
    assert [c["message"]["content"] for c in whole["choices"]] == [folded[0]["content"], folded[1]["content"]]
    assert whole["usage"] == usage


def test_stream_without_complete_has_no_finish(tok: ModelTokenizer) -> None:
    p = chat(tok, stream=True, stop="xyz")
    ids = ids_of(tok, "ends with xy", eos=False)
    events, builder = run(p, tok, chunked(ids, [1]))
    folded = fold_chat(events)[0]
    assert folded["content"] == "ends with xy"  # the held "xy" is flushed at the end
    assert folded["finish"] is None and not builder.stopped
    assert builder.finish() == []  # once


# -- reasoning and tool calls with the simulated model ----------------------------------------------


def sim_answer(tok: ModelTokenizer, p: Prepared, *, reasoning: bool) -> list[int]:
    model = SimModel(tok, reasoning=reasoning)
    return model.plan(p.engine.input_ids, SimSampling())[0].output_ids


@pytest.mark.parametrize("sizes", [[1], [4], [2, 7, 1]])
def test_reasoning_and_tool_call_from_the_sim_model(tok: ModelTokenizer, sizes: list[int]) -> None:
    p = chat(tok, "Qwen/Qwen3-8B", stream=True, tools=[WEATHER])
    ids = sim_answer(tok, p, reasoning=True)
    events, _ = run(p, tok, [*chunked(ids, sizes), complete(ids)])
    folded = fold_chat(events)[0]
    assert folded["reasoning"].strip() and "<think>" not in folded["reasoning"]
    assert folded["calls"] == {0: {"name": "get_weather", "id": "call_0", "arguments": '{"city":"example"}'}}
    assert folded["finish"] == "tool_calls"
    assert "<tool_call>" not in folded["content"] and folded["content"].strip() == ""
    whole = complete_response(p, tok, [complete(ids)], created=1, response_id="r")
    assert isinstance(whole, dict)
    message = whole["choices"][0]["message"]
    assert message["reasoning_content"] == folded["reasoning"]
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"example"}'}}
    ]
    assert whole["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_call_only_answer_has_null_content(tok: ModelTokenizer) -> None:
    p = chat(tok, "Qwen/Qwen3-8B", tools=[WEATHER])
    ids = sim_answer(tok, p, reasoning=False)
    whole = complete_response(p, tok, [complete(ids)], created=1, response_id="r")
    assert isinstance(whole, dict)
    message = whole["choices"][0]["message"]
    assert message["content"] is None and "reasoning_content" not in message and len(message["tool_calls"]) == 1


def test_tool_choice_none_leaves_calls_as_content(tok: ModelTokenizer) -> None:
    p = chat(tok, "Qwen/Qwen3-8B", tools=[WEATHER], tool_choice="none")
    ids = ids_of(tok, '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>')
    whole = complete_response(p, tok, [complete(ids)], created=1, response_id="r")
    assert isinstance(whole, dict)
    assert whole["choices"][0]["message"]["content"].startswith("<tool_call>")
    assert whole["choices"][0]["finish_reason"] == "stop"


def test_calls_to_unoffered_tools_stay_calls(tok: ModelTokenizer) -> None:
    p = chat(tok, "Qwen/Qwen3-8B", tools=[WEATHER])
    ids = ids_of(tok, '<tool_call>\n{"name": "launch_rockets", "arguments": {"n": 3}}\n</tool_call>')
    whole = complete_response(p, tok, [complete(ids)], created=1, response_id="r")
    assert isinstance(whole, dict)
    assert whole["choices"][0]["message"]["tool_calls"][0]["function"] == {"name": "launch_rockets", "arguments": '{"n":3}'}


def test_reasoning_when_the_prompt_opened_the_block(tok: ModelTokenizer) -> None:
    template = "{% for m in messages %}{{ m.content }}{% endfor %}<think>\n"
    p = prepare_chat({"messages": USER, "stream": True}, tok, PipelineOptions(chat_template=template), model_id="Qwen3-8B")
    ids = ids_of(tok, "pondering deeply</think>The answer.")
    events, _ = run(p, tok, [*chunked(ids, [1]), complete(ids)])
    folded = fold_chat(events)[0]
    assert (folded["reasoning"], folded["content"]) == ("pondering deeply", "The answer.")
    off = prepare_chat(
        {"messages": USER, "separate_reasoning": False}, tok, PipelineOptions(chat_template=template), model_id="Qwen3-8B"
    )
    whole = complete_response(off, tok, [complete(ids)], created=1, response_id="r")
    assert isinstance(whole, dict)
    assert whole["choices"][0]["message"] == {"role": "assistant", "content": "pondering deeply</think>The answer."}


@pytest.mark.parametrize("sizes", [[1], [3], [50]])
def test_tool_choice_required(tok: ModelTokenizer, sizes: list[int]) -> None:
    p = chat(tok, "Qwen3-8B", stream=True, tools=[WEATHER], tool_choice="required")
    output = '[{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "get_weather", "parameters": {"city": "Rome"}}]'
    ids = ids_of(tok, output)
    events, _ = run(p, tok, [*chunked(ids, sizes), complete(ids)])
    folded = fold_chat(events)[0]
    assert [(c["name"], c["arguments"]) for c in folded["calls"].values()] == [
        ("get_weather", '{"city":"Paris"}'),
        ("get_weather", '{"city":"Rome"}'),
    ]
    assert folded["content"] == "" and folded["finish"] == "tool_calls"
    whole = complete_response(p, tok, [complete(ids)], created=1, response_id="r")
    assert isinstance(whole, dict)
    assert [c["function"]["arguments"] for c in whole["choices"][0]["message"]["tool_calls"]] == [
        '{"city":"Paris"}',
        '{"city":"Rome"}',
    ]


@pytest.mark.parametrize("sizes", [[1], [2], [50]])
def test_tool_choice_named_function(tok: ModelTokenizer, sizes: list[int]) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    p = chat(tok, "Qwen3-8B", stream=True, tools=[WEATHER], tool_choice=choice)
    ids = ids_of(tok, ' {"city": "Paris",\n "unit": "C"}')
    events, _ = run(p, tok, [*chunked(ids, sizes), complete(ids)])
    folded = fold_chat(events)[0]
    assert folded["calls"] == {0: {"name": "get_weather", "id": "call_0", "arguments": '{"city":"Paris","unit":"C"}'}}
    assert folded["content"] == "" and folded["finish"] == "tool_calls"
    whole = complete_response(p, tok, [complete(ids)], created=1, response_id="r")
    assert isinstance(whole, dict)
    message = whole["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris","unit":"C"}'
    empty = complete_response(p, tok, [complete([EOS])], created=1, response_id="r")
    assert isinstance(empty, dict) and empty["choices"][0]["message"] == {"role": "assistant", "content": ""}


# -- logprobs -----------------------------------------------------------------------------------------


def synthetic_logprobs(ids: Sequence[int], k: int = 2) -> list[TokenLogprob]:
    return [
        TokenLogprob(t, -0.1 * (i + 1), [(t, -0.1 * (i + 1)), *[(t + j, -1.0 - j) for j in range(1, k)]])
        for i, t in enumerate(ids)
    ]


def test_chat_logprobs_shapes(tok: ModelTokenizer) -> None:
    p = chat(tok, stream=True, logprobs=True, top_logprobs=2)
    ids = ids_of(tok, "Hi there")
    lps = synthetic_logprobs(ids)
    chunks = chunked(ids, [1])
    for chunk in chunks:
        start = chunk.completion_tokens - len(chunk.token_ids)
        chunk.logprobs = lps[start : chunk.completion_tokens]
    events, _ = run(p, tok, [*chunks, complete(ids, logprobs=lps)])
    streamed = [entry for e in events for c in e["choices"] if c["logprobs"] for entry in c["logprobs"]["content"]]
    kept = ids[:-1]  # the EOS is a hidden stop token: not text, no logprob
    assert [entry["token"] for entry in streamed] == [tok.decode([t], skip_special_tokens=False) for t in kept]
    first = streamed[0]
    assert set(first) == {"token", "logprob", "bytes", "top_logprobs"}
    assert first["bytes"] == list(first["token"].encode()) and first["logprob"] == pytest.approx(-0.1)
    assert [set(t) for t in first["top_logprobs"]] == [{"token", "logprob", "bytes"}] * 2
    whole = complete_response(p, tok, [complete(ids, logprobs=lps)], created=1, response_id="r")
    assert isinstance(whole, dict)
    assert whole["choices"][0]["logprobs"]["content"] == streamed


def test_completion_logprobs_shape_and_echo(tok: ModelTokenizer) -> None:
    p = prepare_completion({"prompt": "Say:", "echo": True, "logprobs": 2, "stream": True}, tok, OPTIONS, model_id="m")
    ids = ids_of(tok, " hello world")
    lps = synthetic_logprobs(ids)
    whole = complete_response(p, tok, [complete(ids, logprobs=lps)], created=1, response_id="r")
    assert isinstance(whole, dict) and whole["object"] == "text_completion"
    choice = whole["choices"][0]
    assert choice["text"] == "Say: hello world"
    logprobs = choice["logprobs"]
    assert set(logprobs) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert "".join(logprobs["tokens"]) == " hello world"
    assert logprobs["text_offset"][0] == len("Say:")
    assert all(isinstance(t, dict) and len(t) == 2 for t in logprobs["top_logprobs"])
    chunks = chunked(ids, [2])
    for chunk in chunks:
        chunk.logprobs = lps[chunk.completion_tokens - len(chunk.token_ids) : chunk.completion_tokens]
    events, _ = run(p, tok, [*chunks, complete(ids)])
    assert all(e["object"] == "text_completion" for e in events)
    assert "".join(c["text"] for e in events for c in e["choices"]) == "Say: hello world"
    offsets = [o for e in events for c in e["choices"] if c["logprobs"] for o in c["logprobs"]["text_offset"]]
    assert offsets == logprobs["text_offset"]
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_completion_stream_with_usage(tok: ModelTokenizer) -> None:
    p = prepare_completion(
        {"prompt": "x", "stream": True, "stream_options": {"include_usage": True}, "stop": "b"}, tok, OPTIONS, model_id="m"
    )
    ids = ids_of(tok, "a b c")
    events, builder = run(p, tok, [*chunked(ids, [1], prompt=1), complete(ids, prompt=1)])
    assert "".join(c["text"] for e in events for c in e["choices"]) == "a "
    assert events[-2]["choices"][0]["finish_reason"] == "stop" and events[-2]["choices"][0]["matched_stop"] == "b"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["prompt_tokens"] == 1
    assert builder.stopped


# -- /generate -----------------------------------------------------------------------------------------


def test_generate_stream_is_cumulative(tok: ModelTokenizer) -> None:
    p = prepare_generate({"text": "Say", "stream": True, "rid": "rid-1"}, tok, OPTIONS, model_id="m")
    ids = ids_of(tok, " hello big world")
    events, builder = run(p, tok, [*chunked(ids, [2], prompt=2, cached=1), complete(ids, prompt=2, cached=1)])
    texts = [e["text"] for e in events]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
    assert texts[-1] == " hello big world"
    assert [i for e in events for i in e["output_ids"]] == ids  # the events' ids add up to the output
    assert all(e["meta_info"]["finish_reason"] is None for e in events[:-1])
    meta = events[-1]["meta_info"]
    assert meta == {
        "id": "resp-1",
        "finish_reason": {"type": "stop", "matched": EOS},
        "prompt_tokens": 2,
        "completion_tokens": len(ids),
        "cached_tokens": 1,
    }
    assert events[1]["meta_info"]["completion_tokens"] == 4 and events[-1]["index"] == 0
    assert builder.usage is not None and builder.usage["completion_tokens"] == len(ids)


def test_generate_stream_stop_string_and_length(tok: ModelTokenizer) -> None:
    p = prepare_generate({"text": "Say", "stream": True, "sampling_params": {"stop": "big"}}, tok, OPTIONS, model_id="m")
    ids = ids_of(tok, " hello big world")
    events, builder = run(p, tok, [*chunked(ids, [1]), complete(ids)])
    assert builder.stopped and events[-1]["text"] == " hello "
    assert events[-1]["meta_info"]["finish_reason"] == {"type": "stop", "matched": "big"}
    q = prepare_generate({"text": "Say", "stream": True}, tok, OPTIONS, model_id="m")
    cut = ids_of(tok, " hello", eos=False)
    events, _ = run(q, tok, [*chunked(cut, [1]), complete(cut, finish="length")])
    assert events[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": len(cut)}


def test_generate_whole_answers(tok: ModelTokenizer) -> None:
    p = prepare_generate(
        {"text": "Say", "return_logprob": True, "top_logprobs_num": 2, "return_text_in_logprobs": True},
        tok,
        OPTIONS,
        model_id="m",
    )
    p = dataclasses.replace(p, engine=dataclasses.replace(p.engine, request_id="gen-1"))
    ids = ids_of(tok, " hi")
    lps = synthetic_logprobs(ids)
    answer = complete_response(p, tok, [complete(ids, logprobs=lps, cached=2)], created=1, response_id="gen-1")
    assert isinstance(answer, dict)
    assert answer["text"] == " hi" and answer["output_ids"] == ids
    meta = answer["meta_info"]
    assert meta["id"] == "gen-1" and meta["finish_reason"] == {"type": "stop", "matched": EOS}
    assert meta["cached_tokens"] == 2 and meta["completion_tokens"] == len(ids)
    assert meta["output_token_logprobs"][0] == [pytest.approx(-0.1), ids[0], tok.decode([ids[0]], skip_special_tokens=False)]
    assert len(meta["output_top_logprobs"][0]) == 2 and len(meta["output_top_logprobs"][0][0]) == 3
    two = prepare_generate({"text": "Say", "sampling_params": {"n": 2}}, tok, OPTIONS, model_id="m")
    answers = complete_response(
        two,
        tok,
        [complete(ids, index=1), complete(ids_of(tok, " yo"), finish="abort", matched_stop=None)],
        created=1,
        response_id="g",
    )
    assert isinstance(answers, list) and [a["text"] for a in answers] == [" yo", " hi"]
    assert answers[0]["meta_info"]["finish_reason"] == {"type": "abort"}


# -- embeddings ------------------------------------------------------------------------------------------


def test_embedding_response() -> None:
    answer = embedding_response("emb", [0.5, -1.0], 3)
    assert answer == {
        "object": "list",
        "data": [{"object": "embedding", "embedding": [0.5, -1.0], "index": 0}],
        "model": "emb",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    packed = embedding_response("emb", [0.5, -1.0], 3, encoding_format="base64")["data"][0]["embedding"]
    assert struct.unpack("<2f", base64.b64decode(packed)) == (0.5, -1.0)
    json.dumps(answer)


def test_outputs_for_choices_not_asked_for_are_ignored_and_counts_held_to_the_tokens(tok: ModelTokenizer) -> None:
    """A hostile engine: a chunk for index 10**9 (n=1) must not grow the choices or reach the
    client, and a claimed completion count above what it sent is not charged."""
    prepared = chat(tok)
    stream = start_stream(prepared, tok, created=1, response_id="r")
    assert stream.feed(EngineChunk(index=10**9, token_ids=ids_of(tok, "evil", eos=False))) == []
    ids = ids_of(tok, "fine")
    events = stream.feed(EngineChunk(index=0, token_ids=ids, completion_tokens=4_000_000_000))
    events += stream.feed(EngineComplete(index=0, output_ids=ids, finish_reason="stop", completion_tokens=4_000_000_000))
    events += stream.finish()
    assert {choice["index"] for event in events for choice in event["choices"]} == {0}
    assert stream.usage is not None and stream.usage["completion_tokens"] == len(ids)
    whole = complete_response(
        prepared,
        tok,
        [
            EngineComplete(index=0, output_ids=ids, finish_reason="stop", completion_tokens=4_000_000_000),
            EngineComplete(index=7, output_ids=ids, finish_reason="stop"),
        ],
        created=1,
        response_id="r",
    )
    assert isinstance(whole, dict) and [c["index"] for c in whole["choices"]] == [0]
    assert whole["usage"]["completion_tokens"] == len(ids)


def test_a_generate_stream_carries_each_logprob_once(tok: ModelTokenizer) -> None:
    """The text is cumulative (SGLang's), the logprobs are not: the events' logprobs add up to one
    per token, so a long stream costs linear time."""
    prepared = prepare_generate({"text": "hello", "return_logprob": True, "stream": True}, tok, OPTIONS, model_id="sim-model")
    stream = start_stream(prepared, tok, created=1, response_id="r")
    ids = ids_of(tok, "one two three four five six", eos=False)
    events: list[dict[str, Any]] = []
    for position, token in enumerate(ids):
        lp = [TokenLogprob(token, -0.5)]
        events += stream.feed(EngineChunk(index=0, token_ids=[token], completion_tokens=position + 1, logprobs=lp))
    events += stream.feed(EngineComplete(index=0, output_ids=ids, finish_reason="length"))
    events += stream.finish()
    carried = [entry[1] for event in events for entry in event["meta_info"].get("output_token_logprobs", [])]
    assert carried == ids
