"""The simulated model behind `smg sim-worker --grpc` (sans-IO: token ids in, token ids out).

A gRPC worker receives token ids, not text, and the gateway in front of it does the
chat-template, detokenizing and the tool-call and reasoning parsing. So the simulated model
answers in token ids of the tokenizer it ships (`smg/simworker/model/`, served through
GetTokenizer), and its answers are chosen to exercise those gateway parsers:

- a prompt that offers tools (the shipped ChatML template lists them as JSON lines inside
  `<tools></tools>` in the system turn) is answered with a call to the first offered tool in
  the `qwen` format, `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, the
  arguments holding the tool's required fields with simple values by JSON-schema type;
  unless the last turn carries tool results (`<tool_response>`): then the model answers in text;
- with `reasoning`, the model thinks first: `<think>\\n...\\n</think>\\n\\n` then the answer
  (not when the prompt already closed an empty think block: `enable_thinking=false`);
- otherwise a few words of `VOCABULARY`, a deterministic function of the prompt ids, the
  seed and the sequence index (so n > 1 gives n different answers).

Every natural answer ends with the EOS `<|im_end|>`; `plan` applies the request's sampling
limits (max_new_tokens, stop_token_ids, ignore_eos) to it. Timing and caching are the shell's
(`smg.simworker.grpc_server`) with `SimEngine`, and so is the protocol: both engine services the
shell serves (SGLang's, vLLM's) share this model.
"""

from __future__ import annotations

import importlib.resources
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

from smg.simworker.engine import VOCABULARY
from smg.tokenization.loader import ModelTokenizer, load_model_tokenizer

EOS_TOKEN = "<|im_end|>"
DEFAULT_MAX_NEW_TOKENS = 128  # SGLang's default when the request sets none (the vLLM mode's too)
THINK_WORDS = 8
TOOLS_OPEN, TOOLS_CLOSE = "<tools>", "</tools>"
TURN_OPEN = "<|im_start|>"


def model_directory() -> str:
    """The shipped tokenizer directory (tokenizer.json, tokenizer_config.json, generation_config.json)."""
    return str(importlib.resources.files("smg.simworker") / "model")


def load_shipped_tokenizer() -> ModelTokenizer:
    return load_model_tokenizer(model_directory())


@dataclass(frozen=True)
class Sampling:
    """What the simulated model honours of a request's SamplingParams."""

    max_new_tokens: int | None = None
    stop_token_ids: frozenset[int] = frozenset()
    n: int = 1
    ignore_eos: bool = False


@dataclass
class Sequence:
    """One generated sequence (one `index` of an n > 1 request)."""

    index: int
    output_ids: list[int]
    finish_reason: str  # "stop" | "length"
    matched_token_id: int | None = None


