"""Incremental JSON scanning for tool calls: validate as the text arrives, emit compact JSON.

A tool call's arguments should stream as the model writes them, yet only what is certainly
JSON may go out. So instead of re-parsing a growing buffer as partial JSON (quadratic, and
each re-parse may reinterpret what was already sent), a small pushdown scanner reads each
character once, across pushes, and knows at every point whether the text so far can still be
JSON. What it emits is the model's JSON with the insignificant whitespace removed (strings,
numbers and literals as written; a raw control character inside a string, which strict JSON
forbids and models sometimes write, is escaped), so every prefix it has emitted is a prefix of
valid JSON and the whole is valid JSON.

``JsonScanner`` scans one value of any type; ``CallObject`` scans the object of one call
(``{"name": ..., "arguments": {...}}``), reporting the name as soon as it is complete and the
arguments' compact text as it grows.
"""

from __future__ import annotations

import json
import re

WS = " \t\n\r"
_STR_SPECIAL = re.compile(r'["\\\x00-\x1f]')
_CONTROL = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPES = frozenset('"\\/bfnrt')
_HEX = frozenset("0123456789abcdefABCDEF")
_LITERALS = {"t": "true", "f": "false", "n": "null"}
_KIND = {"{": "object", "[": "array", '"': "string"}

# value scanner states
_V, _OF, _OK, _AF, _STR, _ESC, _UHEX, _COLON, _AV, _NUM, _LIT = range(11)

# number automaton (RFC 8259 grammar): state -> {character class -> next state}
_N_SIGN, _N_ZERO, _N_INT, _N_DOT, _N_FRAC, _N_E, _N_ESIGN, _N_EXP = range(8)
_N_ACCEPT = frozenset((_N_ZERO, _N_INT, _N_FRAC, _N_EXP))
_N_NEXT: dict[int, dict[str, int]] = {
    _N_SIGN: {"0": _N_ZERO, "d": _N_INT},
    _N_ZERO: {".": _N_DOT, "e": _N_E},
    _N_INT: {"0": _N_INT, "d": _N_INT, ".": _N_DOT, "e": _N_E},
    _N_DOT: {"0": _N_FRAC, "d": _N_FRAC},
    _N_FRAC: {"0": _N_FRAC, "d": _N_FRAC, "e": _N_E},
    _N_E: {"0": _N_EXP, "d": _N_EXP, "+": _N_ESIGN, "-": _N_ESIGN},
    _N_ESIGN: {"0": _N_EXP, "d": _N_EXP},
    _N_EXP: {"0": _N_EXP, "d": _N_EXP},
}


def _num_class(c: str) -> str:
    if c == "0":
        return "0"
    if "1" <= c <= "9":
        return "d"
    if c in "eE":
        return "e"
    return c


def _escape_control(c: str) -> str:
    return _CONTROL.get(c) or f"\\u{ord(c):04x}"


