"""Reasoning parsers: split a model's thinking (``<think>…</think>``) from its answer, streaming.

With gRPC workers the gateway sees the raw generated text, so it must cut the thinking out into
``reasoning_content`` itself, as the reference does. Every parser of the reference's legacy
family is the same machine with other tags and another initial state, so one class serves them
all, configured by name (``REASONING_CONFIGS``):

* Until a reasoning block was seen, text is content; the start tag (anywhere) opens the block.
  A parser that *starts in reasoning* (``deepseek_r1``, ``qwen3_thinking``, ``step3``,
  ``minimax``, ``kimi_thinking``) treats the output as reasoning from its first character,
  because those chat templates put ``<think>`` in the prompt; so does any parser after
  ``mark_reasoning_started()`` (the gateway calls it when the rendered prompt already opened
  the block, e.g. Qwen3 with thinking on).
* Inside the block the first start tag is dropped (a model that repeats the template's
  ``<think>``), and the first end tag closes it. There is one block: after it everything is
  content, tags included, verbatim (whitespace after ``</think>`` is kept, as the reference
  keeps it).
* An output that ends inside the block (truncated thinking) is all reasoning.

Streaming holds back only a possible partial tag at the end of what it has seen, so every
chunking of the same text gives the same reasoning and content (the reference's one-shot path
differs from its streaming one in corner cases, e.g. text before ``<think>``; here the one-shot
``parse`` is by construction the folded stream, and the streaming rules are the ones kept).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReasoningConfig:
    """One reasoning format: its tags, and whether the output starts inside the block."""

    name: str
    start: str = "<think>"
    end: str = "</think>"
    starts_in_reasoning: bool = False
    #: False: no reasoning parsing at all (``passthrough``): everything is content.
    enabled: bool = True


#: The reference's legacy reasoning parsers that smg implements, by the reference's names.
REASONING_CONFIGS: dict[str, ReasoningConfig] = {
    config.name: config
    for config in (
        ReasoningConfig("base"),
        ReasoningConfig("passthrough", enabled=False),
        ReasoningConfig("plain", enabled=False),
        ReasoningConfig("deepseek_r1", starts_in_reasoning=True),
        ReasoningConfig("deepseek_v31"),
        ReasoningConfig("qwen3"),
        ReasoningConfig("qwen3_thinking", starts_in_reasoning=True),
        ReasoningConfig("glm45"),
        ReasoningConfig("step3", starts_in_reasoning=True),
        ReasoningConfig("minimax", starts_in_reasoning=True),
        ReasoningConfig("kimi", start="◁think▷", end="◁/think▷"),
        ReasoningConfig("kimi_k25"),
        ReasoningConfig("kimi_thinking", starts_in_reasoning=True),
        ReasoningConfig("cohere_cmd", start="<|START_THINKING|>", end="<|END_THINKING|>"),
        ReasoningConfig("nano_v3"),
    )
}

_BEFORE, _INSIDE, _AFTER = 0, 1, 2


def partial_suffix(text: str, tag: str, start: int = 0) -> int:
    """Length of the longest end of ``text[start:]`` that is a proper prefix of ``tag``."""
    limit = min(len(tag) - 1, len(text) - start)
    for size in range(limit, 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class ReasoningParser:
    """One choice's reasoning splitter: ``push`` text deltas, ``finish`` at the end.

    ``push(text)`` and ``finish()`` return ``(reasoning_delta, content_delta)``, either ""
    when there is none. ``parse(text)`` splits a whole output the same way."""

    __slots__ = ("_buf", "_mode", "_start_droppable", "_starts_inside", "config")

    def __init__(self, config: ReasoningConfig | None = None, *, in_reasoning: bool | None = None) -> None:
        self.config = config or REASONING_CONFIGS["base"]
        self._buf = ""
        started = self.config.starts_in_reasoning if in_reasoning is None else in_reasoning
        self._starts_inside = started and self.config.enabled
        self._mode = _INSIDE if self._starts_inside else _BEFORE
        self._start_droppable = True

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def in_reasoning(self) -> bool:
        return self._mode == _INSIDE

    def mark_reasoning_started(self) -> None:
        """The prompt already opened the block (the template ended with ``<think>``): the output
        starts inside it. Call before the first ``push``; no effect on ``passthrough``."""
        if self.config.enabled and self._mode == _BEFORE:
            self._mode = _INSIDE
            self._starts_inside = True

    def push(self, text: str) -> tuple[str, str]:
        if not self.config.enabled or (self._mode == _AFTER and not self._buf):
            return "", text
        self._buf += text
        return self._step(final=False)

    def finish(self) -> tuple[str, str]:
        if not self.config.enabled:
            return "", ""
        return self._step(final=True)

    def parse(self, text: str) -> tuple[str, str]:
        """``(reasoning, content)`` of a whole output, from this parser's initial state."""
        fresh = ReasoningParser(self.config, in_reasoning=self._starts_inside)
        r1, c1 = fresh.push(text)
        r2, c2 = fresh.finish()
        return r1 + r2, c1 + c2

    def _step(self, *, final: bool) -> tuple[str, str]:
        buf, start_tag, end_tag = self._buf, self.config.start, self.config.end
        reasoning: list[str] = []
        content: list[str] = []
        pos = 0
        while True:
            if self._mode == _AFTER:
                content.append(buf[pos:])
                pos = len(buf)
                break
            if self._mode == _BEFORE:
                at = buf.find(start_tag, pos)
                if at < 0:
                    keep = 0 if final else partial_suffix(buf, start_tag, pos)
                    content.append(buf[pos : len(buf) - keep])
                    pos = len(buf) - keep
                    break
                content.append(buf[pos:at])
                pos = at + len(start_tag)
                self._mode, self._start_droppable = _INSIDE, False
                continue
            # inside the block
            end_at = buf.find(end_tag, pos)
            start_at = buf.find(start_tag, pos) if self._start_droppable else -1
            if start_at >= 0 and (end_at < 0 or start_at < end_at):
                reasoning.append(buf[pos:start_at])
                pos = start_at + len(start_tag)
                self._start_droppable = False
                continue
            if end_at >= 0:
                reasoning.append(buf[pos:end_at])
                pos = end_at + len(end_tag)
                self._mode = _AFTER
                continue
            keep = 0
            if not final:
                keep = partial_suffix(buf, end_tag, pos)
                if self._start_droppable:
                    keep = max(keep, partial_suffix(buf, start_tag, pos))
            reasoning.append(buf[pos : len(buf) - keep])
            pos = len(buf) - keep
            break
        self._buf = buf[pos:]
        return "".join(reasoning), "".join(content)


def reasoning_parser(name: str, *, in_reasoning: bool | None = None) -> ReasoningParser:
    """A fresh parser of an implemented format (``KeyError`` otherwise; the registry checks
    names against the reference's list and says why)."""
    return ReasoningParser(REASONING_CONFIGS[name], in_reasoning=in_reasoning)