class SimModel:
    """Deterministic answers in the shipped tokenizer's ids; see the module docstring."""

    def __init__(self, tokenizer: ModelTokenizer, *, seed: int = 0, reasoning: bool = False, answer_words: int = 16) -> None:
        eos = tokenizer.token_to_id(EOS_TOKEN)
        if eos is None:
            raise ValueError(f"the tokenizer has no {EOS_TOKEN} token")
        self.tokenizer = tokenizer
        self.eos_id = eos
        self.seed = seed
        self.reasoning = reasoning
        self.answer_words = answer_words

    # -- planning a request ------------------------------------------------

    def plan(self, prompt_ids: list[int], sampling: Sampling) -> list[Sequence]:
        """The n sequences the request yields, each cut by its limits."""
        limit = sampling.max_new_tokens if sampling.max_new_tokens is not None else DEFAULT_MAX_NEW_TOKENS
        text = self.decode_prompt(prompt_ids)
        out = []
        for index in range(max(1, sampling.n)):
            ids: list[int] = []
            finish, matched = "length", None
            if limit > 0:
                for token in self._tokens(prompt_ids, text, index, sampling.ignore_eos):
                    ids.append(token)
                    if token in sampling.stop_token_ids:
                        finish, matched = "stop", token
                        break
                    if token == self.eos_id and not sampling.ignore_eos:
                        finish, matched = "stop", token
                        break
                    if len(ids) >= limit:
                        break
            out.append(Sequence(index, ids, finish, matched))
        return out

    def _tokens(self, prompt_ids: list[int], text: str, index: int, ignore_eos: bool) -> Iterator[int]:
        """The natural answer, then (with ignore_eos) words without end."""
        yield from self.answer_ids(prompt_ids, index, text)
        if ignore_eos:
            rng = self._rng(prompt_ids, index, b"more")
            while True:
                yield from self.tokenizer.encode(" " + rng.choice(VOCABULARY), add_special_tokens=False)

    # -- the natural answer -------------------------------------------------

    def decode_prompt(self, prompt_ids: list[int]) -> str:
        return self.tokenizer.decode(prompt_ids, skip_special_tokens=False)

    def answer_text(self, prompt_ids: list[int], index: int = 0, text: str | None = None) -> str:
        """The answer before its EOS: thinking (with `reasoning`), then a tool call or words."""
        prompt = self.decode_prompt(prompt_ids) if text is None else text
        rng = self._rng(prompt_ids, index, b"answer")
        parts = []
        if self.reasoning and not prompt.rstrip().endswith("</think>"):
            thought = " ".join(rng.choice(VOCABULARY) for _ in range(THINK_WORDS))
            parts.append(f"<think>\n{thought}\n</think>\n\n")
        tool = offered_tool(prompt)
        if tool is not None and not answers_tool_result(prompt):
            call = {"name": tool.get("name", ""), "arguments": tool_arguments(tool.get("parameters"))}
            parts.append(f"<tool_call>\n{json.dumps(call)}\n</tool_call>")
        else:
            parts.append(" ".join(rng.choice(VOCABULARY) for _ in range(self.answer_words)))
        return "".join(parts)

    def answer_ids(self, prompt_ids: list[int], index: int = 0, text: str | None = None) -> list[int]:
        ids = self.tokenizer.encode(self.answer_text(prompt_ids, index, text), add_special_tokens=False)
        return [*ids, self.eos_id]

    def _rng(self, prompt_ids: list[int], index: int, purpose: bytes) -> random.Random:
        digest = blake2b(digest_size=8, key=str(self.seed).encode())
        digest.update(purpose)
        digest.update(index.to_bytes(4, "big"))
        for token in prompt_ids:
            digest.update(token.to_bytes(4, "big"))
        return random.Random(int.from_bytes(digest.digest(), "big"))


# -- reading the rendered prompt --------------------------------------------


def offered_tool(prompt: str) -> dict[str, Any] | None:
    """The first tool the prompt offers (its function object), or None.

    The shipped template writes each tool as one `tojson` line between `<tools>` and
    `</tools>`; a line that is not a JSON object is skipped, not an error (a prompt is
    whatever the client sent)."""
    start = prompt.find(TOOLS_OPEN)
    while start >= 0:  # the template's own prose mentions an empty "<tools></tools>" first
        end = prompt.find(TOOLS_CLOSE, start)
        if end < 0:
            return None
        tool = _first_tool(prompt[start + len(TOOLS_OPEN) : end])
        if tool is not None:
            return tool
        start = prompt.find(TOOLS_OPEN, end)
    return None


def _first_tool(block: str) -> dict[str, Any] | None:
    for line in block.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            tool = json.loads(line)
        except ValueError:
            continue
        if not isinstance(tool, dict):
            continue
        function = tool.get("function", tool)
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return function
    return None


def answers_tool_result(prompt: str) -> bool:
    """Whether the last turn before the generation prompt holds tool results."""
    turns = [turn for turn in prompt.split(TURN_OPEN) if turn.strip()]
    if turns and turns[-1].startswith("assistant") and "<|im_end|>" not in turns[-1]:
        turns = turns[:-1]  # the open generation prompt
    return bool(turns) and "<tool_response>" in turns[-1]


_SIMPLE_VALUES: dict[str, Any] = {
    "string": "example",
    "integer": 1,
    "number": 1.5,
    "boolean": True,
    "array": [],
    "object": {},
    "null": None,
}


def tool_arguments(parameters: Any) -> dict[str, Any]:
    """A value for each required field of a JSON-schema `parameters`, by its type (an enum's
    first value when it has one); an unusual schema yields what can be read of it."""
    if not isinstance(parameters, dict):
        return {}
    properties = parameters.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = parameters.get("required")
    if not isinstance(required, list):
        return {}
    arguments: dict[str, Any] = {}
    for name in required:
        if not isinstance(name, str):
            continue
        schema = properties.get(name)
        arguments[name] = _value_for(schema if isinstance(schema, dict) else {})
    return arguments


def _value_for(schema: dict[str, Any]) -> Any:
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    return _SIMPLE_VALUES.get(kind, "example") if isinstance(kind, str) else "example"
