"""``mistral``: Mistral / Mixtral tool calls, ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}]``.

Text before ``[TOOL_CALLS]`` is content; after the marker comes a JSON array of call objects
(a lone object is accepted too); text after the array is content, and a later marker starts
another batch. ``[TOOL_CALLS]`` is a control token: the detokenizer must keep it in the text.
"""

from __future__ import annotations

from smg.parsers.tool_calls.base import hold_partial
from smg.parsers.tool_calls.sequence import CONTENT, JsonCallSequence

TOOL_CALLS = "[TOOL_CALLS]"
_OPEN = CONTENT + 1


class MistralToolParser(JsonCallSequence):
    name = "mistral"

    def _step(self, final: bool) -> None:
        while True:
            buf = self._buf
            if self._state == CONTENT:
                at = buf.find(TOOL_CALLS, self._pos)
                if at < 0:
                    upto = len(buf) if final else hold_partial(buf, self._pos, (TOOL_CALLS,))
                    self._content(buf[self._pos : upto])
                    self._pos = upto
                    return
                self._content(buf[self._pos : at])
                self._mark, self._pos = at, at + len(TOOL_CALLS)
                self._state = _OPEN
            elif self._state == _OPEN:
                mark = self._mark
                assert mark is not None
                p = self._skip_ws(self._pos)
                if p == len(buf) and not final:
                    return
                c = buf[p] if p < len(buf) else ""
                if c == "[":
                    self._begin_sequence(mark, p + 1, len(TOOL_CALLS), ",", "]")
                elif c == "{":
                    self._begin_sequence(mark, p, len(TOOL_CALLS), None, None)
                else:
                    self._give_back(mark, mark + len(TOOL_CALLS))
                    self._state = CONTENT
            elif not self._sequence_step(final):
                return
