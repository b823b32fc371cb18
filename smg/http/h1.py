"""The server side of HTTP/1.1, sans-IO: request bytes in, events out; response messages in, bytes out.

`smg.http.server` feeds this module what its sockets read and writes what it returns; nothing
here touches a socket or a clock. It exists because hypercorn (with h11) cost 0.48 ms of CPU
per request on this project's 2-core machine, where a trio server over llhttp costs 0.03 ms
(`python bench/server_floor.py`); the gateway's whole budget is 0.40 ms.

Requests are parsed by llhttp (Node's parser, through `httptools`, already the upstream
parser's engine) in its strict default mode: CRLF line endings only, no obs-fold, header names
as tokens, no control characters in values, one decimal Content-Length, no Content-Length next
to Transfer-Encoding, chunk sizes and extensions checked. What llhttp leaves to its caller,
`RequestParser` adds, so that it refuses what h11 (the trusted reference in
tests/property/test_request_parser.py) refuses:

- only HTTP/1.0 and HTTP/1.1 (llhttp also reads HTTP/0.9, 2.0 and 3.0 request lines): 505
  (other versions, HTTP/1.2 say, are llhttp's 400);
- one Host header at most, exactly one on HTTP/1.1 (RFC 9112 §3.2): 400;
- `Connection: close` wins over `keep-alive` in the same header, as in h11;
- Transfer-Encoding is one header whose value is `chunked`, and not on HTTP/1.0: 501 or 400;
- the head (request line and headers) at most `MAX_HEAD` bytes, counted from the first read
  that holds a part of it (so a read that also ends the requests before it counts those
  too): 431; chunk-size lines and
  trailers at most `MAX_FRAMING` bytes over the reads between two pieces of body, so a client
  cannot hold a connection with an endless chunk extension: 400. The bound is counted per read
  that carries no body, so a read that ends a head or carries body may hold one read's worth
  more (llhttp keeps none of it).

Known differences from h11 (tests/property/test_request_parser.py pins each), all refusals of
what h11 takes, except where said: a method outside llhttp's list (below); a target in none of
RFC 9112 §3.2's forms (`GET abc`); a Content-Length over 64 bits or in chunked trailers; a tab
after `Transfer-Encoding: chunked`. Taken where h11 refuses: CR or LF before a request line
(RFC 9112 §2.2 allows it), more than one space between the request line's parts, chunk sizes
with more than 20 digits of leading zeros, and HTTP/1.0 `Connection: keep-alive` (kept open;
h11 closes every HTTP/1.0 connection).

llhttp knows a fixed list of methods (the HTTP, WebDAV and a few other registries); a method
outside it is a 400 here, where h11 takes any token (the gateway would answer 404 anyway).

An Upgrade request (`Connection: upgrade`) is answered as plain HTTP/1.1, which RFC 9110 §7.8
allows: llhttp stops parsing at the end of such a head, so a body it declares by length is
read here, and the connection closes after the answer. A chunked body on one is refused (400),
and so are CONNECT (405) and HTTP/2's connection preface (505: HTTP/2 is not offered).

`ResponseFramer` turns the ASGI response messages of one request into bytes, as h11 would:
the head goes out with the first body piece (one write for a whole answer, not three), the
body is framed by the app's Content-Length, by chunked coding on HTTP/1.1, or by closing the
connection on HTTP/1.0; nothing follows the head of an answer to HEAD or of a 204 or 304;
header names and values that would split the response are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import unquote

import httptools

Headers = list[tuple[bytes, bytes]]

MAX_HEAD = 64 * 1024  # request line and headers
MAX_FRAMING = 16 * 1024  # as h11's default limit on an incomplete event
_HTTP11 = "1.1"


class BadRequest(Exception):
    """The client's bytes are not a request this server takes. `status` is the answer to send
    (400, 405, 431, 501 or 505) once the requests before it are answered (`events`: what the
    same `feed` completed before the fault); the connection closes after it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.events: list[Event] = []


class LocalProtocolError(Exception):
    """The application's response cannot be framed (bad header, body past its Content-Length)."""


