"""``qwen`` (and ``qwen2.5``, ``qwen3``): Hermes-style calls, ``<tool_call>{json}</tool_call>``.

Qwen 2.5 and Qwen 3 write each call as ``<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>``,
several one after another, with content possibly before them (and, rarely, after). Whitespace
around the JSON is free. A ``<tool_call>`` whose JSON does not turn into a named call is
given back as content; a call broken after its name ends where it broke and the rest, up to
``</tool_call>``, is dropped. A missing ``</tool_call>`` is tolerated: the next text reads as
content or as the next call.
"""

from __future__ import annotations

from collections.abc import Iterable

from smg.parsers.tool_calls.base import BROKEN, DONE, FAILED, MORE, ToolParser, hold_partial
from smg.parsers.tool_calls.jsonscan import CallObject
from smg.parsers.types import IdFactory

START = "<tool_call>"
END = "</tool_call>"
_CONTENT, _CALL, _AFTER, _SKIP = range(4)


class QwenToolParser(ToolParser):
    name = "qwen"

    def __init__(self, *, tools: Iterable[str] | None = None, id_factory: IdFactory | None = None) -> None:
        super().__init__(tools=tools, id_factory=id_factory)
        self._state = _CONTENT
        self._scanner = CallObject()

    def _step(self, final: bool) -> None:
        while True:
            buf = self._buf
            state = self._state
            if state == _CONTENT:
                at = buf.find(START, self._pos)
                if at < 0:
                    upto = len(buf) if final else hold_partial(buf, self._pos, (START,))
                    self._content(buf[self._pos : upto])
                    self._pos = upto
                    return
                self._content(buf[self._pos : at])
                self._mark, self._pos = at, at + len(START)
                self._scanner = CallObject()
                self._state = _CALL
            elif state == _CALL:
                outcome = self._pump_object(self._scanner, final)
                if outcome == MORE:
                    return
                if outcome == FAILED:
                    mark = self._mark
                    assert mark is not None
                    self._give_back(mark, mark + len(START))
                    self._state = _CONTENT
                else:
                    self._state = _AFTER if outcome == DONE else _SKIP
                    assert outcome in (DONE, BROKEN)
            elif state == _AFTER:
                p = self._skip_ws(self._pos)
                if buf.startswith(END, p):
                    self._pos = p + len(END)
                elif END.startswith(buf[p:]):
                    if not final:
                        return
                    self._pos = len(buf)  # the output was cut off inside the end tag
                self._state = _CONTENT
            else:  # _SKIP: the rest of a broken call
                at = buf.find(END, self._pos)
                if at >= 0:
                    self._pos = at + len(END)
                    self._state = _CONTENT
                    continue
                self._pos = len(buf) if final else hold_partial(buf, self._pos, (END,))
                return
