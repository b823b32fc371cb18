"""The upstream client interface the data plane uses to call workers.

Two implementations sit behind it: `PoolUpstream` (a lean keep-alive pool on
trio sockets with a strict sans-IO HTTP/1.1 response parser, `http1`, the default) and
`HttpxUpstream` (selectable with `--upstream-client httpx`, so the two can be
measured side by side by `bench/overhead.py`). Timeouts of a whole request are the
caller's `trio.fail_after`; only connecting has its own limit here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from smg.workers.registry import Origin

Headers = list[tuple[bytes, bytes]]
DEFAULT_MAX_RESPONSE_SIZE = 256 * 1024 * 1024  # the largest non-streamed answer read from a worker


class UpstreamError(Exception):
    """A worker could not be reached or answered with broken HTTP."""

    code = "upstream_error"  # the error code the client gets (502)


class UpstreamConnectError(UpstreamError):
    """No connection could be made (refused, unreachable, connect timeout)."""

    code = "upstream_connect_error"


class UpstreamProtocolError(UpstreamError):
    """The connection broke or the worker spoke invalid HTTP after connecting."""


class UpstreamProtocolViolation(UpstreamProtocolError):
    """The worker's answer broke HTTP/1.1 (RFC 9112) or `--max-upstream-response-size`:
    its own code, so an operator tells a misbehaving worker from a dying one."""

    code = "upstream_protocol_error"


def response_too_large(limit: int) -> UpstreamProtocolViolation:
    return UpstreamProtocolViolation(f"worker answer over {limit} bytes (--max-upstream-response-size)")


async def read_capped(body: AsyncIterator[bytes], limit: int) -> bytes:
    """A whole body from its pieces, refused as soon as it grows past `limit` bytes (both clients)."""
    pieces: list[bytes] = []
    size = 0
    async for piece in body:
        size += len(piece)
        if size > limit:
            raise response_too_large(limit)
        pieces.append(piece)
    return b"".join(pieces)


class UpstreamResponse(Protocol):
    status: int
    headers: Headers  # names lower-case

    def aiter_body(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (de-chunked), raising `UpstreamProtocolError` if cut."""
        ...

    async def read(self) -> bytes:
        """The whole body; over the client's size cap it raises `UpstreamProtocolViolation`."""
        ...


class Upstream(Protocol):
    def request(
        self, origin: Origin, method: bytes, target: bytes, headers: Headers, body: bytes
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        """Send a request; the response is valid inside the context only."""
        ...

    async def aclose(self) -> None: ...