@dataclass(slots=True)
class Request:
    """A request head. Header names are lower-case, values without trailing blanks."""

    method: str
    target: bytes
    http_version: str  # "1.0" or "1.1"
    headers: Headers
    keep_alive: bool  # the client allows another request on this connection (Upgrade ones never)
    expect_continue: bool  # `Expect: 100-continue` on HTTP/1.1: send 100 before reading the body
    has_body: bool  # a Content-Length over 0, or chunked

    def path_and_query(self) -> tuple[str, bytes, bytes]:
        """ASGI's `path` (percent-decoded), `raw_path` and `query_string`."""
        target = self.target
        if target[:1] != b"/" and target != b"*":  # absolute-form (a proxy's); `*` is OPTIONS'
            scheme_end = target.find(b"://")
            start = scheme_end + 3 if scheme_end > 0 else 0
            slash, mark = target.find(b"/", start), target.find(b"?", start)
            no_path = slash < 0 or 0 <= mark < slash
            target = (b"/" + (target[mark:] if mark >= 0 else b"")) if no_path else target[slash:]
        raw, _, query = target.partition(b"?")
        path = raw.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        return path, raw, query


@dataclass(slots=True)
class Data:
    """Body bytes: everything one `feed` brought of one message's body, chunk framing removed
    (one piece however many chunks came). Shared with the upstream response parser."""

    data: bytes


@dataclass(slots=True)
class EndOfMessage:
    pass


Event = Request | Data | EndOfMessage
_END = EndOfMessage()


class _Callbacks:
    """llhttp's callbacks, the connection's parse state, and the events of the current `feed`.

    It refers to its llhttp parser (for the method, version and keep-alive at the end of each
    head), a cycle `RequestParser.close` breaks."""

    __slots__ = (
        "body",
        "chunked",
        "events",
        "framing",
        "head_bytes",
        "headers",
        "in_head",
        "last",
        "llhttp",
        "raw_left",
        "upgrade_length",
        "url",
    )

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.headers: Headers = []
        self.body: list[bytes] = []
        self.url = b""
        self.in_head = False
        self.last = False  # the request read last ends the connection (llhttp refuses bytes after it)
        self.llhttp: httptools.HttpRequestParser | None = None
        self.head_bytes = 0  # bytes of the head being read, across feeds (an upper bound)
        self.framing = 0  # bytes since the last one that carried body, within a chunked body
        self.chunked = False  # the body being read is chunked
        self.upgrade_length = 0  # an Upgrade request's Content-Length: llhttp ends it at its head
        self.raw_left = 0  # of that body, the bytes still to read past llhttp

    def on_message_begin(self) -> None:
        self.in_head = True
        self.head_bytes = -1  # the feed under way counts whole: it holds this head's first bytes
        self.headers = []
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url  # llhttp hands the target over in pieces when it spans reads

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:  # else a trailer field, which nothing here uses
            self.headers.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        llhttp = self.llhttp
        assert llhttp is not None
        request, self.chunked, self.upgrade_length = _check_head(
            self.headers,
            self.url,
            llhttp.get_method().decode("ascii"),
            llhttp.get_http_version(),
            llhttp.should_keep_alive(),
            llhttp.should_upgrade(),
        )
        self.last = not request.keep_alive
        self.in_head = False
        self.framing = -1  # the feed under way ended the head: its bytes are not framing
        self.events.append(request)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def flush_body(self) -> None:
        body = self.body
        self.events.append(Data(body[0] if len(body) == 1 else b"".join(body)))
        body.clear()

    def on_message_complete(self) -> None:
        if self.body:
            self.flush_body()
        self.chunked = False
        if self.upgrade_length > 0:
            self.raw_left = self.upgrade_length  # RequestParser reads it from the bytes llhttp left
            return
        self.events.append(_END)


