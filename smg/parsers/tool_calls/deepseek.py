# ruff: noqa: RUF001, RUF002, RUF003 - the fullwidth bars in DeepSeek's tokens are the format
"""``deepseek`` (DeepSeek V3) and ``deepseek31`` (V3.1): calls between DeepSeek's special tokens.

V3 writes::

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
    ```json
    {"arg": "value"}
    ```<｜tool▁call▁end｜><｜tool▁calls▁end｜>

with one ``<｜tool▁call▁begin｜>…<｜tool▁call▁end｜>`` per call (whitespace between them free).
V3.1 drops the ``function`` type and the fence:
``<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{"arg": "value"}<｜tool▁call▁end｜>``. Text before the
block is content. As the reference reads them, a lone ``<｜tool▁call▁begin｜>`` also starts a
call, stray end tokens are dropped from content, and arguments that are not an object are
wrapped as ``{"value": ...}``. The call is known at its name (end of the name line for V3, the
separator for V3.1). These tokens are special tokens of the DeepSeek tokenizer: the
detokenizer must keep them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from smg.parsers.tool_calls.base import BROKEN, DONE, MORE, ToolParser, find_first, hold_partial, skip_ws
from smg.parsers.tool_calls.jsonscan import MAX_NAME, JsonScanner
from smg.parsers.types import IdFactory

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
SEP = "<｜tool▁sep｜>"
FENCE = "```"
_V3_HEAD = "function" + SEP
_CONTENT_MARKERS = (CALLS_BEGIN, CALL_BEGIN, CALLS_END, CALL_END)

# A name's raw text so far: spaces around one word without markup. Every prefix of a valid raw
# name is valid, so a partial one can be checked as it arrives.
_RAW_NAME = re.compile(r"[ \t]*[^\s<>｜`'\"{}\[\]()]*[ \t\r]*")

_CONTENT, _BLOCK, _HEAD, _NAME, _FENCE, _ARGS, _TAIL, _SKIP = range(8)


class DeepSeekV3ToolParser(ToolParser):
    name = "deepseek"
    #: V3.1: ``NAME<｜tool▁sep｜>{json}`` instead of ``function<｜tool▁sep｜>NAME\n```json …```.
    v31: bool = False

    def __init__(self, *, tools: Iterable[str] | None = None, id_factory: IdFactory | None = None) -> None:
        super().__init__(tools=tools, id_factory=id_factory)
        self._state = _CONTENT
        self._in_block = False
        self._calls_in_block = 0
        self._resume_len = 0
        self._scanner = JsonScanner()

    def _coerce(self, kind: str | None, text: str) -> str:
        return text if kind == "object" else '{"value":' + text + "}"

    def _not_a_call(self) -> None:
        mark = self._mark
        assert mark is not None
        self._give_back(mark, mark + self._resume_len)
        self._state = _CONTENT

    def _call_begins(self, at: int) -> None:
        if self._calls_in_block == 0 and self._in_block:
            pass  # the block's start stays the mark: nothing in it became a call yet
        else:
            self._mark, self._resume_len = at, len(CALL_BEGIN)
        self._pos = at + len(CALL_BEGIN)
        self._state = _NAME if self.v31 else _HEAD

    def _name_ends(self, raw: str, after: int) -> None:
        name = raw.strip(" \t\r")
        if not name or len(name) > MAX_NAME or not _RAW_NAME.fullmatch(raw) or not self._open_call(name):
            self._not_a_call()
            return
        self._calls_in_block += 1
        self._pos = after
        self._scanner = JsonScanner()
        self._state = _ARGS if self.v31 else _FENCE

    def _next_after_call(self) -> None:
        self._state = _BLOCK if self._in_block else _CONTENT

    def _step(self, final: bool) -> None:
        while True:
            buf, pos, state = self._buf, self._pos, self._state
            if state == _CONTENT:
                at, marker = find_first(buf, pos, _CONTENT_MARKERS)
                if at < 0:
                    upto = len(buf) if final else hold_partial(buf, pos, _CONTENT_MARKERS)
                    self._content(buf[pos:upto])
                    self._pos = upto
                    return
                self._content(buf[pos:at])
                if marker in (CALL_END, CALLS_END):
                    self._pos = at + len(marker)  # a stray end token: control, never content
                    continue
                self._calls_in_block = 0
                if marker == CALLS_BEGIN:
                    self._in_block = True
                    self._mark, self._resume_len = at, len(CALLS_BEGIN)
                    self._pos = at + len(CALLS_BEGIN)
                    self._state = _BLOCK
                else:
                    self._in_block = False
                    self._call_begins(at)
            elif state == _BLOCK:
                p = skip_ws(buf, pos)
                rest = buf[p:]
                if rest.startswith(CALL_BEGIN):
                    self._call_begins(p)
                elif rest.startswith(CALLS_END):  # the block's end (an empty block is dropped whole)
                    self._pos, self._mark = p + len(CALLS_END), None
                    self._in_block = False
                    self._state = _CONTENT
                elif not final and (CALL_BEGIN.startswith(rest) or CALLS_END.startswith(rest)):
                    return
                elif self._calls_in_block == 0:
                    self._not_a_call()
                else:
                    self._in_block = False
                    self._state = _CONTENT
            elif state == _HEAD:
                rest = buf[pos : pos + len(_V3_HEAD)]
                if rest == _V3_HEAD:
                    self._pos = pos + len(_V3_HEAD)
                    self._state = _NAME
                elif not final and _V3_HEAD.startswith(rest):
                    return
                else:
                    self._not_a_call()
            elif state == _NAME:
                end_marker = SEP if self.v31 else "\n"
                at = buf.find(end_marker, pos, pos + MAX_NAME + 8 + len(end_marker))
                if at >= 0:
                    self._name_ends(buf[pos:at], at + len(end_marker))
                    continue
                upto = hold_partial(buf, pos, (end_marker,))
                if final or upto - pos > MAX_NAME + 8 or not _RAW_NAME.fullmatch(buf, pos, upto):
                    self._not_a_call()
                    continue
                return
            elif state == _FENCE:
                p = skip_ws(buf, pos)
                rest = buf[p : p + len(FENCE) + 4]
                if rest.startswith(FENCE):
                    tag = rest[len(FENCE) :]
                    if "json".startswith(tag) and len(tag) < 4 and not final and p + len(rest) == len(buf):
                        return  # "```js" so far
                    self._pos = p + len(FENCE) + (4 if tag == "json" else 0)
                    self._state = _ARGS
                elif p < len(buf) and buf[p] in "{[":
                    self._pos = p
                    self._state = _ARGS
                elif not final and FENCE.startswith(rest):
                    return
                else:
                    self._close_call()
                    self._state = _SKIP
            elif state == _ARGS:
                outcome = self._pump_value(self._scanner, final)
                if outcome == MORE:
                    return
                self._state = _TAIL if outcome == DONE else _SKIP
                assert outcome in (DONE, BROKEN)
            elif state == _TAIL:
                p = skip_ws(buf, pos)
                if buf.startswith(FENCE, p):
                    p = skip_ws(buf, p + len(FENCE))
                rest = buf[p:]
                if rest.startswith(CALL_END):
                    self._pos = p + len(CALL_END)
                    self._next_after_call()
                elif not final and (CALL_END.startswith(rest) or FENCE.startswith(rest)):
                    return
                else:
                    self._state = _SKIP
            else:  # _SKIP: the rest of a broken call, up to its end (or the block's)
                at, marker = find_first(buf, pos, (CALL_END, CALLS_END))
                if at < 0:
                    self._pos = len(buf) if final else hold_partial(buf, pos, (CALL_END, CALLS_END))
                    return
                self._pos = at + len(marker)
                if marker == CALLS_END:
                    self._in_block = False
                self._next_after_call()


class DeepSeekV31ToolParser(DeepSeekV3ToolParser):
    name = "deepseek31"
    v31 = True
