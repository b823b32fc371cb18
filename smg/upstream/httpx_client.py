"""The upstream interface on httpx: the baseline `bench/overhead.py` compares against."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from smg.upstream.base import (
    DEFAULT_MAX_RESPONSE_SIZE,
    Headers,
    UpstreamConnectError,
    UpstreamProtocolError,
    read_capped,
    response_too_large,
)
from smg.upstream.pool import DEFAULT_IDLE_TIMEOUT
from smg.workers.registry import Origin


class HttpxResponse:
    def __init__(self, response: httpx.Response, max_size: int = DEFAULT_MAX_RESPONSE_SIZE) -> None:
        self._response = response
        self._max_size = max_size
        self.status = response.status_code
        self.headers: Headers = [(k.lower(), v) for k, v in response.headers.raw]

    async def aiter_body(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.TransportError as exc:
            raise UpstreamProtocolError(f"worker connection broke mid-response: {exc}") from None

    async def read(self) -> bytes:
        """The whole body, refused (`UpstreamProtocolViolation`) past `max_size`, as the pool does."""
        limit = self._max_size
        length = self._response.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise response_too_large(limit)
        return await read_capped(self.aiter_body(), limit)


class HttpxUpstream:
    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        max_idle_per_origin: int = 256,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`idle_timeout` 0 keeps idle connections forever, as the pool does: httpx's
        `keepalive_expiry=None` (its 0 would expire every connection as soon as it went idle)."""
        self.max_response_size = max_response_size
        self.idle_timeout = idle_timeout
        limits = httpx.Limits(
            max_connections=None,
            max_keepalive_connections=max_idle_per_origin,
            keepalive_expiry=idle_timeout if idle_timeout > 0 else None,
        )
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=connect_timeout), limits=limits, verify=ssl_context or True
        )

    @asynccontextmanager
    async def request(
        self, origin: Origin, method: bytes, target: bytes, headers: Headers, body: bytes
    ) -> AsyncIterator[HttpxResponse]:
        url = f"{origin.scheme}://{origin.host_header.decode()}{origin.base_path}{target.decode()}"
        request = self._client.build_request(method.decode(), url, headers=headers, content=body)
        try:
            response = await self._client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise UpstreamConnectError(f"cannot connect to {origin.host}:{origin.port}: {exc}") from None
        except httpx.TransportError as exc:
            raise UpstreamProtocolError(f"worker failed before responding: {exc}") from None
        try:
            yield HttpxResponse(response, self.max_response_size)
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()
