"""The streaming tool-call parser every format shares: buffer, deltas, and the rules of a call.

One parser per choice. ``push(text)`` takes the next piece of the model's text (after the
reasoning parser took the thinking out) and returns the deltas it can be sure of; ``finish()``
flushes at the end; ``parse(text)`` is the non-streamed result, computed as the fold of one push
and a finish, so the two can never disagree. Every decision depends on the text only, never on
where the pieces were cut, so any chunking of the same text folds to the same result (the
property the tests fuzz). The rules, the same for every format:

* **A call exists once its name is known** (and, when the request's tool names are given, is
  one of them). From then on it streams: the first delta has the index, a fresh id, the name
  and the arguments known so far; later deltas add argument fragments.
* **Until then it may still turn out not to be a call**: its text is held back, and given back
  as content if it does not become one (bad JSON before the name, no name, a name the request
  did not offer: the reference drops calls to tools the request did not offer; smg keeps their
  text as content, so nothing the model wrote is lost). Only text that could still be a call
  is held: a partial start marker at the end, or a started call whose name has not come yet.
* **Arguments** are the model's JSON arguments object with insignificant whitespace removed
  (a string holding a JSON object is unwrapped; a call without arguments gets ``{}``), streamed
  as each character is validated. A call broken after its name (the JSON goes wrong, or the
  output ends) keeps the arguments validated so far, as a truncated OpenAI stream does; the
  rest of the broken call is dropped up to the format's end marker (``</tool_call>``,
  DeepSeek's call end), or, in formats without one (bare JSON), reads as content.
* **Whitespace** between calls and after the last one is dropped (the separators of the
  format); other text after a call is content, its leading whitespace included. Text before the
  first call is content verbatim.
"""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Iterable
from typing import Any, ClassVar, Self

from smg.parsers.tool_calls.jsonscan import WS, CallObject, JsonScanner
from smg.parsers.types import ContentDelta, Delta, IdFactory, ToolCall, ToolCallDelta, fold, merge_into, new_call_id

# outcomes of pumping a call's JSON
MORE, DONE, FAILED, BROKEN = range(4)


def hold_partial(buf: str, start: int, markers: Iterable[str]) -> int:
    """Where content may be emitted up to: ``len(buf)`` minus the longest end of ``buf[start:]``
    that is a proper prefix of one of ``markers``."""
    keep = 0
    avail = len(buf) - start
    for marker in markers:
        for size in range(min(len(marker) - 1, avail), keep, -1):
            if buf.endswith(marker[:size]):
                keep = size
                break
    return len(buf) - keep


def find_first(buf: str, start: int, markers: Iterable[str]) -> tuple[int, str]:
    """The earliest occurrence at or after ``start`` of any of ``markers``: ``(index, marker)``,
    or ``(-1, "")``."""
    best, found = -1, ""
    for marker in markers:
        at = buf.find(marker, start)
        if at >= 0 and (best < 0 or at < best):
            best, found = at, marker
    return best, found


def skip_ws(buf: str, pos: int) -> int:
    n = len(buf)
    while pos < n and buf[pos] in WS:
        pos += 1
    return pos


_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
#: Held text longer than this, already scanned, is set aside from the buffer (see ``_compact``).
_SPILL = 4096


