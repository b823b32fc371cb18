"""``passthrough`` / ``plain``: no tool-call parsing, the whole output is content.

For models whose calls the client parses itself, or to switch the gateway's parsing off.
"""

from __future__ import annotations

from smg.parsers.tool_calls.base import ToolParser


class PassthroughToolParser(ToolParser):
    name = "passthrough"

    def _step(self, final: bool) -> None:
        self._content(self._buf[self._pos :])
        self._pos = len(self._buf)
