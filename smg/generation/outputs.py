"""Engine outputs (token ids) turned into OpenAI answers and stream chunks, and SGLang's native
`/generate` answers.

Each choice of an answer runs the same pipeline, streamed or not: its token ids are cut at the
first stop token id the request hides (`Prepared.stop_ids`: the EOS ids, the client's
`stop_token_ids`), detokenized, cut at the first stop string (`StopMatcher`, the stop text
trimmed unless `no_stop_trim`), and, for chat, split into reasoning, content and tool calls by
the output parsers. A stream does it incrementally (`IncrementalDetokenizer`, the matcher and the
parsers hold back only what may still change), a non-streamed answer on the whole output of each
`EngineComplete` (as the reference builds it, from Completes only); every stage's contract is
that any chunking gives what the whole gives, so both produce the same text, reasoning and calls.

A stream ends a choice when a stop string matched (later engine output for it is ignored, and
when every choice ended `StreamBuilder.stopped` tells the caller to stop reading and abort the
engine request) or when its Complete arrives. Usage follows OpenAI: the prompt counted once,
completion tokens summed over the choices, the engine's cached tokens in
`prompt_tokens_details.cached_tokens`.

Stream shapes. Chat: per choice a first chunk with `{"role": "assistant", "content": ""}`, then
`content` / `reasoning_content` / `tool_calls` deltas (consecutive deltas of one kind in one
chunk, tool calls in OpenAI's streamed shape), then an empty delta with `finish_reason` (and
SGLang's `matched_stop`); with `stream_options.include_usage`, a last chunk with `choices: []`
and the usage. Completions: the same with `text` (the prompt first, with `echo`). `/generate`:
SGLang's non-incremental stream, each event carrying the choice's whole text so far, the ids the
step added (`output_ids`), and `meta_info` with cumulative counts, the last event of a choice its
`finish_reason` (`{"type": "stop", "matched": ...}`, `{"type": "length", "length": n}`,
`{"type": "abort"}`). The reference's last event repeats the final id in `output_ids`; here it
carries the ids no event carried yet (normally none), so the events' ids add up to the output.

Sans-IO and clock-free: the caller passes `created` and the response id. Only the stream path
runs per token: it builds the event dicts it returns and little else.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Self

from smg.generation.requests import Prepared
from smg.generation.types import EngineChunk, EngineComplete, EngineOutput, TokenLogprob
from smg.parsers.output import OutputParser
from smg.parsers.registry import reasoning_parser_for, tool_parser_for
from smg.parsers.tool_calls.base import MORE, ToolParser
from smg.parsers.tool_calls.jsonscan import JsonScanner
from smg.parsers.types import ContentDelta, Delta, IdFactory, ParsedOutput, ReasoningDelta, ToolCallDelta, fold
from smg.tokenization.detokenizer import IncrementalDetokenizer, token_text
from smg.tokenization.loader import ModelTokenizer
from smg.tokenization.stop import StopMatcher

# -- shared -----------------------------------------------------------------------------------


@lru_cache(maxsize=1 << 16)
def _token(tokenizer: ModelTokenizer, token_id: int) -> str:
    """A token's own text for logprobs (special tokens kept), cached: logprobs name the same
    frequent tokens over and over."""
    return token_text(tokenizer.tokenizer, token_id)


def _cut(ids: Sequence[int], stop_ids: frozenset[int]) -> tuple[Sequence[int], bool]:
    """`ids` up to the first hidden stop id, and whether one was found."""
    if not stop_ids or stop_ids.isdisjoint(ids):
        return ids, False
    for i, token in enumerate(ids):
        if token in stop_ids:
            return ids[:i], True
    return ids, False  # pragma: no cover - isdisjoint said otherwise


def _usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


class _NamedCall(ToolParser):
    """`tool_choice` named a function: the output (the engine constrained it to the function's
    parameters) is the arguments of one call to it. The arguments stream compacted and checked
    as JSON, like every parser's; text after the object (or output that does not start with one)
    is content. No call for an empty output."""

    name = "named"
    _START, _ARGS, _REST = range(3)

    def __init__(self, function: str, *, id_factory: IdFactory | None = None) -> None:
        super().__init__(tools=None, id_factory=id_factory)
        self.function = function
        self._state = self._START
        self._scanner = JsonScanner()

    def fresh(self) -> Self:
        return type(self)(self.function, id_factory=self._id_factory)

    def _step(self, final: bool) -> None:
        while True:
            if self._state == self._START:
                p = self._skip_ws(self._pos)
                if p == len(self._buf) and not final:
                    return
                if p < len(self._buf) and self._buf[p] == "{":
                    self._pos = p
                    self._open_call(self.function)
                    self._state = self._ARGS
                else:
                    self._state = self._REST
            elif self._state == self._ARGS:
                if self._pump_value(self._scanner, final) == MORE:
                    return
                self._state = self._REST
            else:
                self._content(self._buf[self._pos :])
                self._pos = len(self._buf)
                return


def _output_parser(prepared: Prepared) -> OutputParser | None:
    """Fresh parsers for one chat choice, or None when the text is all content."""
    reasoning = None
    if prepared.reasoning_parser is not None:
        reasoning = reasoning_parser_for(prepared.reasoning_parser, in_reasoning=prepared.in_reasoning)
    tools: ToolParser | None = None
    if prepared.tool_function is not None:
        tools = _NamedCall(prepared.tool_function, id_factory=prepared.id_factory)
    elif prepared.tool_parser is not None:
        tools = tool_parser_for(prepared.tool_parser, id_factory=prepared.id_factory)
    if reasoning is None and tools is None:
        return None
    return OutputParser(reasoning, tools)


def _finish_type(reason: str, matched: int | str | None, completion_tokens: int) -> dict[str, Any]:
    """SGLang's `meta_info.finish_reason` object."""
    if reason == "stop":
        return {"type": "stop", "matched": matched}
    if reason == "length":
        return {"type": "length", "length": completion_tokens}
    return {"type": reason}