def dump_arguments(value: Any) -> str:
    """Compact JSON of ``value``, non-ASCII kept as written, except lone surrogates (which a
    ``\\ud800`` escape decodes to and UTF-8 cannot encode): those stay ``\\u`` escapes."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    if _LONE_SURROGATE.search(text):
        # only inside strings (JSON's syntax is ASCII); a surrogate pair was decoded to one character
        text = _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text


def coerce_arguments(kind: str | None, text: str) -> str:
    """The arguments string for a value that is not an object: a string holding a JSON object
    is that object; ``null`` is ``{}``; anything else stays as written."""
    if kind == "string":
        try:
            inner = json.loads(json.loads(text))
            if isinstance(inner, dict):
                return dump_arguments(inner)
        except (ValueError, TypeError, RecursionError):  # not JSON, or nested past the stack
            return text
        return text
    if kind == "null":
        return "{}"
    return text


class ToolParser(abc.ABC):
    """Base of the streaming tool-call parsers (see the module docstring for the rules).

    ``tools``: the names of the tools the request offered; a call to another name is not a call
    (its text stays content). ``None`` accepts every name. ``id_factory`` makes the call ids
    (``call_<24 hex>`` by default; inject a deterministic one in tests)."""

    #: The reference's name of the format (the registry maps aliases onto the classes).
    name: ClassVar[str] = ""

    def __init__(self, *, tools: Iterable[str] | None = None, id_factory: IdFactory | None = None) -> None:
        self.tools: frozenset[str] | None = frozenset(tools) if tools is not None else None
        self._id_factory = id_factory or new_call_id
        self._buf = ""
        self._pos = 0
        #: Start of text held while it may still be a call (compaction keeps it), or None.
        self._mark: int | None = None
        self._out: list[Delta] = []
        self._next_index = 0
        self._open: int | None = None
        self._after_call = False
        self._pending_ws: list[str] = []
        self._finished = False
        #: Held text set aside (``_compact``): it precedes ``_buf``, and ``_mark`` is then negative,
        #: ``-len`` of it (indices stay relative to ``_buf``).
        self._held: list[str] = []
        self._held_len = 0
        #: ``_buf[_ws_from:_ws_to]`` is known to be whitespace (``_skip_ws``), or ``_ws_from`` is -1.
        self._ws_from = -1
        self._ws_to = -1

    # -- public interface ----------------------------------------------------------------------

    def push(self, text: str) -> list[Delta]:
        if self._finished:
            raise RuntimeError("push() after finish()")
        if text:
            self._buf += text
            self._step(final=False)
            self._compact()
        return self._take()

    def finish(self) -> list[Delta]:
        if not self._finished:
            self._finished = True
            self._step(final=True)
            self._close_call()
            self._pending_ws.clear()
            self._buf, self._pos, self._mark = "", 0, None
            self._drop_held()
            self._ws_from = -1
        return self._take()

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        """``(content, tool_calls)`` of a whole output: the fold of its stream."""
        twin = self.fresh()
        folded = fold(twin.push(text) + twin.finish())
        return folded.content, folded.tool_calls

    def fresh(self) -> Self:
        """A new parser of the same format, tools and id source."""
        return type(self)(tools=self.tools, id_factory=self._id_factory)

    @property
    def calls_started(self) -> int:
        """How many calls this parser has begun (the next call's index)."""
        return self._next_index

    # -- for the formats -----------------------------------------------------------------------

    @abc.abstractmethod
    def _step(self, final: bool) -> None:
        """Consume ``self._buf`` from ``self._pos`` as far as the text decides; with ``final``,
        decide everything."""

    def _take(self) -> list[Delta]:
        out, self._out = self._out, []
        return out

    def _compact(self) -> None:
        """Drop what was consumed, so the buffer holds only the text still undecided. Held text
        (a would-be call) that is long and already scanned is set aside in ``_held``, so each push
        copies only the short unscanned rest; it is needed again only if given back."""
        pos, mark = self._pos, self._mark
        if mark is None:
            self._drop_held()
            cut = pos
        else:
            start = max(mark, 0)
            if pos - start > _SPILL:
                piece = self._buf[start:pos]
                self._held.append(piece)
                self._held_len += len(piece)
                self._shift(pos)
                self._mark = -self._held_len
                return
            cut = min(pos, mark)
        if cut > 0 and (cut > _SPILL or cut == len(self._buf)):
            self._shift(cut)

    def _shift(self, cut: int) -> None:
        """Drop ``_buf[:cut]`` and move the indices into it along (negative ones point into the
        set-aside text)."""
        self._buf = self._buf[cut:]
        self._pos -= cut
        if self._mark is not None:
            self._mark -= cut
        if self._ws_from >= cut:
            self._ws_from -= cut
            self._ws_to -= cut
        else:
            self._ws_from = -1

    def _drop_held(self) -> None:
        self._held.clear()
        self._held_len = 0

    def _restore_held(self) -> int:
        """Put the set-aside text back in front of the buffer; returns how far indices moved."""
        size = self._held_len
        if size:
            self._buf = "".join(self._held) + self._buf
            self._drop_held()
            self._pos += size
            if self._mark is not None:
                self._mark += size
            if self._ws_from >= 0:
                self._ws_from += size
                self._ws_to += size
        return size

    def _text(self, start: int, end: int) -> str:
        """``_buf[start:end]``, where ``start`` may point into the set-aside text."""
        if start >= 0:
            return self._buf[start:end]
        return "".join(self._held)[self._held_len + start :] + self._buf[:end]

    def _skip_ws(self, pos: int) -> int:
        """``skip_ws(self._buf, pos)``, remembering how far it got: asked again from the same
        ``pos`` after more text came, it goes on from there, so whitespace a format waits on is
        examined once, not on every push."""
        start = self._ws_to if self._ws_from == pos else pos
        end = skip_ws(self._buf, start)
        self._ws_from, self._ws_to = pos, end
        return end

    def _content(self, text: str) -> None:
        if not text:
            return
        if self._after_call:
            if not text.lstrip(WS):
                self._pending_ws.append(text)
                return
            text = "".join(self._pending_ws) + text
            self._pending_ws.clear()
            self._after_call = False
        merge_into(self._out, ContentDelta(text))

    def _open_call(self, name: str) -> bool:
        if self.tools is not None and name not in self.tools:
            return False
        self._pending_ws.clear()
        self._after_call = False
        index = self._next_index
        self._next_index += 1
        self._open = index
        self._mark = None
        self._drop_held()
        self._out.append(ToolCallDelta(index, "", self._id_factory(), name))
        return True

    def _args(self, text: str) -> None:
        if text and self._open is not None:
            merge_into(self._out, ToolCallDelta(self._open, text))

    def _close_call(self) -> None:
        if self._open is not None:
            self._open = None
            self._after_call = True

    def _give_back(self, start: int, resume: int) -> None:
        """A would-be call that is not one: ``buf[start:resume]`` is content, reading resumes
        at ``resume`` (just after the start marker, so a real call inside is still found).
        ``start`` may point into the set-aside text; it is put back first."""
        moved = self._restore_held()
        start, resume = start + moved, resume + moved
        self._content(self._buf[start:resume])
        self._pos = resume
        self._mark = None

    def _coerce(self, kind: str | None, text: str) -> str:
        return coerce_arguments(kind, text)

    def _pump_object(self, scanner: CallObject, final: bool) -> int:
        """Feed the buffer to a call object's scanner and act on what it learned: open the call
        when the name is known, stream the arguments. Returns MORE, DONE, FAILED (not a call;
        nothing was emitted) or BROKEN (a call that went wrong or was cut off; closed)."""
        self._pos = scanner.feed(self._buf, self._pos)
        if final and not (scanner.done or scanner.error):
            scanner.eof()
        if self._open is None:
            if scanner.name is None:
                return FAILED if scanner.error or final else MORE
            if not self._open_call(scanner.name):
                return FAILED
        kind = scanner.args_kind
        if kind == "object":
            self._args(scanner.take_args())
        elif kind is not None and scanner.args_done and not scanner.args_flushed:
            scanner.args_flushed = True
            self._args(self._coerce(kind, scanner.take_args()))
        if scanner.error or (final and not scanner.done):
            if kind is not None and kind != "object":
                self._args(scanner.take_args())  # cut off: what was written
            self._close_call()
            return BROKEN
        if scanner.done:
            if kind is None:
                self._args("{}")
            self._close_call()
            return DONE
        return MORE

    def _pump_value(self, scanner: JsonScanner, final: bool) -> int:
        """Like ``_pump_object`` for formats whose arguments are a bare JSON value after a
        header that already opened the call."""
        self._pos = scanner.feed(self._buf, self._pos)
        if final and not (scanner.done or scanner.error):
            scanner.eof()
        kind = scanner.kind
        if kind == "object":
            self._args(scanner.take())
        elif scanner.done:
            self._args(self._coerce(kind, scanner.take()))
        if scanner.error or (final and not scanner.done):
            if kind != "object":
                self._args(scanner.take())
            self._close_call()
            return BROKEN
        if scanner.done:
            self._close_call()
            return DONE
        return MORE
