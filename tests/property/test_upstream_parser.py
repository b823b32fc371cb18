"""The upstream response parser (`smg.upstream.http1`) against h11, the trusted implementation.

Valid responses (any framing, split anywhere) must give what h11 gives; mutated ones that
h11 refuses must be refused too, except the one documented difference (chunk sizes over 20
digits of leading zeros). Where h11 accepts and we refuse, the input must show one of the
strictness rules the module's docstring lists, so a refusal nobody meant is a failure too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smg.upstream.http1 import (
    MAX_FRAMING,
    MAX_HEAD,
    Data,
    EndOfMessage,
    IncompleteResponse,
    ProtocolViolation,
    Response,
    ResponseParser,
)

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
FRAMING_HEADERS = {b"content-length", b"transfer-encoding", b"connection"}


@dataclass
class Outcome:
    """A parser's reading of a whole input: the response, or why it was refused."""

    status: int = 0
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    error: str | None = None


def _compared(headers: list[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    # h11 folds repeated Content-Length and lower-cases Transfer-Encoding: framing is compared through the body
    return tuple((n, v) for n, v in headers if n not in FRAMING_HEADERS)


def ours(pieces: list[bytes]) -> Outcome:
    parser = ResponseParser()
    out = Outcome()
    body = []
    try:
        for piece in [*pieces, None]:
            events = parser.feed(piece) if piece is not None else parser.feed_eof()
            for event in events:
                if isinstance(event, Response):
                    out.status, out.headers = event.status, _compared(event.headers)
                elif isinstance(event, Data):
                    body.append(event.data)
            if parser.complete:
                break
    except (ProtocolViolation, IncompleteResponse) as exc:
        return Outcome(error=f"{type(exc).__name__}: {exc}")
    if not parser.complete:
        return Outcome(error="incomplete")
    out.body = b"".join(body)
    return out


def reference(pieces: list[bytes]) -> Outcome:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    conn.send(h11.Request(method="POST", target="/", headers=[("host", "w"), ("content-length", "0")]))
    conn.send(h11.EndOfMessage())
    out = Outcome()
    body = []
    try:
        for piece in [*pieces, b""]:
            conn.receive_data(piece)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    break
                if isinstance(event, h11.Response):
                    out.status, out.headers = event.status_code, _compared(list(event.headers))
                elif isinstance(event, h11.Data):
                    body.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    out.body = b"".join(body)
                    return out
    except h11.RemoteProtocolError as exc:
        return Outcome(error=f"h11: {exc}")
    return Outcome(error="h11: incomplete")


# -- generated responses ---------------------------------------------------------------

names = st.text(TOKEN_CHARS, min_size=1, max_size=12).map(str.encode).filter(lambda n: n.lower() not in FRAMING_HEADERS)
_vchar = st.sampled_from([chr(c) for c in [*range(0x21, 0x7F), 0x80, 0xE9, 0xFF]])
values = st.lists(st.one_of(_vchar, _vchar, _vchar, st.sampled_from([" ", "\t"])), max_size=16).map(
    lambda cs: "".join(cs).strip(" \t").encode("latin-1")
)
reasons = st.sampled_from([b"", b"OK", b"Not Found", b"Service Unavailable", b"caf\xe9 ok"])
any_bodies = st.binary(max_size=300)
clean_bodies = st.text('abcdefghijklmnopqrstuvwxyz0123456789 {}":,', max_size=200).map(str.encode)


@st.composite
def responses(draw: st.DrawFn, bodies: st.SearchStrategy[bytes] = any_bodies) -> tuple[bytes, bytes]:
    """A valid response's bytes, and its body."""
    status = draw(st.one_of(st.integers(200, 599), st.sampled_from([200, 204, 304, 404, 503])))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
    reason = draw(reasons)
    status_line = b"HTTP/%s %d" % (version, status) + (b" " + reason if reason or draw(st.booleans()) else b"")
    headers = [
        n + b":" + draw(st.sampled_from([b"", b" ", b"  ", b"\t"])) + v
        for n, v in draw(st.lists(st.tuples(names, values), max_size=6))
    ]
    body = draw(bodies)
    framings = ["length", "close"] + (["chunked"] if version == b"1.1" else [])
    framing = draw(st.sampled_from(framings))
    if status in (204, 304):
        body = b""
    if framing == "length":
        headers.insert(draw(st.integers(0, len(headers))), b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "chunked":
        headers.insert(
            draw(st.integers(0, len(headers))),
            draw(st.sampled_from([b"Transfer-Encoding: chunked", b"transfer-encoding: Chunked"])),
        )
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=5)))
        parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if b > a]
        payload = b""
        for part in parts:
            size = draw(st.sampled_from([b"%x", b"%X", b"0%x"])) % len(part)
            ext = draw(st.sampled_from([b"", b"", b";a", b";a=b", b';name="quoted value"']))
            payload += size + ext + b"\r\n" + part + b"\r\n"
        trailers = draw(st.sampled_from([b"", b"", b"x-trailer: 1\r\n"]))
        payload += b"0\r\n" + trailers + b"\r\n"
        if status in (204, 304):
            payload = b""
    else:
        payload = body
    interim = draw(
        st.sampled_from([b"", b"", b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"])
    )
    return interim + status_line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + payload, body


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=6))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if b > a]