# -- logprob shapes ---------------------------------------------------------------------------


def _chat_logprobs(tokenizer: ModelTokenizer, logprobs: Sequence[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's chat `logprobs`: `{"content": [{token, logprob, bytes, top_logprobs}]}`. A
    token's text is its own decode, so a token ending inside a character shows U+FFFD (and its
    bytes are those of that text)."""
    content = []
    for lp in logprobs:
        text = _token(tokenizer, lp.token_id)
        top = []
        for token_id, value in lp.top:
            alt = _token(tokenizer, token_id)
            top.append({"token": alt, "logprob": value, "bytes": list(alt.encode())})
        content.append({"token": text, "logprob": lp.logprob, "bytes": list(text.encode()), "top_logprobs": top})
    return {"content": content}


def _completion_logprobs(tokenizer: ModelTokenizer, logprobs: Sequence[TokenLogprob], offset: int) -> dict[str, Any]:
    """OpenAI's completions `logprobs` (`tokens`, `token_logprobs`, `top_logprobs`,
    `text_offset`); offsets count the tokens' own texts from `offset`."""
    tokens: list[str] = []
    values: list[float] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    for lp in logprobs:
        text = _token(tokenizer, lp.token_id)
        tokens.append(text)
        values.append(lp.logprob)
        tops.append({_token(tokenizer, token_id): value for token_id, value in lp.top} if lp.top else None)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def _generate_logprobs(
    tokenizer: ModelTokenizer, logprobs: Sequence[TokenLogprob], with_text: bool, top: bool
) -> tuple[list[list[Any]], list[list[list[Any]]]]:
    """SGLang's `output_token_logprobs` (`[logprob, id, text or None]` per position) and
    `output_top_logprobs` (a list of those per position)."""
    tokens: list[list[Any]] = []
    tops: list[list[list[Any]]] = []
    for lp in logprobs:
        tokens.append([lp.logprob, lp.token_id, _token(tokenizer, lp.token_id) if with_text else None])
        if top:
            tops.append([[value, tid, _token(tokenizer, tid) if with_text else None] for tid, value in lp.top])
    return tokens, tops


# -- streams ----------------------------------------------------------------------------------


