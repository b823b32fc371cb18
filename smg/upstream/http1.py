"""Strict HTTP/1.1 response parsing for the upstream pool, sans-IO: bytes in, events out.

The grammar is llhttp's (Node's parser, through `httptools`) in its strict default mode:
a three-digit status, header names as tokens, no control characters in values, CRLF only
(a bare LF or CR is refused), no obs-fold, one decimal Content-Length (a repeated one, even
with the same value, is refused, as RFC 9110 §8.6 allows), no Content-Length next to
Transfer-Encoding, chunk sizes as 1*HEXDIG that fit 64 bits, chunk extensions and trailers
checked as tokens. llhttp buffers nothing and is C, so it is also cheap: about 4 µs for a
tiny answer, 0.5 µs per read of a stream, and the gateway's CPU per request in
`bench/overhead.py` did not move measurably against the hand-written parser it replaced.

What llhttp leaves to its caller, this module adds, so that it refuses everything h11 (the
trusted reference in tests/property/test_upstream_parser.py) refuses:

- the status line starts the message: `HTTP/1.1` or `HTTP/1.0` (llhttp skips leading empty
  lines and also reads RTSP/ICE/HTTP/2.0 status lines), the status is 100-599 (RFC 9110
  §15), the reason phrase has no control characters other than HTAB;
- 1xx answers are skipped (the next response is parsed by a fresh llhttp, which is what
  lets the check above apply to it too); 101 is refused, the pool never asks to upgrade;
- Transfer-Encoding is a single header whose value is `chunked` (no list, as h11), and
  only on HTTP/1.1 (RFC 9112 §6.1: the framing of an HTTP/1.0 message with it is faulty);
  interim responses' fields are checked too;
- bounds: the head (status line and headers) at most `MAX_HEAD` bytes; bytes that carry no
  body (chunk-size lines with their extensions, trailers) at most `MAX_FRAMING` bytes across
  reads, so a worker cannot keep a body open with an endless chunk extension.

Transfer-Encoding together with Content-Length is refused rather than read as chunked:
RFC 9112 §6.1 says such a message "ought to be handled as an error" (it is how requests
are smuggled and responses split), a worker we registered has no reason to send it, and
refusing keeps one rule where "chunked wins" would need llhttp's lenient mode, which
loosens other checks too.

Known difference from h11, on purpose: h11 caps a chunk size at 20 hex digits; here a
size may have more leading zeros (RFC 9112 allows 1*HEXDIG; the value still has to fit 64
bits and the line `MAX_FRAMING`). Everything else h11 accepts and this parser refuses is
strictness: bare LF, obs-fold, control characters in values or reason, repeated or listed
Content-Length, Transfer-Encoding on HTTP/1.0, HTTP versions other than 1.0/1.1, status 600-999, spaces after a chunk size, chunk
extensions that are not tokens, data after the end of a response (not an error for the
response, but the connection is not reused).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httptools

from smg.http.h1 import Data, EndOfMessage

Headers = list[tuple[bytes, bytes]]

MAX_HEAD = 64 * 1024
MAX_FRAMING = 16 * 1024  # as h11's default limit on an incomplete event
_NO_BODY_STATUS = frozenset({204, 304})
_BAD_REASON = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class ProtocolViolation(Exception):
    """The worker's answer breaks HTTP/1.1 or a size bound: nothing of it may be forwarded."""


class IncompleteResponse(Exception):
    """The connection ended before the response did (a broken worker, not bad syntax)."""


@dataclass(slots=True)
class Response:
    """The head of the final response. Names are lower-case, values without surrounding blanks."""

    status: int
    headers: Headers
    content_length: int | None  # None: chunked, or until the connection closes
    keep_alive: bool  # as the head says; see ResponseParser.reusable for the verdict


Event = Response | Data | EndOfMessage
_END = EndOfMessage()


class _Stop(Exception):
    """Raised inside llhttp's callbacks to stop it after a head: an interim one, or a HEAD answer."""


