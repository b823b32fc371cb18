"""Server-sent event framing, without I/O.

A worker's SSE body arrives in pieces that need not end where its events
end. The relay forwards raw bytes, but only whole events: a worker that dies
half-way through one must not leave the client a fragment that the gateway's
error event would be glued onto (the client could then parse neither).
`EventFramer` holds back the trailing incomplete event and bounds its size;
`SseReader` gives the `data` of each complete event, for the gateway's own
reading of a chat stream.

An event ends at a blank line; lines end with CRLF, LF or CR (the SSE
specification allows all three, mixed).
"""

from __future__ import annotations

import re

# Two line ends in a row: where an event ends. (CR LF split across two pieces is at worst cut
# after its CR; the LF then starts the next piece as an empty line, which every parser skips.)
_BLANK_LINE = re.compile(rb"\n\r\n|\n\n|\n\r|\r\r")
_MARKS = ((b"\n\n", 2), (b"\n\r\n", 3), (b"\r\r", 2), (b"\n\r", 2))  # the usual first


class EventTooLarge(Exception):
    """One event is longer than the framer's limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"an SSE event of more than {limit} bytes ({size} so far)")
        self.size = size
        self.limit = limit


def last_event_end(data: bytes, start: int = 0) -> int:
    """Where the last complete event in `data[start:]` ends (an offset into `data`), or -1."""
    end = -1
    for mark, size in _MARKS:
        # once one is found, only a mark ending after it matters: the other searches stay short
        at = data.rfind(mark, start if end < 0 else max(start, end - size + 1))
        if at >= 0 and at + size > end:
            end = at + size
    return end


def event_sizes(data: bytes) -> list[int]:
    """The lengths of the complete events in `data` (which starts at an event's start)."""
    sizes, start = [], 0
    for match in _BLANK_LINE.finditer(data):
        sizes.append(match.end() - start)
        start = match.end()
    return sizes


class EventFramer:
    """Splits an SSE byte stream into runs of whole events, holding back the incomplete last one.

    `feed` returns every complete event the stream has now delivered, as one piece of bytes
    (the chunk itself when it ends at an event boundary and nothing was held back: the common
    case costs no copy). `held` is what a stream cut now would lose. An event longer than
    `limit` raises `EventTooLarge`, whether still incomplete or complete within one chunk."""

    __slots__ = ("_held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = bytearray()  # one growing buffer: a worker trickling an event stays linear

    @property
    def held(self) -> int:
        """Bytes of the incomplete event held back."""
        return len(self._held)

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        held = len(self._held)
        if not held:
            if chunk.endswith(b"\n\n"):
                complete, rest = chunk, b""
            else:
                end = last_event_end(chunk)
                if end < 0 and chunk[0] in b"\r\n":  # a line end at an event's start: an empty line, whole
                    end = 2 if chunk.startswith(b"\r\n") else 1
                complete, rest = (chunk[:end], chunk[end:]) if end >= 0 else (b"", chunk)
        else:
            end = last_event_end(chunk)
            if end < 0:  # the held bytes hold no blank line, but their last byte may start one
                end = last_event_end(bytes(self._held[-1:]) + chunk[:2]) - 1
            if end <= 0:
                self._hold(chunk)
                return b""
            complete, rest = bytes(self._held) + chunk[:end], chunk[end:]
            self._held.clear()
        if held + len(chunk) > self.limit:  # only then can a complete event be too long
            largest = max(event_sizes(complete), default=0)
            if largest > self.limit:
                raise EventTooLarge(largest, self.limit)
        if rest:
            self._hold(rest)
        return complete

    def rest(self) -> bytes:
        """The held-back bytes, for a stream that ended cleanly without closing its last event."""
        rest = bytes(self._held)
        self._held.clear()
        return rest

    def _hold(self, piece: bytes) -> None:
        self._held += piece
        if len(self._held) > self.limit:
            raise EventTooLarge(len(self._held), self.limit)


def event_data(event: bytes) -> bytes | None:
    """The `data` of one event (its `data:` lines joined by LF, one leading space dropped), or
    None when it has no data line (a comment, a lone `event:`)."""
    lines = event.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    data = [line[5:] for line in lines if line.startswith(b"data:")]
    if not data:
        return None
    return b"\n".join(d[1:] if d.startswith(b" ") else d for d in data)


class SseReader:
    """The `data` payloads of an SSE byte stream's complete events, in whatever pieces it arrives."""

    __slots__ = ("_framer",)

    def __init__(self, limit: int = 1 << 62) -> None:
        self._framer = EventFramer(limit)

    def feed(self, chunk: bytes) -> list[bytes]:
        complete = self._framer.feed(chunk)
        if not complete:
            return []
        out, start = [], 0
        for match in _BLANK_LINE.finditer(complete):
            data = event_data(complete[start : match.start()])
            if data is not None:
                out.append(data)
            start = match.end()
        return out
