"""The upstream clients against a real hypercorn simulated worker, in one trio loop."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from smg.router.upstream import UpstreamConnectError, UpstreamProtocolError, make_upstream
from smg.router.upstream_pool import PoolUpstream
from smg.router.workers import Origin, normalize_url
from smg.testing.engine import SimConfig
from smg.testing.fleet import run_fleet

BODY = b'{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":3}'
HEADERS = [(b"content-type", b"application/json")]


@pytest.mark.parametrize("kind", ["pool", "httpx"])
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
    if isinstance(upstream, PoolUpstream):
        assert len(upstream._idle[origin]) == 1  # one connection served all four requests
    await upstream.aclose()


async def test_pool_retries_once_on_a_connection_the_server_closed(nursery: trio.Nursery) -> None:
    urls = await nursery.start(run_fleet, SimConfig(ttft_ms=0, tpot_ms=0), "127.0.0.1", 0, 1)
    origin = Origin.parse(normalize_url(urls[0]))
    upstream = PoolUpstream(connect_timeout=2)
    async with upstream.request(origin, b"POST", b"/v1/chat/completions", HEADERS, BODY) as response:
        await response.read()
    stale = upstream._idle[origin][0]
    stale.stream.socket.shutdown(trio.socket.SHUT_RDWR)  # as if the worker closed it while idle
    async with upstream.request(origin, b"POST", b"/v1/chat/completions", HEADERS, BODY) as response:
        assert response.status == 200
        await response.read()
    assert upstream._idle[origin][0] is not stale


async def test_pool_connect_error() -> None:
    upstream = PoolUpstream(connect_timeout=2)
    with pytest.raises(UpstreamConnectError):
        async with upstream.request(Origin.parse("http://127.0.0.1:9"), b"GET", b"/", [], b""):
            pass


async def _canned_server(nursery: trio.Nursery, replies: list[list[bytes]]) -> tuple[Origin, list[bytes]]:
    """A raw TCP server: per connection, reads one request and sends the next reply's pieces
    (with a pause between pieces, so the client sees them in separate reads)."""
    received: list[bytes] = []
    queue = list(replies)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            while queue:
                data = await stream.receive_some(65536)
                if not data:
                    return
                received.append(data)
                for piece in queue.pop(0):
                    if piece == b"<close>":
                        return
                    await stream.send_all(piece)
                    await trio.sleep(0.01)

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return Origin.parse(f"http://127.0.0.1:{port}"), received


async def _fetch(upstream: PoolUpstream, origin: Origin) -> tuple[int, list[bytes]]:
    async with upstream.request(origin, b"POST", b"/x", HEADERS, b"{}") as response:
        return response.status, [piece async for piece in response.aiter_body()]


async def test_pool_parses_chunked_bodies_split_across_reads(nursery: trio.Nursery) -> None:
    origin, received = await _canned_server(
        nursery,
        [
            [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhel", b"lo\r\n6\r\n world\r\n",
             b"0\r\nx-trailer: 1\r\n\r\n"],
            [b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nab", b"c"],
        ],
    )  # fmt: skip
    upstream = PoolUpstream()
    status, pieces = await _fetch(upstream, origin)
    assert status == 200 and b"".join(pieces) == b"hello world"
    assert len(upstream._idle[origin]) == 1  # complete and keep-alive: pooled
    status, pieces = await _fetch(upstream, origin)
    assert b"".join(pieces) == b"abc"
    assert received[0].startswith(b"POST /x HTTP/1.1\r\nhost: 127.0.0.1:") and received[0].endswith(b"\r\n\r\n{}")


async def test_pool_bursts_of_chunks_come_out_as_one_piece(nursery: trio.Nursery) -> None:
    events = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"])
    origin, _ = await _canned_server(
        nursery, [[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + events + b"0\r\n\r\n"]]
    )
    status, pieces = await _fetch(PoolUpstream(), origin)
    assert status == 200
    assert pieces == [b"data: 1\n\ndata: 2\n\ndata: 3\n\n"]


async def test_pool_close_delimited_and_connection_close_are_not_reused(nursery: trio.Nursery) -> None:
    origin, _ = await _canned_server(
        nursery,
        [[b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"close", b"<close>"]],
    )
    upstream = PoolUpstream()
    status, pieces = await _fetch(upstream, origin)
    assert status == 200 and b"".join(pieces) == b"until close"
    assert not upstream._idle.get(origin)
    origin, _ = await _canned_server(nursery, [[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nConnection: Close\r\n\r\nok"]])
    assert (await _fetch(upstream, origin))[1] == [b"ok"]
    assert not upstream._idle.get(origin)


@pytest.mark.parametrize(
    "reply",
    [
        [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"],
        [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX"],
        [b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", b"<close>"],
        [b"SSH-2.0-OpenSSH\r\n\r\n"],
        [b"<close>"],
    ],
)
async def test_pool_rejects_broken_responses(reply: list[bytes], nursery: trio.Nursery) -> None:
    origin, _ = await _canned_server(nursery, [reply])
    with pytest.raises(UpstreamProtocolError):
        await _fetch(PoolUpstream(), origin)
