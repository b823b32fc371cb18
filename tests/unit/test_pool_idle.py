"""The upstream pool's idle connections: reused LIFO, dropped after `idle_timeout` of trio time
(`--upstream-pool-idle-timeout-secs`, default 3 s; 0 keeps them), wherever they sit in the
stack and whether or not their worker is still called.

A loopback listener opened by the test answers each request with the number of the connection it
arrived on, so a test sees which connection the pool chose and when the pool closed one (the
server reads end-of-file). The clock is trio's MockClock: the pool stamps a connection when it
goes back idle and compares with `trio.current_time()` when the next request takes one, so a
test sleeps exactly up to (or just past) the timeout. Loopback I/O is real; the connect timeout
is infinite so that the autojump clock, jumping while the kernel completes a connect, could
only fire happy eyeballs' harmless 0.25 s timer, never fail a connect. Every time asserted is
taken after the I/O it follows, from the instant the pool released the connection.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio
import trio.testing

from smg.config import GatewayConfig
from smg.context import GatewayContext
from smg.upstream import make_upstream
from smg.upstream.httpx_client import HttpxUpstream
from smg.upstream.pool import PoolUpstream
from smg.workers.registry import Origin

IDLE = 3.0  # the flag's default


class Worker:
    """Answers every request on a connection with that connection's number (1, 2, ...)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.closed: dict[int, trio.Event] = {}  # by connection number: set once the pool closed it

    async def handle(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        number = self.accepted
        self.closed[number] = done = trio.Event()
        buffered = b""
        try:
            while data := await stream.receive_some(65536):
                buffered += data
                while b"\r\n\r\n" in buffered:  # the pool's requests here carry no body
                    _, _, buffered = buffered.partition(b"\r\n\r\n")
                    body = str(number).encode()
                    await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        except trio.BrokenResourceError:
            pass
        finally:
            done.set()

    def is_open(self, number: int) -> bool:
        return not self.closed[number].is_set()


@asynccontextmanager
async def serving(idle: float = IDLE) -> AsyncIterator[tuple[Worker, Origin, PoolUpstream]]:
    async with serving_many(1, idle) as (workers, pool):
        ((worker, origin),) = workers
        yield worker, origin, pool


@asynccontextmanager
async def serving_many(count: int, idle: float = IDLE) -> AsyncIterator[tuple[list[tuple[Worker, Origin]], PoolUpstream]]:
    """`count` workers, each on a listener of its own (an origin), and one pool for them all."""
    pool = PoolUpstream(connect_timeout=math.inf, idle_timeout=idle)
    async with trio.open_nursery() as nursery:
        workers = []
        for _ in range(count):
            worker = Worker()
            listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), worker.handle, 0)
            port = listeners[0].socket.getsockname()[1]
            workers.append((worker, Origin.parse(f"http://127.0.0.1:{port}")))
        try:
            yield workers, pool
        finally:
            await pool.aclose()
            nursery.cancel_scope.cancel()


def idle_sockets(pool: PoolUpstream, origin: Origin) -> list[trio.socket.SocketType]:
    """The sockets of the pool's idle connections, held so that only an explicit close (not the
    garbage collector, when the pool forgets a connection) shuts them."""
    return [conn.stream.socket for conn in pool._idle.get(origin, [])]  # type: ignore[attr-defined]


async def fetch(pool: PoolUpstream, origin: Origin) -> int:
    """One request; the number of the connection that answered it."""
    async with pool.request(origin, b"GET", b"/", [], b"") as response:
        assert response.status == 200
        return int(await response.read())


async def test_a_connection_idle_for_exactly_the_timeout_is_reused(autojump_clock: trio.testing.MockClock) -> None:
    async with serving() as (worker, origin, pool):
        assert await fetch(pool, origin) == 1
        released = trio.current_time()
        await trio.sleep(IDLE)
        assert trio.current_time() - released == IDLE
        assert await fetch(pool, origin) == 1  # idle 3 s, not more: still the same connection
        await trio.sleep(IDLE / 2)
        assert await fetch(pool, origin) == 1  # each use starts its idle time again
        assert worker.accepted == 1 and worker.is_open(1)