MUTATIONS = [
    b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b";", b",", b"0", b"9", b"a", b"f", b"x", b"-", b"+", b"\x00", b"\x01",
    b"\x7f", b"\xff", b"HTTP/1.1 ", b"Content-Length: 5\r\n", b"Content-Length: 3, 3\r\n", b"Transfer-Encoding: chunked\r\n",
    b"\r\n\r\n", b"0\r\n\r\n", b"5\r\nhello\r\n", b"HTTP/1.1 100 Continue\r\n\r\n",
]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data, _ = draw(responses(clean_bodies))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        if kind == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 4)) :]
        elif kind == "insert":
            data = data[:at] + draw(st.sampled_from(MUTATIONS)) + data[at:]
        else:
            data = data[:at] + draw(st.sampled_from(MUTATIONS)) + data[at + 1 :]
    return data


# -- what h11 accepts and we refuse on purpose ------------------------------------------------


def strictness(data: bytes) -> str | None:
    """Which documented rule refuses `data` (bodies in mutated inputs have no CR, LF, CTL or ';')."""
    heads = data.split(b"\r\n\r\n")
    while (
        len(heads) > 1
        and re.match(rb"HTTP/1\.1 1\d\d", heads[0])
        and not re.search(rb"(?i)\r\n(content-length|transfer-encoding):", heads[0])
    ):
        heads.pop(0)  # an interim response, skipped by both
    head = heads[0]
    lines = head.split(b"\r\n")
    fields = [line.lower() for line in lines[1:]]
    rules = {
        "bare LF or CR": re.search(rb"(?<!\r)\n|\r(?!\n)", data),
        "control character": re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", data),
        "obs-fold": re.search(rb"\r\n[ \t]", data),
        "repeated or listed content-length": sum(f.startswith(b"content-length:") for f in fields) > 1
        or any(f.startswith(b"content-length:") and b"," in f for f in fields),
        "transfer-encoding on HTTP/1.0": any(f.startswith(b"transfer-encoding:") for f in fields)
        and not lines[0].startswith(b"HTTP/1.1"),
        "transfer-encoding with content-length": any(f.startswith(b"transfer-encoding:") for f in fields)
        and any(f.startswith(b"content-length:") for f in fields),
        "HTTP version other than 1.0 and 1.1": re.search(rb"HTTP/(?!1\.[01] )\d\.\d", data),
        "status 600-999": re.search(rb"HTTP/\d\.\d [6-9]\d\d", data),
        "blanks after a chunk size, or a chunk extension that is not token[=token|quoted]": re.search(
            rb"\n[0-9a-fA-F]+[ \t;]", data
        ),
        "chunk size over 64 bits": re.search(rb"\n0*[1-9a-fA-F][0-9a-fA-F]{16}", data),
    }
    return next((rule for rule, hit in rules.items() if hit), None)


def h11_only_refusal(data: bytes) -> bool:
    """The documented leniency: h11 caps a chunk size at 20 hex digits; RFC 9112 (and we) do not."""
    return re.search(rb"\n[0-9a-fA-F]{21,}", data) is not None


# -- the properties ------------------------------------------------------------------------


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_valid_responses_read_as_h11_reads_them(data: st.DataObject) -> None:
    raw, body = data.draw(responses())
    pieces = data.draw(split(raw))
    expected, got = reference(pieces), ours(pieces)
    assert expected.error is None, expected
    assert got == expected, raw
    assert got.body == body


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_responses_refused_when_h11_refuses_them(data: st.DataObject) -> None:
    raw = data.draw(mutated())
    pieces = data.draw(split(raw))
    expected, got = reference(pieces), ours(pieces)
    if expected.error is not None:
        assert got.error is not None or h11_only_refusal(raw), (raw, expected.error, got)
    elif got.error is not None:
        assert strictness(raw) is not None, (raw, got.error)
    else:
        assert got == expected, raw


