"""A lean closed-loop HTTP/1.1 load generator on trio sockets.

Each virtual user keeps one keep-alive connection and sends the same
pre-encoded request again as soon as the previous response ends. Responses
are parsed just enough to find their end (content-length or chunked), so
the generator costs far less CPU per request than the servers it measures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import trio


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def build_request(host: str, port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


class _Reader:
    """Reads one HTTP/1.1 response at a time from a stream, keeping leftovers."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self) -> None:
        data = await self.stream.receive_some(262144)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    async def response(self) -> int:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            await self._fill()
        head = bytes(self.buf[:end]).lower()
        del self.buf[: end + 4]
        status = int(head[9:12])
        if b"transfer-encoding: chunked" in head:
            await self._chunked()
        else:
            length = 0
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
            while len(self.buf) < length:
                await self._fill()
            del self.buf[:length]
        return status

    async def _chunked(self) -> None:
        while True:
            while (line_end := self.buf.find(b"\r\n")) < 0:
                await self._fill()
            size = int(bytes(self.buf[:line_end]).split(b";")[0], 16)
            while len(self.buf) < line_end + 2 + size + 2:
                await self._fill()
            del self.buf[: line_end + 2 + size + 2]
            if size == 0:
                return


async def run_load(host: str, port: int, request: bytes, concurrency: int, count: int) -> Result:
    """Send `count` requests over `concurrency` connections; returns latencies."""
    result = Result()
    remaining = count

    async def user() -> None:
        nonlocal remaining
        stream = await trio.open_tcp_stream(host, port)
        reader = _Reader(stream)
        try:
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                try:
                    await stream.send_all(request)
                    status = await reader.response()
                except (OSError, ConnectionError, trio.BrokenResourceError, ValueError):
                    result.errors += 1
                    await stream.aclose()
                    stream = await trio.open_tcp_stream(host, port)
                    reader = _Reader(stream)
                    continue
                result.latencies.append(time.perf_counter() - started)
                result.statuses[status] = result.statuses.get(status, 0) + 1
        finally:
            await stream.aclose()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(user)
    result.elapsed = time.perf_counter() - started
    return result
