"""Connections to workers: one interface (`Upstream`), two HTTP/1.1 clients behind it.

`pool` is the gateway's own keep-alive pool over the sans-IO parser in `http1`;
`httpx_client` is httpx, kept as a fallback and a yardstick. gRPC workers and
hosted providers are further siblings here.
"""

from __future__ import annotations

import ssl

from smg.upstream.base import (
    DEFAULT_MAX_RESPONSE_SIZE,
    Upstream,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamProtocolViolation,
    UpstreamResponse,
)
from smg.upstream.httpx_client import HttpxUpstream
from smg.upstream.pool import DEFAULT_IDLE_TIMEOUT, PoolUpstream

UPSTREAM_CLIENTS = ("pool", "httpx")


def make_upstream(
    kind: str,
    *,
    connect_timeout: float,
    max_idle_per_origin: int,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE,
    ssl_context: ssl.SSLContext | None = None,
) -> Upstream:
    """`idle_timeout`: seconds a pooled connection may stay idle (`--upstream-pool-idle-timeout-secs`,
    0 keeps it); `max_response_size`: the largest body `read` returns (streams read with
    `aiter_body` are not capped here); `ssl_context`: for https:// workers (None: the system's CAs)."""
    if kind == "pool":
        return PoolUpstream(
            connect_timeout=connect_timeout,
            max_idle_per_origin=max_idle_per_origin,
            idle_timeout=idle_timeout,
            max_response_size=max_response_size,
            ssl_context=ssl_context,
        )
    if kind == "httpx":
        return HttpxUpstream(
            connect_timeout=connect_timeout,
            max_idle_per_origin=max_idle_per_origin,
            idle_timeout=idle_timeout,
            max_response_size=max_response_size,
            ssl_context=ssl_context,
        )
    raise ValueError(f"unknown upstream client '{kind}'")


__all__ = [
    "DEFAULT_MAX_RESPONSE_SIZE",
    "UPSTREAM_CLIENTS",
    "Upstream",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamProtocolViolation",
    "UpstreamResponse",
    "make_upstream",
]
