"""The simulated gRPC worker's model (`smg.simworker.grpc_model`): token ids in, token ids out."""

from __future__ import annotations

import json

import pytest

from smg.simworker.grpc_model import (
    Sampling,
    SimModel,
    answers_tool_result,
    load_shipped_tokenizer,
    offered_tool,
    tool_arguments,
)
from smg.tokenization.chat_template import tokenize_chat
from smg.tokenization.loader import ModelTokenizer

EOS = 3986
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "limit": {"type": "integer"},
                "exact": {"type": "boolean"},
                "mode": {"enum": ["fast", "slow"]},
                "score": {"type": ["null", "number"]},
                "optional": {"type": "string"},
            },
            "required": ["query", "limit", "exact", "mode", "score"],
        },
    },
}


@pytest.fixture(scope="module")
def tokenizer() -> ModelTokenizer:
    return load_shipped_tokenizer()


def prompt(tokenizer: ModelTokenizer, messages: list[dict[str, object]], tools: list[object] | None = None) -> list[int]:
    return tokenize_chat(tokenizer, messages, tools=tools, add_generation_prompt=True)[1]  # type: ignore[arg-type]


def test_answers_are_deterministic_per_prompt_seed_and_index(tokenizer: ModelTokenizer) -> None:
    model = SimModel(tokenizer, seed=0)
    ids = prompt(tokenizer, [{"role": "user", "content": "hello"}])
    first = model.plan(ids, Sampling())[0]
    assert first == SimModel(tokenizer, seed=0).plan(ids, Sampling())[0]
    assert first.finish_reason == "stop" and first.output_ids[-1] == EOS and first.matched_token_id == EOS
    assert SimModel(tokenizer, seed=1).plan(ids, Sampling())[0].output_ids != first.output_ids
    other = prompt(tokenizer, [{"role": "user", "content": "goodbye"}])
    assert model.plan(other, Sampling())[0].output_ids != first.output_ids
    text = tokenizer.decode(first.output_ids)
    assert len(text.split()) == 16 and "<" not in text


def test_limits_stop_ids_ignore_eos_and_n(tokenizer: ModelTokenizer) -> None:
    model = SimModel(tokenizer)
    ids = prompt(tokenizer, [{"role": "user", "content": "hello"}])
    whole = model.plan(ids, Sampling())[0].output_ids
    cut = model.plan(ids, Sampling(max_new_tokens=4))[0]
    assert cut.output_ids == whole[:4] and cut.finish_reason == "length"
    assert model.plan(ids, Sampling(max_new_tokens=0))[0].output_ids == []
    stop = model.plan(ids, Sampling(stop_token_ids=frozenset({whole[3]})))[0]
    assert stop.output_ids == whole[: whole.index(whole[3]) + 1] and stop.matched_token_id == whole[3]
    long = model.plan(ids, Sampling(max_new_tokens=len(whole) + 20, ignore_eos=True))[0]
    assert len(long.output_ids) == len(whole) + 20 and long.finish_reason == "length"
    many = model.plan(ids, Sampling(n=3, max_new_tokens=8))
    assert [s.index for s in many] == [0, 1, 2]
    assert len({tuple(s.output_ids) for s in many}) == 3


def test_offered_tools_get_a_qwen_call_with_the_required_arguments(tokenizer: ModelTokenizer) -> None:
    model = SimModel(tokenizer)
    messages: list[dict[str, object]] = [{"role": "user", "content": "find it"}]
    ids = prompt(tokenizer, messages, tools=[TOOL])
    seq = model.plan(ids, Sampling())[0]
    assert seq.finish_reason == "stop" and seq.output_ids[-1] == EOS
    text = tokenizer.decode(seq.output_ids)
    assert text.startswith("<tool_call>\n{") and text.endswith("}\n</tool_call>")
    call = json.loads(text[len("<tool_call>\n") : -len("\n</tool_call>")])
    assert call == {"name": "lookup", "arguments": {"query": "example", "limit": 1, "exact": True, "mode": "fast", "score": 1.5}}
    # a tool result in the last turn: the model answers in text
    followup = [
        *messages,
        {"role": "assistant", "content": "", "tool_calls": [{"function": call}]},
        {"role": "tool", "content": "found"},
    ]
    answer = tokenizer.decode(model.plan(prompt(tokenizer, followup, tools=[TOOL]), Sampling())[0].output_ids)
    assert "<tool_call>" not in answer and answer.strip()


def test_reading_tools_out_of_odd_prompts() -> None:
    assert offered_tool("no tools here") is None
    assert offered_tool('<tools></tools> <tools>\nnot json\n[1]\n{"name": "bare"}\n</tools>') == {"name": "bare"}
    assert offered_tool('<tools>\n{"name": "unclosed"}') is None
    assert tool_arguments(None) == {} and tool_arguments({"required": "query"}) == {}
    assert tool_arguments({"required": ["x", 3], "properties": {"x": "odd"}}) == {"x": "example"}
    assert answers_tool_result("<|im_start|>user\n<tool_response>\nx\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert not answers_tool_result("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_reasoning_thinks_then_answers_unless_thinking_is_off(tokenizer: ModelTokenizer) -> None:
    model = SimModel(tokenizer, reasoning=True)
    ids = prompt(tokenizer, [{"role": "user", "content": "why?"}], tools=[TOOL])
    text = tokenizer.decode(model.plan(ids, Sampling())[0].output_ids)
    thought, _, answer = text.partition("\n</think>\n\n")
    assert thought.startswith("<think>\n") and len(thought.split()) == 9
    assert answer.startswith("<tool_call>\n")
    off = tokenize_chat(
        tokenizer, [{"role": "user", "content": "why?"}], add_generation_prompt=True, template_kwargs={"enable_thinking": False}
    )[1]
    assert "<think>" not in tokenizer.decode(model.plan(off, Sampling())[0].output_ids)