class _Choice:
    """One choice's state in a stream."""

    __slots__ = (
        "cached",
        "calls",
        "completion",
        "cut",
        "detok",
        "ended",
        "engine_done",
        "finish",
        "index",
        "logprobs",
        "logprobs_sent",
        "matched",
        "offset",
        "parser",
        "pending_ids",
        "prompt",
        "seen",
        "started",
        "stop",
        "text",
    )

    def __init__(self, index: int, prepared: Prepared, tokenizer: ModelTokenizer) -> None:
        self.index = index
        self.detok = IncrementalDetokenizer(tokenizer.tokenizer, skip_special_tokens=prepared.skip_special_tokens)
        self.stop = StopMatcher(prepared.stops, no_stop_trim=prepared.no_stop_trim) if prepared.stops else None
        self.parser = _output_parser(prepared) if prepared.kind == "chat" else None
        self.started = False
        self.ended = False
        self.cut = False  # a hidden stop id was seen: later ids are not text
        self.finish: str | None = None
        self.matched: int | str | None = None
        self.calls = False  # chat: a tool call was streamed
        self.prompt = 0
        self.completion = 0
        self.cached = 0
        self.seen = 0  # output ids received
        # chat: the logprobs no chunk carried yet; generate: all of them so far
        self.logprobs: list[TokenLogprob] = []
        self.logprobs_sent = 0  # generate: how many of them an event already carried
        # completions: where the next token's text starts; generate: the text so far and the
        # ids no event carried yet
        self.offset = 0
        self.text = ""
        self.pending_ids: list[int] = []
        self.engine_done = False  # the engine's Complete for this choice arrived


