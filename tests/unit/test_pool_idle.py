"""The upstream pool's idle connections: reused LIFO, dropped after `idle_timeout` of trio time.

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

from smg.upstream.pool import PoolUpstream
from smg.workers.registry import Origin

IDLE = 4.0


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
async def serving() -> AsyncIterator[tuple[Worker, Origin, PoolUpstream]]:
    worker = Worker()
    pool = PoolUpstream(connect_timeout=math.inf, idle_timeout=IDLE)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), worker.handle, 0)
        port = listeners[0].socket.getsockname()[1]
        try:
            yield worker, Origin.parse(f"http://127.0.0.1:{port}"), pool
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
        assert await fetch(pool, origin) == 1  # idle 4 s, not more: still the same connection
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
