"""The upstream clients against a real hypercorn simulated worker, in one trio loop."""

from __future__ import annotations

import pytest
import trio

from smg.router.upstream import UpstreamConnectError, make_upstream
from smg.router.upstream_h11 import H11Upstream
from smg.router.workers import Origin, normalize_url
from smg.testing.engine import SimConfig
from smg.testing.fleet import run_fleet

BODY = b'{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":3}'
HEADERS = [(b"content-type", b"application/json")]


@pytest.mark.parametrize("kind", ["h11", "httpx"])
async def test_request_stream_and_reuse(kind: str, nursery: trio.Nursery) -> None:
    urls = await nursery.start(run_fleet, SimConfig(ttft_ms=0, tpot_ms=0), "127.0.0.1", 0, 1)
    origin = Origin.parse(normalize_url(urls[0]))
    upstream = make_upstream(kind, connect_timeout=2, max_idle_per_origin=4)
    for _ in range(3):
        async with upstream.request(origin, b"POST", b"/v1/chat/completions", HEADERS, BODY) as response:
            assert response.status == 200
            assert b'"completion_tokens":3' in await response.read()
    stream_body = BODY[:-1] + b',"stream":true}'
    async with upstream.request(origin, b"POST", b"/v1/chat/completions", HEADERS, stream_body) as response:
        chunks = [c async for c in response.aiter_body()]
    assert b"".join(chunks).endswith(b"data: [DONE]\n\n")
    if isinstance(upstream, H11Upstream):
        assert len(upstream._idle[origin]) == 1  # one connection served all four requests
    await upstream.aclose()


async def test_h11_retries_once_on_a_connection_the_server_closed(nursery: trio.Nursery) -> None:
    urls = await nursery.start(run_fleet, SimConfig(ttft_ms=0, tpot_ms=0), "127.0.0.1", 0, 1)
    origin = Origin.parse(normalize_url(urls[0]))
    upstream = H11Upstream(connect_timeout=2)
    async with upstream.request(origin, b"POST", b"/v1/chat/completions", HEADERS, BODY) as response:
        await response.read()
    stale = upstream._idle[origin][0]
    stale.stream.socket.shutdown(trio.socket.SHUT_RDWR)  # as if the worker closed it while idle
    async with upstream.request(origin, b"POST", b"/v1/chat/completions", HEADERS, BODY) as response:
        assert response.status == 200
        await response.read()
    assert upstream._idle[origin][0] is not stale


async def test_h11_connect_error() -> None:
    upstream = H11Upstream(connect_timeout=2)
    with pytest.raises(UpstreamConnectError):
        async with upstream.request(Origin.parse("http://127.0.0.1:9"), b"GET", b"/", [], b""):
            pass