class RequestParser:
    """The requests of one connection, fed its bytes in order (pipelined requests included).

    `feed` returns the events the bytes completed, for as many requests as they hold: each
    `Request` head, at most one `Data` per request per call, and `EndOfMessage`. It raises
    `BadRequest` (with the events before the fault); after that, or after an Upgrade request,
    the parser takes no more requests (`closed`; `done` once no event can come). `close` when
    the connection ends."""

    __slots__ = ("_cb", "_llhttp", "closed")

    def __init__(self) -> None:
        cb = self._cb = _Callbacks()
        self._llhttp = cb.llhttp = httptools.HttpRequestParser(cb)
        self.closed = False

    def close(self) -> None:
        self._cb.llhttp = None
        self.closed = True

    @property
    def done(self) -> bool:
        """No event can come any more (refused, closed, or past an Upgrade request's body)."""
        return self.closed and self._cb.raw_left <= 0

    def feed(self, data: bytes) -> list[Event]:
        cb = self._cb
        if self.closed or not data:
            return self._raw_body(data) if cb.raw_left > 0 else []
        events = cb.events = []
        try:
            self._parse(data)
        except BadRequest as exc:
            self.closed = True
            cb.body.clear()  # of the refused request
            exc.events = events
            raise
        return events

    def _parse(self, data: bytes) -> None:
        cb = self._cb
        events = cb.events
        try:
            self._llhttp.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, BadRequest):
                raise cause from None
            raise
        except httptools.HttpParserUpgrade as exc:
            self.closed = True
            events.extend(self._raw_body(data[int(exc.args[0]) :]))
            return
        except httptools.HttpParserInvalidMethodError:
            raise BadRequest(400, "unknown request method") from None
        except httptools.HttpParserError as exc:
            if cb.last and not cb.in_head and cb.raw_left <= 0 and events and type(events[-1]) is EndOfMessage:
                self.closed = True  # bytes after a request that closes the connection: not read, as h11
                return
            message = str(exc)
            if "PRI/Upgrade" in message:
                raise BadRequest(505, "HTTP/2 without TLS is not supported: send HTTP/1.1") from None
            raise BadRequest(400, f"malformed HTTP/1.1 request: {message}") from None
        if cb.in_head:
            cb.head_bytes = len(data) if cb.head_bytes < 0 else cb.head_bytes + len(data)
            if cb.head_bytes > MAX_HEAD:
                raise BadRequest(431, f"request head over {MAX_HEAD} bytes")
            return
        if cb.body:  # the body read so far of the request under way
            cb.flush_body()
            cb.framing = 0
        elif cb.chunked:
            cb.framing = 0 if cb.framing < 0 else cb.framing + len(data)
            if cb.framing > MAX_FRAMING:
                raise BadRequest(400, f"chunk-size line or trailers over {MAX_FRAMING} bytes")

    def _raw_body(self, data: bytes) -> list[Event]:
        cb = self._cb
        if not data or cb.raw_left <= 0:
            return []
        piece = data[: cb.raw_left]
        cb.raw_left -= len(piece)
        events: list[Event] = [Data(piece)]
        if cb.raw_left == 0:
            cb.upgrade_length = 0
            events.append(_END)
        return events


def _check_head(
    headers: Headers, url: bytes, method: str, version: str, keep_alive: bool, upgrade: bool
) -> tuple[Request, bool, int]:
    """The checks llhttp leaves to its caller: the head as a `Request`, whether its body is
    chunked, and an Upgrade request's Content-Length (0 for any other)."""
    if method == "CONNECT":
        raise BadRequest(405, "CONNECT is not supported")
    if version != _HTTP11 and version != "1.0":
        raise BadRequest(505, f"HTTP version {version} is not supported: send HTTP/1.1")
    length = 0
    chunked = False
    hosts = 0
    expect = False
    for name, value in headers:
        if name == b"content-length":
            length = int(value)  # llhttp checked: digits only, once
        elif name == b"transfer-encoding":
            if chunked or value.lower() != b"chunked":  # as h11: one header, that one coding, no list
                raise BadRequest(501, f"unsupported transfer-encoding: {value[:40].decode('latin-1')!r}")
            chunked = True
        elif name == b"host":
            hosts += 1
        elif name == b"connection" and keep_alive and b"close" in value.lower():
            keep_alive = b"close" not in [token.strip() for token in value.lower().split(b",")]  # close wins, as h11
        elif name == b"expect" and value.lower() == b"100-continue":
            expect = True
    if hosts > 1 or (version == _HTTP11 and hosts == 0):
        raise BadRequest(400, "a request takes one Host header (HTTP/1.1: exactly one)")
    if chunked and version != _HTTP11:
        raise BadRequest(400, "transfer-encoding in an HTTP/1.0 request")
    upgrade_length = 0
    if upgrade:  # llhttp's verdict (Connection's `upgrade` token and an Upgrade header): it stops at the head
        if chunked:
            raise BadRequest(400, "a chunked body on an Upgrade request is not supported")
        keep_alive = False  # llhttp reads nothing after it: the connection ends with the answer
        upgrade_length = length
    request = Request(method, url, version, headers, keep_alive, expect and version == _HTTP11, chunked or length > 0)
    return request, chunked, upgrade_length


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_LAST_CHUNK = b"0\r\n\r\n"
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_BLANK = (b" ", b"\t")
_CHECKED_NAMES: dict[bytes, bytes] = {}  # header names the app used and that passed, lower-cased: names repeat
_MAX_CHECKED = 4096


