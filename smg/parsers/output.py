"""One choice's whole output parsing: reasoning first, then tool calls in what is left.

The reference runs the reasoning parser on the generated text and the tool-call parser on the
content that comes out of it (a call written inside the thinking is thinking, not a call). This
chains the two streaming parsers the same way, so the gateway holds one object per choice.
"""

from __future__ import annotations

from smg.parsers.reasoning import ReasoningParser
from smg.parsers.tool_calls.base import ToolParser
from smg.parsers.types import ContentDelta, Delta, ParsedOutput, ReasoningDelta


class OutputParser:
    """``push(text) -> deltas`` (reasoning, content, tool calls), ``finish()``, ``parse(text)``.
    Either parser may be None (no reasoning parsing / no tool-call parsing)."""

    __slots__ = ("reasoning", "tools")

    def __init__(self, reasoning: ReasoningParser | None = None, tools: ToolParser | None = None) -> None:
        self.reasoning = reasoning
        self.tools = tools

    def _content(self, text: str, out: list[Delta]) -> None:
        if self.tools is not None:
            out.extend(self.tools.push(text))
        elif text:
            out.append(ContentDelta(text))

    def push(self, text: str) -> list[Delta]:
        out: list[Delta] = []
        if self.reasoning is None:
            self._content(text, out)
            return out
        thought, content = self.reasoning.push(text)
        if thought:
            out.append(ReasoningDelta(thought))
        if content:
            self._content(content, out)
        return out

    def finish(self) -> list[Delta]:
        out: list[Delta] = []
        if self.reasoning is not None:
            thought, content = self.reasoning.finish()
            if thought:
                out.append(ReasoningDelta(thought))
            if content:
                self._content(content, out)
        if self.tools is not None:
            out.extend(self.tools.finish())
        return out

    def parse(self, text: str) -> ParsedOutput:
        """A whole output, split (fresh parsers of the same kinds; this one is not touched)."""
        thought, content = ("", text) if self.reasoning is None else self.reasoning.parse(text)
        if self.tools is None:
            return ParsedOutput(content, thought)
        content, calls = self.tools.parse(content)
        return ParsedOutput(content, thought, calls)