async def test_a_connection_idle_past_the_timeout_is_closed_and_replaced(autojump_clock: trio.testing.MockClock) -> None:
    async with serving() as (worker, origin, pool):
        assert await fetch(pool, origin) == 1
        await trio.sleep(IDLE + 0.001)
        assert worker.is_open(1)  # dropped when a request looks for one, not by a timer
        (stale,) = idle_sockets(pool, origin)
        assert await fetch(pool, origin) == 2
        assert stale.fileno() == -1  # the pool closed the stale one rather than forget it open
        await worker.closed[1].wait()
        assert worker.accepted == 2 and worker.is_open(2)


async def test_the_connection_released_last_is_reused_first(autojump_clock: trio.testing.MockClock) -> None:
    async with serving() as (worker, origin, pool):
        held = [trio.Event(), trio.Event()]
        answered: dict[int, int] = {}  # request index -> connection number

        async def hold(index: int) -> None:
            async with pool.request(origin, b"GET", b"/", [], b"") as response:
                answered[index] = int(await response.read())
                await held[index].wait()

        async with trio.open_nursery() as nursery:
            for index in range(2):  # two requests at once: two connections
                nursery.start_soon(hold, index)
            while len(answered) < 2:
                await trio.testing.wait_all_tasks_blocked()
            held[0].set()  # request 0's connection goes back idle first ...
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(1.0)
            held[1].set()  # ... request 1's last
        first, second = answered[0], answered[1]
        assert {first, second} == {1, 2}
        assert await fetch(pool, origin) == second  # the warmest
        assert await fetch(pool, origin) == second  # and again: it went back on top
        async with pool.request(origin, b"GET", b"/", [], b"") as response:  # while that one is busy ...
            assert int(await response.read()) == second
            assert await fetch(pool, origin) == first  # ... the other one, still within its idle time
        assert worker.accepted == 2


async def test_an_expired_newest_connection_takes_the_older_ones_with_it(autojump_clock: trio.testing.MockClock) -> None:
    """LIFO order is also age order: when the newest idle connection is past the timeout, every
    one under it is too, and all of them are closed on the way to a fresh connection."""
    async with serving() as (worker, origin, pool):
        release = trio.Event()
        answered: list[int] = []

        async def hold() -> None:
            async with pool.request(origin, b"GET", b"/", [], b"") as response:
                answered.append(int(await response.read()))
                await release.wait()

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(hold)
            while len(answered) < 3:
                await trio.testing.wait_all_tasks_blocked()
            release.set()
        await trio.sleep(IDLE + 0.001)
        stale = idle_sockets(pool, origin)
        assert len(stale) == 3
        assert await fetch(pool, origin) == 4
        assert [sock.fileno() for sock in stale] == [-1, -1, -1]
        for number in (1, 2, 3):
            await worker.closed[number].wait()
        assert worker.accepted == 4 and worker.is_open(4)


async def two_idle_connections(pool: PoolUpstream, origin: Origin, apart: float) -> tuple[int, int]:
    """Two connections released `apart` seconds apart: (the one under, the one on top)."""
    release = [trio.Event(), trio.Event()]
    answered: dict[int, int] = {}

    async def hold(index: int) -> None:
        async with pool.request(origin, b"GET", b"/", [], b"") as response:
            answered[index] = int(await response.read())
            await release[index].wait()

    async with trio.open_nursery() as nursery:
        for index in range(2):
            nursery.start_soon(hold, index)
        while len(answered) < 2:
            await trio.testing.wait_all_tasks_blocked()
        release[0].set()
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(apart)
        release[1].set()
    return answered[0], answered[1]


async def test_a_take_closes_expired_connections_under_the_top(autojump_clock: trio.testing.MockClock) -> None:
    """The top connection is fresh enough to reuse; the older one under it is past the timeout
    and is closed by the same take instead of waiting, open, for the stack to shrink to it."""
    async with serving() as (worker, origin, pool):
        under, top = await two_idle_connections(pool, origin, 2.0)
        stale = idle_sockets(pool, origin)[0]
        await trio.sleep(IDLE - 1.0 + 0.001)  # the one under: idle just past 3 s; the top: 1 s
        assert worker.is_open(under)
        assert await fetch(pool, origin) == top
        assert stale.fileno() == -1
        await worker.closed[under].wait()
        assert len(idle_sockets(pool, origin)) == 1 and worker.is_open(top)