class StreamBuilder:
    """One streamed request. feed() per engine output, finish() once the RPC stream ended."""

    __slots__ = ("_choices", "_created", "_ended", "_finished", "_id", "_model", "_prepared", "_tokenizer")

    def __init__(self, prepared: Prepared, tokenizer: ModelTokenizer, *, created: int, response_id: str) -> None:
        self._prepared = prepared
        self._tokenizer = tokenizer
        self._created = created
        self._id = response_id
        self._model = prepared.model
        self._choices = [_Choice(i, prepared, tokenizer) for i in range(max(1, prepared.n))]
        self._ended = 0
        self._finished = False

    # -- the caller's interface ---------------------------------------------------------------

    def feed(self, output: EngineOutput) -> list[dict[str, Any]]:
        """The events one engine output gives (each one SSE `data:` JSON object). An output for a
        choice the request did not ask for (index >= n) is the engine's error: ignored, so a
        hostile index can neither grow the choices nor reach the client."""
        if output.index >= self._prepared.n:
            return []
        ch = self._choice(output.index)
        if output.prompt_tokens:
            ch.prompt = output.prompt_tokens
        if output.cached_tokens:
            ch.cached = output.cached_tokens
        out: list[dict[str, Any]] = []
        if type(output) is EngineChunk:
            ids: Sequence[int] = output.token_ids
            raw = ids
            ch.seen += len(ids)
            ch.completion = _counted(output.completion_tokens, ch.seen)
            if ch.ended:
                return out
            if not ch.started:
                ch.started = True
                self._start(ch, out)
            logprobs = output.logprobs
            if ch.cut:
                ids, logprobs = (), None
            else:
                ids, ch.cut = _cut(ids, self._prepared.stop_ids)
                if ch.cut and logprobs:
                    logprobs = logprobs[: len(ids)]
            text = ch.detok.push(ids) if ids else ""
            if text and ch.stop is not None:
                step = ch.stop.push(text)
                text = step.text
                if step.stopped:
                    ch.finish, ch.matched = "stop", step.stop
            self._text(ch, text, logprobs, raw, out)
            if ch.finish is not None:
                self._end(ch, out)
            return out
        assert isinstance(output, EngineComplete)
        ch.engine_done = True
        ch.completion = _counted(output.completion_tokens, max(ch.seen, len(output.output_ids)))
        if ch.ended:
            return out
        if not ch.started:
            ch.started = True
            self._start(ch, out)
        text = self._drain(ch)
        if ch.finish is None:
            ch.finish, ch.matched = output.finish_reason, output.matched_stop
        self._text(ch, text, None, None, out)
        self._end(ch, out)
        return out

    def finish(self) -> list[dict[str, Any]]:
        """The engine's stream ended: what each choice still held (a choice without its Complete
        gets no finish event, as the reference sends none), then the usage chunk."""
        if self._finished:
            return []
        self._finished = True
        out: list[dict[str, Any]] = []
        for ch in self._choices:
            if ch.ended or not ch.started:
                continue
            text = self._drain(ch)
            self._text(ch, text, None, None, out)
            if ch.finish is not None:
                self._end(ch, out)
            else:
                self._flush(ch, out)
        self._tail(out)
        return out

    @property
    def stopped(self) -> bool:
        """Every choice has finished: the caller stops reading and aborts the engine request."""
        return self._ended >= len(self._choices)

    @property
    def engine_finished(self) -> bool:
        """Every choice got the engine's Complete: nothing to abort, even if the RPC's end is
        not read (the caller stops at `stopped`)."""
        return all(ch.engine_done for ch in self._choices)

    @property
    def usage(self) -> dict[str, Any] | None:
        """OpenAI usage of what the engine reported (or sent) so far."""
        choices = self._choices
        prompt = max(ch.prompt for ch in choices) or len(self._prepared.engine.input_ids)
        return _usage(prompt, sum(ch.completion for ch in choices), max(ch.cached for ch in choices))

    # -- the pipeline -------------------------------------------------------------------------

    def _choice(self, index: int) -> _Choice:
        choices = self._choices
        while index >= len(choices):  # an engine answering more choices than asked
            choices.append(_Choice(len(choices), self._prepared, self._tokenizer))
        return choices[index]

    def _drain(self, ch: _Choice) -> str:
        """The choice's sequence is over: the text the detokenizer and the matcher held."""
        text = ch.detok.finish()
        if ch.stop is None:
            return text
        step = ch.stop.push(text) if text else None
        if step is not None and step.stopped:
            ch.finish, ch.matched = "stop", step.stop
            return step.text
        last = ch.stop.finish()
        if last.stopped:
            ch.finish, ch.matched = "stop", last.stop
        return (step.text if step is not None else "") + last.text

    def _end(self, ch: _Choice, out: list[dict[str, Any]]) -> None:
        ch.ended = True
        self._ended += 1
        self._closing(ch, out)

    # -- per kind -----------------------------------------------------------------------------

    def _start(self, ch: _Choice, out: list[dict[str, Any]]) -> None:
        """The choice's first output arrived."""

    def _text(
        self,
        ch: _Choice,
        text: str,
        logprobs: Sequence[TokenLogprob] | None,
        ids: Sequence[int] | None,
        out: list[dict[str, Any]],
    ) -> None:
        """New text of the choice (`ids`: the engine step's ids, stop tokens included; None
        when flushing)."""
        raise NotImplementedError

    def _closing(self, ch: _Choice, out: list[dict[str, Any]]) -> None:
        """The choice ended (`ch.finish` is set): its last events."""
        raise NotImplementedError

    def _flush(self, ch: _Choice, out: list[dict[str, Any]]) -> None:
        """The stream ended before the choice did: what its parsers still hold."""

    def _tail(self, out: list[dict[str, Any]]) -> None:
        """After every choice: the usage chunk when asked."""