def _check_name(name: bytes) -> bytes:
    if not _TOKEN.fullmatch(name):
        raise LocalProtocolError(f"bad header name from the application: {name[:40]!r}")
    lower = name.lower()
    if len(_CHECKED_NAMES) < _MAX_CHECKED:
        _CHECKED_NAMES[name] = lower
    return lower


class ResponseFramer:
    """One response's bytes. `start` takes the head; `body` returns what to write for each body
    message (the head included with the first); `keep_alive` says afterwards whether the
    connection may carry another request, `complete` whether the response ended."""

    __slots__ = ("_chunked", "_head", "_http10", "_left", "_no_body", "complete", "keep_alive", "started")

    def __init__(self, request: Request, *, closing: bool = False) -> None:
        """`closing`: the server is shutting down, so this is the connection's last response."""
        self._no_body = request.method == "HEAD"
        self._http10 = request.http_version != _HTTP11
        self.keep_alive = request.keep_alive and not closing
        self._head = b""
        self._chunked = False
        self._left = -1  # body bytes still due by the Content-Length; -1: the body ends with the connection
        self.started = False
        self.complete = False

    def start(self, status: int, headers: Headers, date: bytes, *, closing: bool = False) -> None:
        """`closing`: the server is shutting down, so the connection ends with this response."""
        if self.started:
            raise LocalProtocolError("the response has already started")
        if status < 200 or status > 999:
            raise LocalProtocolError(f"status {status}: only final responses are sent")
        self.started = True
        out = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))]
        length = -1
        close = closing or not self.keep_alive
        checked = _CHECKED_NAMES
        values = []
        for name, value in headers:
            lower = checked.get(name)
            if lower is None:
                lower = _check_name(name)
            if lower in _FRAMING:
                if lower == b"content-length":
                    if not value.isdigit() or length >= 0:
                        raise LocalProtocolError(f"bad content-length from the application: {value[:40]!r}")
                    length = int(value)  # written below, once, when the status allows one
                elif lower == b"connection":
                    close = close or b"close" in value.lower()  # hop-by-hop: written below, once
                continue  # transfer-encoding: the framing is this module's, chunked added below when needed
            out += (lower, b": ", value, b"\r\n")
            values.append(value)
        # as h11: no control character but HTAB in a value (CR or LF would split the response),
        # no blank at either end; checked over all the values at once
        if values and (_BAD_VALUE.search(b"\t".join(values)) or any(v[:1] in _BLANK or v[-1:] in _BLANK for v in values)):
            bad = next(n for n, v in headers if _BAD_VALUE.search(v) or v[:1] in _BLANK or v[-1:] in _BLANK)
            raise LocalProtocolError(f"bad value for header {bad.decode('latin-1')!r} from the application")
        if status == 204 or status == 304:
            self._no_body = True
        elif length >= 0:
            out += (b"content-length: ", b"%d" % length, b"\r\n")
            self._left = length
        elif self._no_body:
            pass  # HEAD: the GET's framing is unknown, so none is claimed
        elif self._http10:
            close = True  # the body ends when the connection does
        else:
            self._chunked = True
            out.append(b"transfer-encoding: chunked\r\n")
        if self._no_body:
            self._left = 0
        if close:
            self.keep_alive = False
            out.append(b"connection: close\r\n")
        elif self._http10:
            out.append(b"connection: keep-alive\r\n")
        out += (b"date: ", date, b"\r\n\r\n")
        self._head = b"".join(out)

    def body(self, data: bytes, more: bool) -> bytes:
        """The bytes for one body message (empty: nothing to write). A HEAD answer or a 204/304
        drops the body; bytes past the Content-Length raise `LocalProtocolError`; a body that
        ends short of it makes `keep_alive` false (only closing tells the client it ended)."""
        if not self.started:
            raise LocalProtocolError("a body before the response started")
        if self.complete:
            raise LocalProtocolError("the response has already ended")
        head = self._head
        self._head = b""
        if self._no_body:
            out = b""
        elif self._chunked:
            last = b"" if more else _LAST_CHUNK
            out = b"%x\r\n%b\r\n%b" % (len(data), data, last) if data else last
        else:
            left = self._left
            if left >= 0:
                if len(data) > left:
                    self.keep_alive = False
                    raise LocalProtocolError("body bytes past the response's content-length")
                self._left = left - len(data)
            out = data
        if not more:
            self.complete = True
            if self._left > 0:
                self.keep_alive = False
        return head + out if head else out