async def test_a_return_closes_expired_connections_too(autojump_clock: trio.testing.MockClock) -> None:
    async with serving() as (worker, origin, pool):
        under, top = await two_idle_connections(pool, origin, 2.0)
        stale = idle_sockets(pool, origin)[0]
        async with pool.request(origin, b"GET", b"/", [], b"") as response:  # takes the top one, at once
            assert int(await response.read()) == top
            await trio.sleep(IDLE + 0.001)
            assert worker.is_open(under)  # nothing looked at the stack meanwhile
        assert stale.fileno() == -1  # the return trimmed it
        await worker.closed[under].wait()
        assert idle_sockets(pool, origin) != [] and worker.is_open(top)


async def test_a_worker_nobody_calls_loses_its_idle_connections(autojump_clock: trio.testing.MockClock) -> None:
    """No request for origin A looks at its stack any more; traffic to B sweeps every origin,
    at most once per idle timeout, and A's expired connection closes with it."""
    async with serving_many(2) as ([(worker_a, origin_a), (worker_b, origin_b)], pool):
        assert await fetch(pool, origin_a) == 1
        (stale,) = idle_sockets(pool, origin_a)
        await trio.sleep(IDLE / 2)
        assert await fetch(pool, origin_b) == 1
        assert worker_a.is_open(1)  # within its idle time
        await trio.sleep(IDLE)  # A's connection: idle 4.5 s; the last sweep: 4.5 s ago
        assert await fetch(pool, origin_b) == 1
        assert stale.fileno() == -1 and origin_a not in pool._idle  # the worker's entry goes too
        await worker_a.closed[1].wait()
        assert worker_b.is_open(1)


async def test_a_sweep_runs_at_most_once_per_idle_timeout(autojump_clock: trio.testing.MockClock) -> None:
    """Sweeping costs a look at every origin, so it waits a whole idle timeout after the last
    one: an expired connection of an uncalled worker may outlive its timeout by that much."""
    async with serving_many(2) as ([(worker_a, origin_a), (_, origin_b)], pool):
        assert await fetch(pool, origin_b) == 1  # the first take sweeps; the next is due 3 s later
        await trio.sleep(1.5)
        assert await fetch(pool, origin_b) == 1  # B is called often enough to stay warm
        await trio.sleep(1.0)
        assert await fetch(pool, origin_a) == 1  # 2.5 s: A idle from here
        await trio.sleep(1.0)
        assert await fetch(pool, origin_b) == 1  # 3.5 s: a sweep (A fine); the next is due at 6.5 s
        await trio.sleep(2.5)
        assert await fetch(pool, origin_b) == 1  # 6 s: A idle 3.5 s, but no sweep is due ...
        assert worker_a.is_open(1) and len(idle_sockets(pool, origin_a)) == 1
        await trio.sleep(1.0)
        assert await fetch(pool, origin_b) == 1  # ... until 6.5 s: this take at 7 s closes it
        assert origin_a not in pool._idle
        await worker_a.closed[1].wait()


async def test_zero_keeps_idle_connections_forever(autojump_clock: trio.testing.MockClock) -> None:
    async with serving_many(2, idle=0) as ([(worker_a, origin_a), (_, origin_b)], pool):
        assert await fetch(pool, origin_a) == 1
        await trio.sleep(10.0**6)
        assert await fetch(pool, origin_b) == 1  # no sweep closes A's
        assert worker_a.is_open(1)
        assert await fetch(pool, origin_a) == 1 and worker_a.accepted == 1


async def test_the_flag_reaches_both_clients() -> None:
    """`--upstream-pool-idle-timeout-secs` goes to the pool, and to httpx as `keepalive_expiry`,
    where 0 has to become None: httpx's 0 would expire every connection at once."""
    ctx = GatewayContext.create(GatewayConfig(history_backend="none", upstream_pool_idle_timeout_secs=1.5))
    assert isinstance(ctx.upstream, PoolUpstream) and ctx.upstream.idle_timeout == 1.5
    await ctx.upstream.aclose()
    default = GatewayContext.create(GatewayConfig(history_backend="none"))
    assert isinstance(default.upstream, PoolUpstream) and default.upstream.idle_timeout == 3.0
    await default.upstream.aclose()
    for idle, expiry in ((2.5, 2.5), (0.0, None)):
        upstream = make_upstream("httpx", connect_timeout=1, max_idle_per_origin=4, idle_timeout=idle)
        assert isinstance(upstream, HttpxUpstream)
        assert upstream._client._transport._pool._keepalive_expiry == expiry  # type: ignore[attr-defined]
        await upstream.aclose()
