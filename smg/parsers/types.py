"""What the output parsers emit, shared by the reasoning and tool-call parsers.

A streamed choice becomes a list of deltas: content text, reasoning text, or a tool-call delta
in the shape OpenAI streams ``choices[].delta.tool_calls[]`` (the first delta of a call carries
its index, id, type and name; the following ones only the index and a fragment of
``function.arguments``). Folding the deltas of a whole stream gives what a non-streamed
response carries, so one fold function serves both the gateway and the tests that check a
stream against the one-shot parse.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ContentDelta:
    """Text of the answer (``delta.content``)."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """Text of the model's thinking (``delta.reasoning_content``)."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """One streamed piece of a tool call.

    The first delta of a call has ``id`` and ``name`` set (and ``arguments`` "" or the first
    fragment); the following ones only ``index`` and an ``arguments`` fragment. The fragments of
    one index concatenate to the call's arguments, a JSON object as a string."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None

    @property
    def is_first(self) -> bool:
        return self.name is not None

    def to_openai(self) -> dict[str, Any]:
        """The ``delta.tool_calls[]`` element OpenAI streams for this piece."""
        if self.name is None:
            return {"index": self.index, "function": {"arguments": self.arguments}}
        return {
            "index": self.index,
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


Delta = ContentDelta | ReasoningDelta | ToolCallDelta


@dataclass(slots=True)
class ToolCall:
    """A whole tool call, as a non-streamed ``message.tool_calls[]`` element carries it."""

    index: int
    id: str
    name: str
    arguments: str

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(slots=True)
class ParsedOutput:
    """A whole choice's output, split: what a non-streamed response carries."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


def new_call_id() -> str:
    """``call_`` and 24 random hex digits, the shape of the reference's ids."""
    return "call_" + secrets.token_hex(12)


IdFactory = Callable[[], str]


def fold(deltas: Iterable[Delta]) -> ParsedOutput:
    """The whole output a stream of deltas adds up to (content, reasoning, calls by index)."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, ToolCall] = {}
    args: dict[int, list[str]] = {}
    for delta in deltas:
        if isinstance(delta, ContentDelta):
            content.append(delta.text)
        elif isinstance(delta, ReasoningDelta):
            reasoning.append(delta.text)
        else:
            if delta.name is not None:
                calls[delta.index] = ToolCall(delta.index, delta.id or "", delta.name, "")
                args[delta.index] = []
            args.setdefault(delta.index, []).append(delta.arguments)
    out = ParsedOutput("".join(content), "".join(reasoning))
    for index in sorted(calls):
        call = calls[index]
        call.arguments = "".join(args[index])
        out.tool_calls.append(call)
    return out


def merge_into(out: list[Delta], delta: Delta) -> None:
    """Append ``delta``, joining it to the last one when they are the same kind (and call)."""
    if out:
        last = out[-1]
        if isinstance(delta, ContentDelta) and isinstance(last, ContentDelta):
            out[-1] = ContentDelta(last.text + delta.text)
            return
        if isinstance(delta, ReasoningDelta) and isinstance(last, ReasoningDelta):
            out[-1] = ReasoningDelta(last.text + delta.text)
            return
        if (
            isinstance(delta, ToolCallDelta)
            and isinstance(last, ToolCallDelta)
            and delta.name is None
            and last.index == delta.index
        ):
            out[-1] = ToolCallDelta(last.index, last.arguments + delta.arguments, last.id, last.name)
            return
    out.append(delta)