class _ChatStream(StreamBuilder):
    __slots__ = ()

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def _start(self, ch: _Choice, out: list[dict[str, Any]]) -> None:
        out.append(self._chunk(ch.index, {"role": "assistant", "content": ""}))

    def _text(
        self,
        ch: _Choice,
        text: str,
        logprobs: Sequence[TokenLogprob] | None,
        ids: Sequence[int] | None,
        out: list[dict[str, Any]],
    ) -> None:
        if logprobs:
            ch.logprobs.extend(logprobs)
        if not text:
            return
        if ch.parser is None:
            self._delta(ch, out)["content"] = text
        else:
            self._deltas(ch, ch.parser.push(text), out)

    def _delta(self, ch: _Choice, out: list[dict[str, Any]]) -> dict[str, Any]:
        """A new chunk for the choice (carrying the logprobs not sent yet); its delta."""
        chunk = self._chunk(ch.index, {})
        if ch.logprobs:
            chunk["choices"][0]["logprobs"] = _chat_logprobs(self._tokenizer, ch.logprobs)
            ch.logprobs = []
        out.append(chunk)
        delta: dict[str, Any] = chunk["choices"][0]["delta"]
        return delta

    def _deltas(self, ch: _Choice, deltas: list[Delta], out: list[dict[str, Any]]) -> None:
        delta: dict[str, Any] = {}
        kind = ""
        for d in deltas:
            if type(d) is ToolCallDelta:
                ch.calls = True
                if kind != "tool_calls":
                    delta, kind = self._delta(ch, out), "tool_calls"
                    delta["tool_calls"] = []
                delta["tool_calls"].append(d.to_openai())
                continue
            assert isinstance(d, ContentDelta | ReasoningDelta)
            name = "content" if type(d) is ContentDelta else "reasoning_content"
            if kind != name:
                delta, kind = self._delta(ch, out), name
                delta[name] = d.text
            else:
                delta[name] += d.text

    def _flush(self, ch: _Choice, out: list[dict[str, Any]]) -> None:
        if ch.parser is not None:
            self._deltas(ch, ch.parser.finish(), out)

    def _closing(self, ch: _Choice, out: list[dict[str, Any]]) -> None:
        self._flush(ch, out)
        finish = ch.finish
        if finish == "stop" and ch.calls:
            finish = "tool_calls"
        chunk = self._chunk(ch.index, {}, finish)
        choice = chunk["choices"][0]
        if ch.logprobs:
            choice["logprobs"] = _chat_logprobs(self._tokenizer, ch.logprobs)
            ch.logprobs = []
        choice["matched_stop"] = ch.matched
        out.append(chunk)

    def _tail(self, out: list[dict[str, Any]]) -> None:
        if self._prepared.include_usage:
            out.append(
                {
                    "id": self._id,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self._model,
                    "choices": [],
                    "usage": self.usage,
                }
            )


class _CompletionStream(StreamBuilder):
    __slots__ = ()

    def _chunk(self, index: int, text: str, logprobs: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "text_completion",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}],
        }

    def _start(self, ch: _Choice, out: list[dict[str, Any]]) -> None:
        echo = self._prepared.echo_text
        if echo:
            ch.offset = len(echo)
            out.append(self._chunk(ch.index, echo))

    def _text(
        self,
        ch: _Choice,
        text: str,
        logprobs: Sequence[TokenLogprob] | None,
        ids: Sequence[int] | None,
        out: list[dict[str, Any]],
    ) -> None:
        if not text and not logprobs:
            return
        shaped = None
        if logprobs:
            shaped = _completion_logprobs(self._tokenizer, logprobs, ch.offset)
            ch.offset = shaped["text_offset"][-1] + len(shaped["tokens"][-1])
        out.append(self._chunk(ch.index, text, shaped))

    def _closing(self, ch: _Choice, out: list[dict[str, Any]]) -> None:
        chunk = self._chunk(ch.index, "", None, ch.finish)
        chunk["choices"][0]["matched_stop"] = ch.matched
        out.append(chunk)

    def _tail(self, out: list[dict[str, Any]]) -> None:
        if self._prepared.include_usage:
            out.append(
                {
                    "id": self._id,
                    "object": "text_completion",
                    "created": self._created,
                    "model": self._model,
                    "choices": [],
                    "usage": self.usage,
                }
            )