class JsonScanner:
    """Scans exactly one JSON value, fed in pieces; ``take()`` gives its compact text so far.

    ``feed(s, i)`` reads ``s`` from ``i`` and returns where it stopped: ``len(s)`` when it wants
    more, the index just after the value when ``done`` (for a number: the index of the character
    that ended it, not consumed), or the index of the offending character when ``error``."""

    __slots__ = ("_hex", "_in_key", "_lit", "_num", "_out", "_stack", "_state", "done", "error", "kind", "max_depth")

    def __init__(self, max_depth: int = 256) -> None:
        self._stack: list[str] = []
        self._state = _V
        self._out: list[str] = []
        self._in_key = False
        self._lit = ""
        self._hex = ""
        self._num = _N_SIGN
        self.max_depth = max_depth
        self.kind: str | None = None
        self.done = False
        self.error = False

    def take(self) -> str:
        text = "".join(self._out)
        self._out.clear()
        return text

    def eof(self) -> None:
        """The input ended: a number standing alone is complete there."""
        if self._state == _NUM and not self._stack and self._num in _N_ACCEPT:
            self.done = True

    def _value_done(self) -> None:
        if self._stack:
            self._state = _AV
        else:
            self.done = True

    def _close(self, out: list[str], c: str) -> bool:
        """`c` closes the innermost container: one value done; True when it was the outermost."""
        self._stack.pop()
        out.append(c)
        self._value_done()
        return self.done

    def feed(self, s: str, i: int) -> int:
        if self.done or self.error:
            return i
        n = len(s)
        out = self._out
        while i < n:
            state = self._state
            if state == _STR:
                m = _STR_SPECIAL.search(s, i)
                j = m.start() if m else n
                if j > i:
                    out.append(s[i:j])
                    i = j
                    if i >= n:
                        break
                c = s[i]
                i += 1
                if c == '"':
                    out.append('"')
                    if self._in_key:
                        self._state = _COLON
                    else:
                        self._value_done()
                        if self.done:
                            return i
                elif c == "\\":
                    self._state = _ESC
                else:
                    out.append(_escape_control(c))
                continue
            c = s[i]
            if state == _ESC:
                if c in _ESCAPES:
                    out.append("\\" + c)
                    self._state = _STR
                elif c == "u":
                    self._hex = ""
                    self._state = _UHEX
                else:
                    self.error = True
                    return i
                i += 1
                continue
            if state == _UHEX:
                if c not in _HEX:
                    self.error = True
                    return i
                self._hex += c
                if len(self._hex) == 4:
                    out.append("\\u" + self._hex)
                    self._state = _STR
                i += 1
                continue
            if state == _NUM:
                nxt = _N_NEXT[self._num].get(_num_class(c))
                if nxt is None:
                    if self._num not in _N_ACCEPT:
                        self.error = True
                        return i
                    self._value_done()
                    if self.done:
                        return i  # the terminator belongs to whoever reads on
                    continue
                self._num = nxt
                out.append(c)
                i += 1
                continue
            if state == _LIT:
                if c != self._lit[0]:
                    self.error = True
                    return i
                out.append(c)
                self._lit = self._lit[1:]
                i += 1
                if not self._lit:
                    self._value_done()
                    if self.done:
                        return i
                continue
            if c in WS:
                i += 1
                continue
            if state == _V:
                if self.kind is None:
                    self.kind = _KIND.get(c) or ("number" if c == "-" or "0" <= c <= "9" else _LITERALS.get(c, "?"))
                if c == "{" or c == "[":
                    if len(self._stack) >= self.max_depth:
                        self.error = True
                        return i
                    self._stack.append(c)
                    out.append(c)
                    self._state = _OF if c == "{" else _AF
                elif c == '"':
                    out.append(c)
                    self._in_key = False
                    self._state = _STR
                elif c == "-" or "0" <= c <= "9":
                    self._num = _N_NEXT[_N_SIGN][_num_class(c)] if c != "-" else _N_SIGN
                    out.append(c)
                    self._state = _NUM
                elif c in _LITERALS:
                    self._lit = _LITERALS[c][1:]
                    out.append(c)
                    self._state = _LIT
                else:
                    self.error = True
                    return i
                i += 1
                continue
            if state == _AF:
                if c == "]":
                    i += 1
                    if self._close(out, c):
                        return i
                else:
                    self._state = _V
                continue
            if state in (_OF, _OK):
                if c == '"':
                    out.append(c)
                    self._in_key = True
                    self._state = _STR
                elif c == "}" and state == _OF:
                    i += 1
                    if self._close(out, c):
                        return i
                    continue
                else:
                    self.error = True
                    return i
                i += 1
                continue
            if state == _COLON:
                if c != ":":
                    self.error = True
                    return i
                out.append(c)
                self._state = _V
                i += 1
                continue
            # _AV: after a value inside a container
            top = self._stack[-1]
            if c == ",":
                out.append(c)
                self._state = _OK if top == "{" else _V
            elif (c == "}" and top == "{") or (c == "]" and top == "["):
                i += 1
                if self._close(out, c):
                    return i
                continue
            else:
                self.error = True
                return i
            i += 1
        return i


# call object states
_C_START, _C_FIRST, _C_KEY, _C_KEYSTR, _C_COLON, _C_VALUE, _C_AFTER = range(7)

#: Keys a call object may have before its name is known; any other key first means it is not a
#: call (so plain JSON output is given back quickly instead of being held).
PRE_NAME_KEYS = frozenset(("name", "function", "arguments", "parameters", "type"))
ARGS_KEYS = frozenset(("arguments", "parameters"))
MAX_NAME = 256


