"""Sequences of JSON call objects: what the ``json``, ``llama`` and ``mistral`` formats share.

Those formats write calls as JSON objects one after another: in a JSON array
(``[{...}, {...}]``), separated by ``;`` (Llama 3), or alone. Only the framing differs (where
the sequence starts, its separator, its closing bracket), so the element-by-element reading,
and what happens when an element is not a call, live here once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from smg.parsers.tool_calls.base import BROKEN, DONE, FAILED, MORE, ToolParser
from smg.parsers.tool_calls.jsonscan import CallObject
from smg.parsers.types import IdFactory

#: The formats' own states start at CONTENT; the sequence's are below it.
ELEM_START, ELEM, NEXT, CONTENT = range(4)


class JsonCallSequence(ToolParser):
    """A format whose calls are a sequence of JSON objects; subclasses find where one starts
    (``_begin_sequence``) and read the text around it in their own states (``CONTENT`` and up)."""

    #: The state a fresh parser starts in.
    initial_state: ClassVar[int] = CONTENT

    def __init__(self, *, tools: Iterable[str] | None = None, id_factory: IdFactory | None = None) -> None:
        super().__init__(tools=tools, id_factory=id_factory)
        self._state = self.initial_state
        self._sep: str | None = None
        self._close: str | None = None
        self._calls_in_seq = 0
        self._resume_len = 0
        self._scanner = CallObject()

    def _begin_sequence(self, mark: int, pos: int, resume_len: int, sep: str | None, close: str | None) -> None:
        """A sequence may start: its text from ``mark`` is held until its first call is known;
        if none comes, ``buf[mark:mark+resume_len]`` (the start marker) is given back as content
        and reading resumes after it."""
        self._mark, self._pos, self._resume_len = mark, pos, resume_len
        self._sep, self._close = sep, close
        self._calls_in_seq = 0
        self._state = ELEM_START

    def _not_a_call(self) -> None:
        mark = self._mark
        assert mark is not None
        # the first element: the whole sequence so far, from its marker; a later one: itself
        self._give_back(mark, mark + (self._resume_len if self._calls_in_seq == 0 else 0))
        self._state = CONTENT

    def _sequence_step(self, final: bool) -> bool:
        """One move in a sequence state; False when the text so far decides nothing more."""
        buf, state = self._buf, self._state
        if state == ELEM_START:
            p = self._skip_ws(self._pos)
            if p == len(buf) and not final:
                return False
            if p < len(buf) and buf[p] == "{":
                if self._calls_in_seq:
                    self._mark = p
                self._pos = p
                self._scanner = CallObject()
                self._state = ELEM
            elif self._calls_in_seq == 0:
                self._not_a_call()
            else:
                self._state = CONTENT  # a separator, then something else: that is content
            return True
        if state == ELEM:
            outcome = self._pump_object(self._scanner, final)
            if outcome == MORE:
                return False
            if outcome == FAILED:
                self._not_a_call()
            elif outcome == DONE:
                self._calls_in_seq += 1
                self._state = NEXT
            else:
                assert outcome == BROKEN
                self._state = CONTENT  # the rest after the breaking character reads as content
            return True
        # NEXT: after a call, a separator, the closing bracket, or the end of the sequence
        p = self._skip_ws(self._pos)
        if p == len(buf):
            if not final:
                return False
            self._state = CONTENT
            return True
        c = buf[p]
        if c == self._sep:
            self._pos = p + 1
            self._state = ELEM_START
        elif c == self._close:
            self._pos = p + 1
            self._state = CONTENT
        else:
            self._state = CONTENT
        return True