class _GenerateStream(StreamBuilder):
    __slots__ = ()

    def _text(
        self,
        ch: _Choice,
        text: str,
        logprobs: Sequence[TokenLogprob] | None,
        ids: Sequence[int] | None,
        out: list[dict[str, Any]],
    ) -> None:
        ch.text += text
        if logprobs:
            ch.logprobs.extend(logprobs)
        if ids is None:
            return
        ch.pending_ids.extend(ids)
        if ch.finish is None:  # the step that ends the choice is told by its last event
            out.append(self._event(ch, None))

    def _event(self, ch: _Choice, finish: dict[str, Any] | None) -> dict[str, Any]:
        prepared = self._prepared
        meta: dict[str, Any] = {
            "id": self._id,
            "finish_reason": finish,
            "prompt_tokens": ch.prompt or len(prepared.engine.input_ids),
            "completion_tokens": ch.completion,
            "cached_tokens": ch.cached,
        }
        if prepared.engine.logprobs:
            # only the positions no event carried yet: the text is cumulative as SGLang's, but
            # repeating every logprob in every event would cost the event loop quadratic time
            # (seconds of CPU for a few thousand tokens) on one client's request
            new, ch.logprobs_sent = ch.logprobs[ch.logprobs_sent :], len(ch.logprobs)
            tokens, tops = _generate_logprobs(
                self._tokenizer, new, prepared.return_text_in_logprobs, prepared.engine.top_logprobs > 0
            )
            meta["output_token_logprobs"] = tokens
            if prepared.engine.top_logprobs > 0:
                meta["output_top_logprobs"] = tops
        ids, ch.pending_ids = ch.pending_ids, []
        return {"text": ch.text, "output_ids": ids, "meta_info": meta, "index": ch.index}

    def _closing(self, ch: _Choice, out: list[dict[str, Any]]) -> None:
        assert ch.finish is not None
        out.append(self._event(ch, _finish_type(ch.finish, ch.matched, ch.completion)))


_STREAMS: dict[str, type[StreamBuilder]] = {"chat": _ChatStream, "completions": _CompletionStream, "generate": _GenerateStream}


def start_stream(prepared: Prepared, tokenizer: ModelTokenizer, *, created: int, response_id: str) -> StreamBuilder:
    """The stream builder for a prepared request (`prepared.kind` picks the shapes)."""
    return _STREAMS[prepared.kind](prepared, tokenizer, created=created, response_id=response_id)


# -- whole answers ----------------------------------------------------------------------------


def _final(prepared: Prepared, tokenizer: ModelTokenizer, complete: EngineComplete) -> tuple[str, str, int | str | None, int]:
    """A Complete's text, finish reason and matched stop, and how many of its ids made the text."""
    ids, _ = _cut(complete.output_ids, prepared.stop_ids)
    text = tokenizer.decode(ids, skip_special_tokens=prepared.skip_special_tokens)
    finish, matched = complete.finish_reason, complete.matched_stop
    if prepared.stops:
        matcher = StopMatcher(prepared.stops, no_stop_trim=prepared.no_stop_trim)
        step = matcher.push(text)
        if step.stopped:
            return step.text, "stop", step.stop, len(ids)
        last = matcher.finish()
        text = step.text + last.text
        if last.stopped:
            finish, matched = "stop", last.stop
    return text, finish, matched, len(ids)


def _counted(reported: int, seen: int) -> int:
    """The engine's completion count, held to the tokens it actually sent: a worker cannot charge a
    tenant's token budget for more than it produced."""
    return min(reported, seen) if reported else seen


def _by_index(completes: Sequence[EngineComplete], n: int) -> list[EngineComplete]:
    """One Complete per asked choice (the first of each index; indexes >= n are the engine's error)."""
    seen: dict[int, EngineComplete] = {}
    for complete in completes:
        if complete.index < n:
            seen.setdefault(complete.index, complete)
    return [seen[i] for i in sorted(seen)]


def _total_usage(prepared: Prepared, completes: Sequence[EngineComplete]) -> dict[str, Any]:
    prompt = max((c.prompt_tokens for c in completes), default=0) or len(prepared.engine.input_ids)
    completion = sum(_counted(c.completion_tokens, len(c.output_ids)) for c in completes)
    return _usage(prompt, completion, max((c.cached_tokens for c in completes), default=0))


