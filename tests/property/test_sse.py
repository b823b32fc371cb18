"""SSE framing without I/O: whole events out, the incomplete last one held back, one event's size capped."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smg.http.sse import EventFramer, EventTooLarge, SseReader, event_data, last_event_end

CHUNK = b'data: {"choices":[{"delta":{"content":"hel"}}]}\n\n'


def test_whole_events_pass_at_once_and_a_partial_one_waits() -> None:
    framer = EventFramer(1 << 20)
    two = CHUNK + CHUNK
    assert framer.feed(two) is two  # the common case: the chunk itself, no copy
    assert framer.feed(CHUNK + b'data: {"cho') == CHUNK
    assert framer.held == len(b'data: {"cho')
    assert framer.feed(b'ices":[]}\n') == b""  # one line end is not the event's end
    assert framer.feed(b"\ndata: [DO") == b'data: {"choices":[]}\n\n'
    assert framer.rest() == b"data: [DO" and framer.held == 0


@pytest.mark.parametrize(
    "stream",
    [
        b"data: a\r\n\r\ndata: b\r\n\r\n",
        b"data: a\r\rdata: b\r\r",
        b"data: a\n\r\ndata: b\r\n\n",
        b"event: x\ndata: a\n\ndata: b\n\n",
    ],
)
def test_every_line_end_the_specification_allows(stream: bytes) -> None:
    for cut in range(1, len(stream)):
        framer = EventFramer(1 << 20)
        out = framer.feed(stream[:cut]) + framer.feed(stream[cut:])
        assert out == stream and framer.held == 0  # a CR LF cut in two is whole once its LF arrives
        assert last_event_end(out) in (-1, len(out))  # only whole events were let through


def test_an_event_over_the_limit_raises_complete_or_not() -> None:
    with pytest.raises(EventTooLarge):
        EventFramer(10).feed(b"data: 0123456789")  # incomplete, already too long
    framer = EventFramer(10)
    assert framer.feed(b"data: 1\n\n") == b"data: 1\n\n"
    with pytest.raises(EventTooLarge):
        framer.feed(b"data: 12\n\ndata: 0123456789\n\n")  # complete, in one chunk with a small one
    framer = EventFramer(12)
    framer.feed(b"data: 12")
    with pytest.raises(EventTooLarge):
        framer.feed(b"3456\n\n")  # completed by its second piece


def test_the_reader_joins_data_lines_and_skips_comments() -> None:
    reader = SseReader()
    assert reader.feed(b": keep-alive\n\nevent: e\ndata: one\ndata:two\n\ndata: x") == [b"one\ntwo"]
    assert event_data(b"event: only") is None


events = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")), min_size=1, max_size=8)
ends = st.sampled_from([b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r\n"])


@given(events, ends, st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_any_split_relays_the_same_bytes_in_whole_events(datas: list[bytes], end: bytes, cuts: list[int]) -> None:
    stream = b"".join(b"data: " + d + end for d in datas)
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    framer = EventFramer(1 << 20)
    sent = b""
    for a, b in pairwise(bounds):
        piece = framer.feed(stream[a:b])
        assert last_event_end(piece) in (-1, len(piece))
        sent += piece
        assert stream.startswith(sent) and framer.held == b - len(sent)
    assert sent == stream and framer.held == 0
    reader = SseReader()
    assert [data for a, b in pairwise(bounds) for data in reader.feed(stream[a:b])] == datas
