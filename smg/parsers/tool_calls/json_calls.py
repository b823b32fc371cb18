"""``json``: the whole output is a tool call in JSON, or an array of them.

For models steered to answer in JSON (OpenAI-style prompts, or ``tool_choice: required`` under a
JSON-schema constraint): ``{"name": "f", "arguments": {...}}`` or ``[{...}, {...}]``
(``parameters`` for ``arguments`` accepted). The JSON must begin the output (after whitespace),
as the reference's streaming parser requires; its one-shot parser also digs a JSON object out of
the middle of prose, which a stream cannot do without holding back every brace, so smg applies
the streaming rule to both. Text after the JSON is content; JSON that is not a call is content.
"""

from __future__ import annotations

from smg.parsers.tool_calls.sequence import CONTENT, JsonCallSequence

_START = CONTENT + 1


class JsonToolParser(JsonCallSequence):
    name = "json"
    initial_state = _START

    def _step(self, final: bool) -> None:
        while True:
            if self._state == _START:
                p = self._skip_ws(self._pos)
                if p == len(self._buf) and not final:
                    return
                c = self._buf[p] if p < len(self._buf) else ""
                if c == "{":
                    self._begin_sequence(self._pos, p, 0, None, None)
                elif c == "[":
                    self._begin_sequence(self._pos, p + 1, 0, ",", "]")
                else:
                    self._state = CONTENT
            elif self._state == CONTENT:
                self._content(self._buf[self._pos :])
                self._pos = len(self._buf)
                return
            elif not self._sequence_step(final):
                return