def _chat_choice(prepared: Prepared, tokenizer: ModelTokenizer, complete: EngineComplete) -> dict[str, Any]:
    text, finish, matched, kept = _final(prepared, tokenizer, complete)
    parser = _output_parser(prepared)
    parsed = ParsedOutput(text) if parser is None else fold(parser.push(text) + parser.finish())
    message: dict[str, Any] = {
        "role": "assistant",
        "content": parsed.content if parsed.content or not parsed.tool_calls else None,
    }
    if parsed.reasoning:
        message["reasoning_content"] = parsed.reasoning
    if parsed.tool_calls:
        message["tool_calls"] = [call.to_openai() for call in parsed.tool_calls]
        if finish == "stop":
            finish = "tool_calls"
    logprobs = None
    if prepared.engine.logprobs and complete.logprobs is not None:
        logprobs = _chat_logprobs(tokenizer, complete.logprobs[:kept])
    return {"index": complete.index, "message": message, "logprobs": logprobs, "finish_reason": finish, "matched_stop": matched}


def _completion_choice(prepared: Prepared, tokenizer: ModelTokenizer, complete: EngineComplete) -> dict[str, Any]:
    text, finish, matched, kept = _final(prepared, tokenizer, complete)
    echo = prepared.echo_text or ""
    logprobs = None
    if prepared.engine.logprobs and complete.logprobs is not None:
        logprobs = _completion_logprobs(tokenizer, complete.logprobs[:kept], len(echo))
    return {"index": complete.index, "text": echo + text, "logprobs": logprobs, "finish_reason": finish, "matched_stop": matched}


def _generate_item(prepared: Prepared, tokenizer: ModelTokenizer, complete: EngineComplete, response_id: str) -> dict[str, Any]:
    text, finish, matched, _ = _final(prepared, tokenizer, complete)
    completion = _counted(complete.completion_tokens, len(complete.output_ids))
    meta: dict[str, Any] = {
        "id": response_id,
        "finish_reason": _finish_type(finish, matched, completion),
        "prompt_tokens": complete.prompt_tokens or len(prepared.engine.input_ids),
        "completion_tokens": completion,
        "cached_tokens": complete.cached_tokens,
    }
    if prepared.engine.logprobs:
        top = prepared.engine.top_logprobs > 0
        tokens, tops = _generate_logprobs(tokenizer, complete.logprobs or [], prepared.return_text_in_logprobs, top)
        meta["output_token_logprobs"] = tokens
        if top:
            meta["output_top_logprobs"] = tops
    return {"text": text, "output_ids": list(complete.output_ids), "meta_info": meta}


def complete_response(
    prepared: Prepared, tokenizer: ModelTokenizer, completes: Sequence[EngineComplete], *, created: int, response_id: str
) -> dict[str, Any] | list[dict[str, Any]]:
    """The non-streamed answer, from the Completes only (one per choice index; the first of an
    index counts): a `chat.completion` or `text_completion` object, or `/generate`'s JSON (a
    list for n > 1, as SGLang answers a parallel-sampling request)."""
    ordered = _by_index(completes, prepared.n)
    if prepared.kind == "generate":
        items = [_generate_item(prepared, tokenizer, c, response_id) for c in ordered]
        return items[0] if prepared.n == 1 and len(items) == 1 else items
    if prepared.kind == "chat":
        choices = [_chat_choice(prepared, tokenizer, c) for c in ordered]
        kind = "chat.completion"
    else:
        choices = [_completion_choice(prepared, tokenizer, c) for c in ordered]
        kind = "text_completion"
    return {
        "id": response_id,
        "object": kind,
        "created": created,
        "model": prepared.model,
        "choices": choices,
        "usage": _total_usage(prepared, ordered),
    }


def embedding_response(
    model: str, embedding: list[float], prompt_tokens: int, *, encoding_format: str = "float"
) -> dict[str, Any]:
    """OpenAI's embeddings answer for one input. `encoding_format="base64"`: the vector as
    little-endian float32 bytes in base64, which is what OpenAI sends and its SDK decodes."""
    vector: list[float] | str = embedding
    if encoding_format == "base64":
        vector = base64.b64encode(struct.pack(f"<{len(embedding)}f", *embedding)).decode("ascii")
    return {
        "object": "list",
        "data": [{"object": "embedding", "embedding": vector, "index": 0}],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


__all__ = ["StreamBuilder", "complete_response", "embedding_response", "start_stream"]
