"""The upstream client interface the data plane uses to call workers.

Two implementations sit behind it: `PoolUpstream` (a lean keep-alive pool on
trio sockets with its own HTTP/1.1 response parser, the default) and
`HttpxUpstream` (selectable with `--upstream-client httpx`, so the two can be
measured side by side by `bench/overhead.py`). Timeouts of a whole request are the
caller's `trio.fail_after`; only connecting has its own limit here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from smg.router.workers import Origin

Headers = list[tuple[bytes, bytes]]


class UpstreamError(Exception):
    """A worker could not be reached or answered with broken HTTP."""


class UpstreamConnectError(UpstreamError):
    """No connection could be made (refused, unreachable, connect timeout)."""


class UpstreamProtocolError(UpstreamError):
    """The connection broke or the worker spoke invalid HTTP after connecting."""


class UpstreamResponse(Protocol):
    status: int
    headers: Headers  # names lower-case

    def aiter_body(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (de-chunked), raising `UpstreamProtocolError` if cut."""
        ...

    async def read(self) -> bytes: ...


class Upstream(Protocol):
    def request(
        self, origin: Origin, method: bytes, target: bytes, headers: Headers, body: bytes
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        """Send a request; the response is valid inside the context only."""
        ...

    async def aclose(self) -> None: ...


def make_upstream(kind: str, *, connect_timeout: float, max_idle_per_origin: int) -> Upstream:
    if kind == "pool":
        from smg.router.upstream_pool import PoolUpstream

        return PoolUpstream(connect_timeout=connect_timeout, max_idle_per_origin=max_idle_per_origin)
    if kind == "httpx":
        from smg.router.upstream_httpx import HttpxUpstream

        return HttpxUpstream(connect_timeout=connect_timeout, max_idle_per_origin=max_idle_per_origin)
    raise ValueError(f"unknown upstream client '{kind}'")