class _Callbacks:
    """llhttp's callbacks and what they gathered. Holds no reference to the llhttp parser, so
    the pair is freed by reference counting, not by the cycle collector."""

    __slots__ = ("body", "buf", "chunked", "complete", "extra", "head", "head_end", "head_only", "headers")

    def __init__(self, head_only: bool) -> None:
        self.head_only = head_only
        self.headers: Headers = []
        self.body: list[bytes] = []
        self.buf = b""  # the bytes of the message so far, while its head is incomplete
        self.head: Response | None = None
        self.head_end = 0
        self.chunked = False
        self.complete = False
        self.extra = False  # bytes came after the end of the response

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head is None:  # later ones are trailer fields, which nothing here uses
            self.headers.append((name.lower(), value.rstrip(b" \t")))

    def on_body(self, body: bytes) -> None:
        if not self.complete:  # else the body of a message after the end, which is not ours
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    def on_headers_complete(self) -> None:
        if self.complete:  # the head of a message after the end: only `extra` matters
            return
        buf = self.buf
        end = buf.find(b"\r\n\r\n") + 4
        if end > MAX_HEAD:
            raise ProtocolViolation(f"response head over {MAX_HEAD} bytes")
        self.head_end = end
        if not (buf.startswith(b"HTTP/1.1 ") or buf.startswith(b"HTTP/1.0 ")):
            raise ProtocolViolation(f"status line must start the response with HTTP/1.1 or HTTP/1.0: {buf[:40]!r}")
        status = int(buf[9:12])  # llhttp checked: three digits, then SP or CRLF
        if _BAD_REASON.search(buf, 12, buf.find(b"\r\n")):
            raise ProtocolViolation("control character in the reason phrase")
        if status < 100 or status > 599 or status == 101:
            raise ProtocolViolation(
                f"status {status}" + (" without an upgrade request" if status == 101 else " is not in 100-599")
            )
        http11 = buf[7] == 0x31
        keep_alive = http11
        length: int | None = None
        chunked = False
        for name, value in self.headers:
            if name == b"content-length":
                length = int(value)  # llhttp checked: digits only, once
            elif name == b"transfer-encoding":
                if chunked or value.lower() != b"chunked":  # as h11: one header, that one coding, no list
                    raise ProtocolViolation(f"unsupported transfer-encoding: {value[:40]!r}")
                chunked = True
            elif name == b"connection" and b"close" in [t.strip() for t in value.lower().split(b",")]:
                keep_alive = False
        if chunked:
            if length is not None:  # llhttp refuses it too; said here to keep the rule in one place
                raise ProtocolViolation("both transfer-encoding and content-length")
            if not http11:
                raise ProtocolViolation("transfer-encoding in an HTTP/1.0 response")
        if status < 200:
            raise _Stop  # interim (its fields checked as h11 does): the caller parses what follows afresh
        if self.head_only or status in _NO_BODY_STATUS:
            length, chunked = 0, False
        elif length is None and not chunked:
            keep_alive = False  # the body ends when the worker closes the connection
        self.chunked = chunked
        self.head = Response(status, self.headers, length, keep_alive)
        if self.head_only:
            raise _Stop


class ResponseParser:
    """One response, fed the bytes of its connection in order; `feed_eof` when it closes.

    `feed` returns the events the bytes completed: the `Response` head (once), at most one
    `Data` per call (everything that arrived together, so a burst of SSE events stays one
    piece), and `EndOfMessage`. Raises `ProtocolViolation` or `IncompleteResponse`; after
    either, the connection is unusable."""

    __slots__ = ("_cb", "_framing", "_head_only", "_llhttp", "_pending", "complete")

    def __init__(self, method: bytes = b"POST") -> None:
        self._head_only = method == b"HEAD"
        self._pending = b""  # head bytes of earlier reads
        self._framing = 0  # bytes since the last one that carried body
        self.complete = False
        self._new_message()

    def _new_message(self) -> None:
        self._cb = _Callbacks(self._head_only)
        self._llhttp = httptools.HttpResponseParser(self._cb)

    @property
    def reusable(self) -> bool:
        """Whether the connection may carry another request: the response ended, its head
        allowed keep-alive, and nothing came after it."""
        cb = self._cb
        return self.complete and cb.head is not None and cb.head.keep_alive and not cb.extra

    def feed(self, data: bytes) -> list[Event]:
        cb = self._cb
        if self.complete:
            cb.extra = cb.extra or bool(data)
            return []
        if not data:
            return []
        had_head = cb.head is not None
        while True:  # more than once only past interim (1xx) responses
            if cb.head is None:
                cb.buf = self._pending + data if self._pending else data
            try:
                self._llhttp.feed_data(data)
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                if isinstance(cause, ProtocolViolation):
                    raise cause from None
                if not isinstance(cause, _Stop):
                    raise
                if cb.head is None:  # an interim response ended at head_end: parse the rest afresh
                    data = cb.buf[cb.head_end :]
                    self._pending = b""
                    self._new_message()
                    cb = self._cb
                    if data:
                        continue
                    return []
                cb.complete = True  # the answer to HEAD ends with its head
                cb.extra = cb.head_end < len(cb.buf)
            except httptools.HttpParserUpgrade:
                raise ProtocolViolation("upgrade without an upgrade request") from None
            except httptools.HttpParserError as exc:
                if not cb.complete:
                    raise ProtocolViolation(f"invalid HTTP/1.1 response: {exc}") from None
                cb.extra = True  # garbage after the end: the response stands, the connection goes
            break
        events: list[Event] = []
        head = cb.head
        if head is None:
            self._pending = cb.buf
            if len(cb.buf) > MAX_HEAD:
                raise ProtocolViolation(f"response head over {MAX_HEAD} bytes")
            return events
        if not had_head:
            events.append(head)
            self._pending = cb.buf = b""
        if cb.body:
            body = cb.body[0] if len(cb.body) == 1 else b"".join(cb.body)
            cb.body.clear()
            events.append(Data(body))
            self._framing = 0
        elif had_head:
            self._framing += len(data)
            if self._framing > MAX_FRAMING and not cb.complete:
                raise ProtocolViolation(f"chunk-size line or trailers over {MAX_FRAMING} bytes")
        if cb.complete:
            self.complete = True
            events.append(_END)
        return events

    def feed_eof(self) -> list[Event]:
        """The connection closed: the end of a body that runs until close, else an error."""
        if self.complete:
            return []
        cb = self._cb
        head = cb.head
        if head is None:
            raise IncompleteResponse("connection closed before a complete response head")
        if head.content_length is None and not cb.chunked:
            self.complete = True
            return [_END]
        raise IncompleteResponse("connection closed before the end of the response body")
