"""Slow, silent and idle clients (issue 13 §4): each connection's one deadline, and the connection cap.

The first half drives `smg.http.server.Connection` (one client connection and its
deadline) over in-memory streams under trio's MockClock, so every bound is
checked to the millisecond and the tests take no real time. The second half
checks the wiring end to end: a real gateway on 127.0.0.1 (in this process),
real sockets, real time, small timeouts and a generous margin for a loaded
machine.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import h11
import pytest
import trio
import trio.testing

from smg.config import GatewayConfig
from smg.gateway import GatewayHandle, run_gateway
from smg.http.asgi import Receive, Scope, Send, send_bytes
from smg.http.server import Connection, Server, ServerConfig, server_config
from smg.simworker.engine import SimConfig
from smg.simworker.fleet import run_fleet
from tests.fakes import FakeSocket

HEAD = 1.0  # header-read timeout in these tests
IDLE = 0.5  # idle timeout
BODY = 2.0  # body bound (the gateway passes --request-timeout-secs)
EPSILON = 0.01  # MockClock: the bound, to within scheduling of one step
SLACK = 5.0  # real clock: how late a loaded 2-core machine may notice a deadline (precision: the MockClock tests)


# -- Connection under MockClock ------------------------------------------------------


class _ServerSide:
    """The server end of an in-memory stream, with a socket to name the peer as a real one does."""

    def __init__(self, inner: trio.StapledStream[Any, Any]) -> None:
        self.inner = inner
        self.socket = FakeSocket()
        self.closed = trio.Event()  # the server closed its end

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes) -> None:
        await self.inner.send_all(data)

    async def aclose(self) -> None:
        self.closed.set()
        await self.inner.aclose()


async def tiny_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers "ok" after reading the body (`/slow`: after 2.5 head bounds); `/stream` sends one
    chunk a second for 10 s."""
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/slow":
        await trio.sleep(2.5 * HEAD)  # longer than a head or body may take: the answer is not either
    if scope["path"] != "/stream":
        await send_bytes(send, 200, b"ok")
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for i in range(10):
        await trio.sleep(1.0)
        await send({"type": "http.response.body", "body": b"data: %d\n\n" % i, "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


class Conn:
    """A client on one in-memory connection to a `Connection`."""

    def __init__(self, nursery: trio.Nursery, config: ServerConfig, shared: Server | None = None, lockstep: bool = False) -> None:
        # lockstep: the server's writes wait for the client's reads, as a full socket buffer makes them
        client, server = trio.testing.lockstep_stream_pair() if lockstep else trio.testing.memory_stream_pair()
        self.client = client
        self.served_by = shared or Server(tiny_app, config, "http")
        self.h11 = h11.Connection(h11.CLIENT)
        self.closed = trio.Event()
        self.closed_at = -1.0
        self.server = _ServerSide(server)
        nursery.start_soon(Connection(self.served_by, cast(trio.abc.Stream, self.server)).run)

    async def send(self, data: bytes) -> None:
        await self.client.send_all(data)

    async def response(self) -> bytes:
        """Send nothing; read one whole response (body joined)."""
        body = b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                data = await self.client.receive_some()
                assert data, "the server closed the connection before answering"
                self.h11.receive_data(data)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self.h11.start_next_cycle()
                return body

    async def get(self, path: str = "/") -> bytes:
        await self.send(self.h11.send(h11.Request(method="GET", target=path, headers=[("host", "x")])))
        await self.send(self.h11.send(h11.EndOfMessage()))
        return await self.response()

    async def wait_closed(self) -> float:
        """Read until the server closes; returns when (MockClock time)."""
        while await self.client.receive_some():
            pass
        return trio.current_time()


def guarded(header: float = HEAD, idle: float = IDLE, body: float = BODY) -> ServerConfig:
    return server_config("127.0.0.1", 0, header_read_timeout=header, keep_alive_timeout=idle, body_timeout=body)


async def test_the_head_deadline_runs_from_accept_whatever_the_client_trickles(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        conn = Conn(nursery, guarded())
        start = trio.current_time()
        sent = 0

        async def drip() -> None:
            nonlocal sent
            for byte in b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 100:
                await conn.send(bytes([byte]))
                sent += 1
                await trio.sleep(0.3)

        nursery.start_soon(drip)
        closed = await conn.wait_closed()
        nursery.cancel_scope.cancel()
    assert closed - start == pytest.approx(HEAD, abs=EPSILON)
    assert sent == 4  # every byte was read (at 0, 0.3, 0.6, 0.9 s), and none moved the deadline


async def test_idle_between_requests_then_a_later_head_runs_from_its_first_byte(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        conn = Conn(nursery, guarded(header=HEAD, idle=5.0))
        assert await conn.get() == b"ok"
        await trio.sleep(3.0)  # idle, under the idle bound
        assert await conn.get() == b"ok"
        await trio.sleep(0.3)
        await conn.send(b"G")  # the next head begins, and stalls
        started = trio.current_time()
        closed = await conn.wait_closed()
        nursery.cancel_scope.cancel()
    assert closed - started == pytest.approx(HEAD, abs=EPSILON)


async def test_an_idle_keep_alive_connection_closes_after_the_idle_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        conn = Conn(nursery, guarded(header=30.0, idle=IDLE))
        assert await conn.get() == b"ok"
        done = trio.current_time()
        closed = await conn.wait_closed()
        nursery.cancel_scope.cancel()
    assert closed - done == pytest.approx(IDLE, abs=EPSILON)


async def test_pipelined_requests_wait_for_each_other_without_a_deadline(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        conn = Conn(nursery, guarded(header=HEAD, idle=100.0))
        slow = h11.Request(method="GET", target="/slow", headers=[("host", "x")])
        data = conn.h11.send(slow) + conn.h11.send(h11.EndOfMessage())
        await conn.send(data + data)  # the second request arrives while the first is being answered
        received = b""
        while received.count(b"HTTP/1.1 200") < 2 or not received.endswith(b"ok"):
            chunk = await conn.client.receive_some()
            assert chunk, "the server closed the connection: " + received.decode()
            received += chunk
        nursery.cancel_scope.cancel()
    assert received.count(b"HTTP/1.1 200") == 2


async def test_a_client_that_reads_nothing_is_closed_at_the_write_bound(autojump_clock: trio.testing.MockClock) -> None:
    config = guarded(header=HEAD, idle=100.0)
    config.write_timeout = 7.0
    async with trio.open_nursery() as nursery:
        conn = Conn(nursery, config, lockstep=True)
        await conn.send(conn.h11.send(h11.Request(method="GET", target="/stream", headers=[("host", "x")])))
        await conn.send(conn.h11.send(h11.EndOfMessage()))
        sent = trio.current_time()
        with trio.fail_after(60):  # (MockClock time) an unbounded write would block forever
            await conn.server.closed.wait()  # the client never reads: the response's first write blocks
        nursery.cancel_scope.cancel()
    # the head goes out with the stream's first chunk, 1 s in; that write is cut 7 s later
    assert trio.current_time() - sent == pytest.approx(1.0 + 7.0, abs=EPSILON)


async def test_a_body_that_stops_arriving_is_cut_at_the_head_bound(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        conn = Conn(nursery, guarded(header=HEAD, body=BODY))
        await conn.send(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        await trio.sleep(HEAD / 2)
        await conn.send(b"0123456789")  # progress: the stall bound starts again
        sent = trio.current_time()
        closed = await conn.wait_closed()
        nursery.cancel_scope.cancel()
    assert closed - sent == pytest.approx(HEAD, abs=EPSILON)


async def test_a_trickled_body_is_cut_at_the_whole_body_bound(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        conn = Conn(nursery, guarded(header=HEAD, body=BODY))
        await conn.send(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n")
        start = trio.current_time()

        async def trickle() -> None:
            while True:
                await trio.sleep(HEAD / 2)
                await conn.send(b"0")

        nursery.start_soon(trickle)
        closed = await conn.wait_closed()
        nursery.cancel_scope.cancel()
    assert closed - start == pytest.approx(BODY, abs=HEAD / 2 + EPSILON)


async def test_a_body_that_arrives_ends_the_body_bound(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        conn = Conn(nursery, guarded(header=HEAD, body=BODY, idle=100.0))
        head = h11.Request(method="POST", target="/stream", headers=[("host", "x"), ("content-length", "4")])
        await conn.send(conn.h11.send(head) + conn.h11.send(h11.Data(data=b"ab")))
        await trio.sleep(HEAD * 0.8)
        await conn.send(conn.h11.send(h11.Data(data=b"cd")))  # complete within the bound; the 10 s answer follows
        conn.h11.send(h11.EndOfMessage())
        body = await conn.response()
        nursery.cancel_scope.cancel()
    assert body.endswith(b"data: [DONE]\n\n")


async def test_a_response_longer_than_every_bound_is_not_cut(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        conn = Conn(nursery, guarded(header=HEAD, idle=IDLE, body=BODY))
        start = trio.current_time()
        body = await conn.get("/stream")  # 10 s, one chunk a second: longer than the idle bound between chunks
        took = trio.current_time() - start
        closed = await conn.wait_closed()  # then idle: closed after the idle bound
        nursery.cancel_scope.cancel()
    assert body.count(b"data: ") == 11 and took == pytest.approx(10.0, abs=EPSILON)
    assert closed - start == pytest.approx(10.0 + IDLE, abs=EPSILON)


async def test_zero_disables_the_head_and_idle_bounds(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        silent = Conn(nursery, guarded(header=0, idle=0))
        idle = Conn(nursery, guarded(header=0, idle=0))
        assert await idle.get() == b"ok"
        with trio.move_on_after(10_000):
            await silent.wait_closed()
            raise AssertionError("a connection was closed with both bounds disabled")
        with trio.move_on_after(1):
            await idle.wait_closed()
            raise AssertionError("a connection was closed with both bounds disabled")
        nursery.cancel_scope.cancel()


async def test_shutdown_closes_idle_connections_and_lets_a_response_finish(autojump_clock: trio.testing.MockClock) -> None:
    server = Server(tiny_app, guarded(idle=100.0), "http")
    async with trio.open_nursery() as nursery:
        idle = Conn(nursery, server.config, server)
        busy = Conn(nursery, server.config, server)
        assert await idle.get() == b"ok"
        await busy.send(busy.h11.send(h11.Request(method="GET", target="/stream", headers=[("host", "x")])))
        await busy.send(busy.h11.send(h11.EndOfMessage()))
        await trio.sleep(2.5)
        stopped = trio.current_time()
        server.terminate()
        assert await idle.wait_closed() == pytest.approx(stopped, abs=EPSILON)
        assert (await busy.response()).endswith(b"data: [DONE]\n\n")  # then it closes: no reuse after shutdown
        assert await busy.wait_closed() == pytest.approx(stopped + 7.5, abs=EPSILON)
        nursery.cancel_scope.cancel()


# -- a real gateway, real sockets -----------------------------------------------------------


@asynccontextmanager
async def gateway(sim: SimConfig | None = None, **settings: Any) -> AsyncIterator[tuple[int, GatewayHandle]]:
    """A gateway on 127.0.0.1 over one simulated worker, both in this process; yields its port."""
    async with trio.open_nursery() as nursery:
        workers = await nursery.start(run_fleet, sim or SimConfig(ttft_ms=0, tpot_ms=0), "127.0.0.1", 0, 1)
        config = GatewayConfig(
            host="127.0.0.1", port=0, prometheus_port=None, history_backend="none", worker_urls=tuple(workers), **settings
        )
        handle: GatewayHandle = await nursery.start(run_gateway, config)
        port = int(handle.urls[0].rsplit(":", 1)[1])
        with trio.fail_after(10):
            while (await http(port, "GET", "/readiness"))[0] != 200:
                await trio.sleep(0.05)
        yield port, handle
        nursery.cancel_scope.cancel()


async def http(
    port: int, method: str, path: str, body: bytes = b"", stream: trio.SocketStream | None = None
) -> tuple[int, bytes]:
    """One request on `stream` (or a new connection); the status and the whole body."""
    sock = stream or await trio.open_tcp_stream("127.0.0.1", port)
    client = h11.Connection(h11.CLIENT)
    headers = [("host", "x"), ("content-length", str(len(body))), ("content-type", "application/json")]
    await sock.send_all(client.send(h11.Request(method=method, target=path, headers=headers)) + client.send(h11.Data(data=body)))
    await sock.send_all(client.send(h11.EndOfMessage()))
    status, out = 0, b""
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(await sock.receive_some())
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            out += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    if stream is None:
        await sock.aclose()
    return status, out


async def closed_after(sock: trio.SocketStream, bound: float) -> float:
    """Seconds until the server closes `sock` (reading and dropping what arrives); fails past `bound`."""
    start = trio.current_time()
    with trio.fail_after(bound):
        try:
            while await sock.receive_some():
                pass
        except trio.BrokenResourceError:
            pass  # reset: closed as well
    return trio.current_time() - start


async def test_a_slowloris_is_disconnected_at_the_header_read_timeout() -> None:
    async with gateway(header_read_timeout_secs=HEAD) as (port, _):
        sock = await trio.open_tcp_stream("127.0.0.1", port)
        sent = 0

        async def drip() -> None:
            nonlocal sent
            for byte in b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 100:
                await sock.send_all(bytes([byte]))
                sent += 1
                await trio.sleep(0.2)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drip)
            took = await closed_after(sock, HEAD + SLACK)
            nursery.cancel_scope.cancel()
    assert took >= HEAD - 0.05 and sent >= 3


async def test_a_declared_body_that_never_arrives_is_closed_at_the_header_read_timeout() -> None:
    async with gateway(header_read_timeout_secs=BODY, request_timeout_secs=60.0) as (port, handle):
        sock = await trio.open_tcp_stream("127.0.0.1", port)
        await sock.send_all(b'POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{"model"')
        took = await closed_after(sock, BODY + SLACK)
        assert took >= BODY - 0.05
        assert handle.ctx.in_flight == 0


async def test_a_stream_longer_than_the_idle_timeout_is_not_cut() -> None:
    slow = SimConfig(ttft_ms=0, tpot_ms=100, output_tokens=15)  # about 1.5 s of tokens: 3x the idle timeout
    async with gateway(slow, idle_connection_timeout_secs=IDLE) as (port, _):
        sock = await trio.open_tcp_stream("127.0.0.1", port)
        request = b'{"model":"sim-model","prompt":"hi","stream":true}'
        start = trio.current_time()
        status, body = await http(port, "POST", "/v1/completions", request, stream=sock)
        took = trio.current_time() - start
        assert status == 200 and body.rstrip().endswith(b"data: [DONE]") and took > 2 * IDLE
        assert await closed_after(sock, IDLE + SLACK) >= IDLE - 0.05  # then idle: closed after the idle bound


async def test_the_connection_cap_holds_the_next_connection_back_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="smg.serving")
    async with gateway(max_client_connections=2) as (port, _):
        first = await trio.open_tcp_stream("127.0.0.1", port)
        second = await trio.open_tcp_stream("127.0.0.1", port)
        assert (await http(port, "GET", "/health", stream=first))[0] == 200
        assert (await http(port, "GET", "/health", stream=second))[0] == 200
        third = await trio.open_tcp_stream("127.0.0.1", port)  # the kernel completes it: it waits in the backlog
        fourth = await trio.open_tcp_stream("127.0.0.1", port)
        async with trio.open_nursery() as nursery:
            answers: list[int] = []

            async def ask(sock: trio.SocketStream) -> None:
                answers.append((await http(port, "GET", "/health", stream=sock))[0])

            nursery.start_soon(ask, third)
            nursery.start_soon(ask, fourth)
            with trio.fail_after(SLACK):  # the listener reached the cap: it waits for a slot
                while not any("--max-client-connections" in r.getMessage() for r in caplog.records):
                    await trio.sleep(0.01)
            assert answers == []  # held back, not refused
            await first.aclose()
            with trio.fail_after(SLACK):
                while not answers:
                    await trio.sleep(0.01)
            assert answers == [200]  # one slot freed, one connection served
            await second.aclose()
        assert answers == [200, 200]
    warnings = [r for r in caplog.records if "--max-client-connections" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