# -- each defect of the old parser, and the bounds --------------------------------------------

DEFECTS = {
    "transfer-encoding and content-length": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 10\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "negative content-length": b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\nabc",
    "differing content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    "differing content-length list": b"HTTP/1.1 200 OK\r\nContent-Length: 3, 5\r\n\r\nabcde",
    "chunk size 0x5": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "chunk size -1": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
    "folded header": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "folded first header": b"HTTP/1.1 200 OK\r\n X-A: a\r\nContent-Length: 0\r\n\r\n",
    "status -99": b"HTTP/1.1 -99 OK\r\nContent-Length: 0\r\n\r\n",
    "status 099": b"HTTP/1.1 099 OK\r\nContent-Length: 0\r\n\r\n",
    "status 2 digits": b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
    "bare LF": b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    "invalid header name": b"HTTP/1.1 200 OK\r\nX A: y\r\nContent-Length: 0\r\n\r\n",
    "space before colon": b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
    "NUL in a value": b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "NUL in the reason": b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n",
    "gzip transfer-encoding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "chunked on HTTP/1.0": b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "HTTP/2.0 status line": b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    "empty line first": b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "empty line after 100": b"HTTP/1.1 100 Continue\r\n\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "101 unasked": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    "chunk data without CRLF": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    "chunk size overflow": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 17 + b"\r\n",
}


@pytest.mark.parametrize("raw", DEFECTS.values(), ids=DEFECTS.keys())
def test_defects_are_violations_whole_or_byte_by_byte(raw: bytes) -> None:
    for pieces in ([raw], [raw[i : i + 1] for i in range(len(raw))]):
        parser = ResponseParser()
        with pytest.raises(ProtocolViolation):
            for piece in pieces:
                parser.feed(piece)


def test_identical_repeated_content_length_is_refused_too() -> None:
    """RFC 9110 §8.6 lets a recipient accept it or not; llhttp does not, and neither do we."""
    for raw in (b"Content-Length: 3\r\nContent-Length: 3", b"Content-Length: 3, 3"):
        with pytest.raises(ProtocolViolation):
            ResponseParser().feed(b"HTTP/1.1 200 OK\r\n" + raw + b"\r\n\r\nabc")


def test_the_documented_difference_from_h11_leading_zeros_in_a_chunk_size() -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"0" * 24 + b"5\r\nhello\r\n0\r\n\r\n"
    assert reference([raw]).error is not None  # h11: at most 20 hex digits
    assert ours([raw]).body == b"hello" and h11_only_refusal(raw)  # RFC 9112: 1*HEXDIG; the value fits 64 bits


def test_interim_responses_are_skipped_and_bodies_coalesced() -> None:
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in [b"data: 1\n\n", b"data: 2\n\n"])
    parser = ResponseParser()
    events = parser.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunks)
    assert [type(e) for e in events] == [Response, Data]
    assert events[0].status == 200 and events[0].content_length is None
    assert events[1] == Data(b"data: 1\n\ndata: 2\n\n")  # two chunks, one piece
    assert parser.feed(b"0\r\nx-trailer: 1\r\n\r\n") == [EndOfMessage()]
    assert parser.reusable
    assert parser.feed(b"late") == [] and not parser.reusable  # bytes after the end: not reused
    parser = ResponseParser()
    events = parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert events[1:] == [Data(b"ok"), EndOfMessage()] and not parser.reusable  # a second answer nobody asked for


def test_keep_alive_close_delimited_head_and_eof() -> None:
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok")[-1] == EndOfMessage()
    assert not parser.reusable
    parser = ResponseParser()
    (head,) = parser.feed(b"HTTP/1.1 200 OK\r\n\r\n")
    assert head.keep_alive is False and parser.feed(b"until close") == [Data(b"until close")]
    assert parser.feed_eof() == [EndOfMessage()] and not parser.reusable
    parser = ResponseParser(b"HEAD")
    events = parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
    assert events[-1] == EndOfMessage() and parser.reusable
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
    with pytest.raises(IncompleteResponse):
        parser.feed_eof()
    with pytest.raises(IncompleteResponse):
        ResponseParser().feed_eof()


def test_head_and_chunk_framing_are_bounded() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(ProtocolViolation, match="head"):
        for _ in range(MAX_HEAD // 1000 + 1):
            parser.feed(b"x-pad: " + b"p" * 991 + b"\r\n")
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n5;ext=")
    with pytest.raises(ProtocolViolation, match="chunk-size line"):
        for _ in range(MAX_FRAMING // 1000 + 1):
            parser.feed(b"e" * 1000)  # an endless chunk extension: refused, not waited for
