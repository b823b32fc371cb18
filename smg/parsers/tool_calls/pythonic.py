"""``pythonic``: calls as a Python list of function calls, ``[get_weather(city="Paris"), f()]``.

Llama 4 (and Llama 3.2 small models, when prompted so) answer with such a list, possibly between
``<|python_start|>`` and ``<|python_end|>`` (dropped, as the reference drops them) and possibly
with prose around it. A list is a call list when it starts like one (``[`` name ``(``), its
brackets balance (strings skipped, Python quoting), and the whole list parses, with Python's
own ``ast`` parser and nothing evaluated, as calls of plain names with keyword arguments whose
values are literals (strings, numbers, booleans, ``None``, lists, tuples, dicts, and a bare name,
which the reference reads as its string). Anything else, including a call to a tool the request
did not offer, is content, as written. Arguments are known only when the list closes, so each
call streams as one delta with its whole arguments (compact JSON).
"""

from __future__ import annotations

import ast
import json
import math
import warnings
from collections.abc import Iterable
from typing import Any

from smg.parsers.tool_calls.base import ToolParser, dump_arguments, find_first, hold_partial
from smg.parsers.types import IdFactory

PYTHON_START = "<|python_start|>"
PYTHON_END = "<|python_end|>"
_TOKENS = (PYTHON_START, PYTHON_END)
MAX_BLOCK = 1 << 20
MAX_DEPTH = 64

_CONTENT, _PREFIX, _BLOCK = range(3)


class _NotLiteral(Exception):
    pass


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant):
        value = node.value
        if value is None or isinstance(value, bool | int | str):
            return value
        if isinstance(value, float) and math.isfinite(value):
            return value
        raise _NotLiteral
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        out: dict[str, Any] = {}
        for key_node, value_node in zip(node.keys, node.values, strict=True):
            if key_node is None:
                raise _NotLiteral  # **mapping
            out[_key(_literal(key_node))] = _literal(value_node)
        return out
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _literal(node.operand)
        if isinstance(operand, bool) or not isinstance(operand, int | float):
            raise _NotLiteral
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.Name):
        return node.id
    raise _NotLiteral


def _key(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    raise _NotLiteral


def parse_call_list(text: str) -> list[tuple[str, str]] | None:
    """``[(name, arguments_json), ...]`` of a pythonic call list, or None if it is not one."""
    try:
        with warnings.catch_warnings():  # "invalid escape sequence" and the like: not ours to report
            warnings.simplefilter("ignore")
            tree = ast.parse(text.strip(), mode="eval")
        body = tree.body
        if not isinstance(body, ast.List) or not body.elts:
            return None
        calls = []
        for call in body.elts:
            if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.args:
                return None
            arguments: dict[str, Any] = {}
            for keyword in call.keywords:
                if keyword.arg is None:
                    return None  # **kwargs
                arguments[keyword.arg] = _literal(keyword.value)
            calls.append((call.func.id, dump_arguments(arguments)))
        return calls
    except (_NotLiteral, SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return None


class PythonicToolParser(ToolParser):
    name = "pythonic"

    def __init__(self, *, tools: Iterable[str] | None = None, id_factory: IdFactory | None = None) -> None:
        super().__init__(tools=tools, id_factory=id_factory)
        self._state = _CONTENT
        self._depth = 0
        self._quote = ""
        #: How far past the mark ``_prefix`` has read, and in which phase (it goes on from there).
        self._prefix_at = 1
        self._prefix_phase = 0

    def _not_a_call(self, resume: int) -> None:
        mark = self._mark
        assert mark is not None
        self._give_back(mark, resume)
        self._state = _CONTENT

    def _prefix(self, final: bool) -> bool:
        """Does the ``[`` at the mark open ``[name(``? False: not known yet (wait for more).
        True: decided; the state is still ``_PREFIX`` if it does, back to content if not."""
        buf = self._buf
        mark = self._mark
        assert mark is not None
        i, n, phase = mark + self._prefix_at, len(buf), self._prefix_phase  # 0: spaces, 1: name, 2: spaces after the name
        while i < n:
            c = buf[i]
            if phase == 0:
                if c.isspace():
                    pass
                elif c == "_" or c.isalpha():
                    phase = 1
                else:
                    break
            elif phase == 1:
                if c == "_" or c.isalnum():
                    pass
                elif c == "(":
                    return True
                elif c.isspace():
                    phase = 2
                else:
                    break
            elif c == "(":
                return True
            elif not c.isspace():
                break
            i += 1
        else:
            if not final:
                self._prefix_at, self._prefix_phase = i - mark, phase
                return False
        self._not_a_call(mark + 1)
        return True

    def _scan_block(self, final: bool) -> bool:
        """Scan the candidate list to its closing bracket; True when decided."""
        buf, n = self._buf, len(self._buf)
        mark = self._mark
        assert mark is not None
        i, depth, quote = self._pos, self._depth, self._quote
        while i < n:
            c = buf[i]
            if quote:
                if c == "\\":
                    if i + 1 >= n:
                        break
                    i += 2
                    continue
                if buf.startswith(quote, i):
                    i += len(quote)
                    quote = ""
                    continue
                if len(quote) == 3 and n - i < 3 and quote.startswith(buf[i:]) and not final:
                    break  # a partial closing triple quote
                i += 1
                continue
            if c in "'\"":
                if buf.startswith(c * 3, i):
                    quote = c * 3
                    i += 3
                    continue
                if n - i < 3 and (c * 3).startswith(buf[i:]) and not final:
                    break  # '' at the end: an empty string or a triple quote
                quote = c
                i += 1
                continue
            if c in "([{":
                depth += 1
                if depth > MAX_DEPTH:
                    self._not_a_call(i + 1)
                    return True
            elif c in ")]}":
                depth -= 1
                if depth == 0:
                    self._pos = i + 1
                    self._emit_block(self._text(mark, i + 1))
                    return True
            i += 1
        if final or i - mark > MAX_BLOCK:
            self._not_a_call(len(buf) if final else i)
            return True
        self._pos, self._depth, self._quote = i, depth, quote
        return False

    def _emit_block(self, text: str) -> None:
        calls = parse_call_list(text)
        if not calls or (self.tools is not None and any(name not in self.tools for name, _ in calls)):
            self._not_a_call(self._pos)
            return
        for name, arguments in calls:
            self._open_call(name)
            self._args(arguments)
            self._close_call()
        self._state = _CONTENT

    def _step(self, final: bool) -> None:
        while True:
            buf, pos = self._buf, self._pos
            if self._state == _CONTENT:
                at, marker = find_first(buf, pos, ("[", *_TOKENS))
                if at < 0:
                    upto = len(buf) if final else hold_partial(buf, pos, _TOKENS)
                    self._content(buf[pos:upto])
                    self._pos = upto
                    return
                self._content(buf[pos:at])
                if marker == "[":
                    self._mark, self._pos = at, at
                    self._prefix_at, self._prefix_phase = 1, 0
                    self._state = _PREFIX
                else:
                    self._pos = at + len(marker)
            elif self._state == _PREFIX:
                if not self._prefix(final):
                    return
                if self._state == _PREFIX:  # it is a call list's start
                    self._depth, self._quote = 0, ""
                    self._state = _BLOCK
            elif not self._scan_block(final):
                return
