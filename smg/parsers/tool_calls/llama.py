"""``llama``: Llama 3.x JSON tool calls.

Llama 3.1/3.2 call tools as ``{"name": "f", "parameters": {...}}`` (``arguments`` accepted too),
either as the whole answer or after the ``<|python_tag|>`` token (text before the tag is
content), several separated by ``;``. As in the reference, a bare object counts only at the start
of the output (after whitespace); after the tag, objects may follow one another with ``;``.
"""

from __future__ import annotations

from smg.parsers.tool_calls.base import hold_partial
from smg.parsers.tool_calls.sequence import CONTENT, JsonCallSequence

PYTHON_TAG = "<|python_tag|>"
_START = CONTENT + 1


class LlamaToolParser(JsonCallSequence):
    name = "llama"
    initial_state = _START

    def _step(self, final: bool) -> None:
        while True:
            buf = self._buf
            if self._state == _START:
                p = self._skip_ws(self._pos)
                if p == len(buf) and not final:
                    return
                if p < len(buf) and buf[p] == "{":
                    self._begin_sequence(self._pos, p, 0, ";", None)
                else:
                    self._state = CONTENT
            elif self._state == CONTENT:
                at = buf.find(PYTHON_TAG, self._pos)
                if at < 0:
                    upto = len(buf) if final else hold_partial(buf, self._pos, (PYTHON_TAG,))
                    self._content(buf[self._pos : upto])
                    self._pos = upto
                    return
                self._content(buf[self._pos : at])
                self._begin_sequence(at, at + len(PYTHON_TAG), len(PYTHON_TAG), ";", None)
            elif not self._sequence_step(final):
                return