class CallObject:
    """Scans one call object: ``{"name": "f", "arguments": {...}}`` (``parameters`` is taken for
    ``arguments``, and a string ``function`` for ``name``, as the reference's parsers take them).

    After each ``feed``: ``name`` once the name string is complete; ``args_kind`` once the
    arguments' value began (``"object"``, ``"string"``, ...); ``take_args()`` their compact
    text so far; ``args_done``; ``done`` when the object closed with a name; ``error`` when the
    text cannot be such an object (a key other than ``PRE_NAME_KEYS`` before the name counts)."""

    __slots__ = (
        "_args",
        "_has_args",
        "_key",
        "_role",
        "_state",
        "_sub",
        "args_done",
        "args_flushed",
        "args_kind",
        "done",
        "error",
        "name",
    )

    def __init__(self) -> None:
        self._state = _C_START
        self._sub: JsonScanner | None = None
        self._key = ""
        self._role = ""
        self._args: list[str] = []
        self._has_args = False
        self.name: str | None = None
        self.args_kind: str | None = None
        self.args_done = False
        #: Set by the owner once it emitted arguments that are not an object (they go out whole).
        self.args_flushed = False
        self.done = False
        self.error = False

    def take_args(self) -> str:
        text = "".join(self._args)
        self._args.clear()
        return text

    def eof(self) -> None:
        if self._state == _C_VALUE and self._sub is not None:
            self._sub.eof()
            if self._sub.done:
                self._value_complete()

    def _fail(self, i: int) -> int:
        self.error = True
        return i

    def _value_complete(self) -> bool:
        sub = self._sub
        assert sub is not None
        text = sub.take()
        self._sub = None
        self._state = _C_AFTER
        role = self._role
        if role == "args":
            self._args.append(text)
            self.args_done = True
        elif role == "name":
            if sub.kind != "string":
                return self.name is not None  # a name that is not a string: not a call, unless named already
            try:
                name = json.loads(text)
                name.encode("utf-8")
            except (ValueError, UnicodeEncodeError):
                return False
            if self.name is None:
                if not name or len(name) > MAX_NAME:
                    return False
                self.name = name
        return True

    def feed(self, s: str, i: int) -> int:
        if self.done or self.error:
            return i
        n = len(s)
        while i < n:
            state = self._state
            if state in (_C_VALUE, _C_KEYSTR):
                sub = self._sub
                assert sub is not None
                i = sub.feed(s, i)
                if self._role == "args" and state == _C_VALUE:
                    if self.args_kind is None:
                        self.args_kind = sub.kind
                    self._args.append(sub.take())
                if sub.error:
                    return self._fail(i)
                if not sub.done:
                    return i
                if state == _C_KEYSTR:
                    key = json.loads(sub.take())
                    self._sub = None
                    if self.name is None and key not in PRE_NAME_KEYS:
                        return self._fail(i)
                    self._key = key
                    self._state = _C_COLON
                elif not self._value_complete():
                    return self._fail(i)
                continue
            c = s[i]
            if c in WS:
                i += 1
                continue
            if state == _C_START:
                if c != "{":
                    return self._fail(i)
                self._state = _C_FIRST
            elif state in (_C_FIRST, _C_KEY):
                if c == '"':
                    self._sub = JsonScanner()
                    self._state = _C_KEYSTR
                    continue
                return self._fail(i)  # includes {}: no name
            elif state == _C_COLON:
                if c != ":":
                    return self._fail(i)
                key = self._key
                if key in ARGS_KEYS and not self._has_args:
                    self._role = "args"
                    self._has_args = True
                elif key == "name" or (key == "function" and self.name is None):
                    self._role = "name"
                else:
                    self._role = "skip"
                self._sub = JsonScanner()
                self._state = _C_VALUE
            else:  # _C_AFTER
                if c == ",":
                    self._state = _C_KEY
                elif c == "}":
                    if self.name is None:
                        return self._fail(i)
                    self.done = True
                    return i + 1
                else:
                    return self._fail(i)
            i += 1
        return i
