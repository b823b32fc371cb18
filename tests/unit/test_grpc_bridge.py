"""The trio <-> grpc.aio bridge (`smg.upstream.grpc_bridge`), with plain coroutines and async
generators on the loop thread standing in for RPCs (the real RPCs: tests/e2e with the gRPC sim)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from smg.upstream.grpc_bridge import AioThread


@pytest.fixture
def aio() -> Iterator[AioThread]:
    thread = AioThread("test-grpc")
    thread.start()
    yield thread
    thread.stop()


async def test_a_call_returns_its_result_and_its_error(aio: AioThread) -> None:
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    async def fail() -> None:
        raise ValueError("the worker said no")

    assert await aio.call(add, 2, 3) == 5
    with pytest.raises(ValueError, match="the worker said no"):
        await aio.call(fail)


async def test_cancelling_the_trio_side_cancels_the_coroutine(aio: AioThread) -> None:
    cancelled = asyncio.Event()  # only touched on the loop thread
    seen: list[bool] = []

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            seen.append(True)
            raise

    with trio.move_on_after(0.05):
        await aio.call(forever)
    with trio.fail_after(5):
        while not seen:
            await trio.sleep(0.01)


async def test_a_stream_delivers_every_message_in_order_then_ends(aio: AioThread) -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(500):
            yield i

    async with aio.stream(numbers) as messages:
        got = [m async for m in messages]
    assert got == list(range(500))


async def test_a_stream_error_is_raised_after_the_messages_before_it(aio: AioThread) -> None:
    async def broken() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise ConnectionError("stream broken mid-generation")

    got = []
    with pytest.raises(ConnectionError, match="mid-generation"):
        async with aio.stream(broken) as messages:
            async for m in messages:
                got.append(m)
    assert got == [1, 2]


async def test_a_slow_reader_holds_the_stream_back_to_the_window(aio: AioThread) -> None:
    produced: list[int] = []

    async def fast() -> AsyncIterator[int]:
        for i in range(1000):
            produced.append(i)
            yield i

    async with aio.stream(fast, window=8) as messages:
        first = await messages.__anext__()
        await trio.sleep(0.1)  # the loop could produce all 1000 meanwhile, were it not held back
        assert first == 0 and len(produced) <= 8 + 2
        rest = [m async for m in messages]
    assert rest == list(range(1, 1000))


async def test_leaving_a_stream_early_cancels_it_on_the_loop(aio: AioThread) -> None:
    stopped: list[str] = []

    async def endless() -> AsyncIterator[int]:
        i = 0
        try:
            while True:
                yield i
                i += 1
                await asyncio.sleep(0.001)
        except asyncio.CancelledError:
            stopped.append("cancelled")
            raise
        finally:
            stopped.append("closed")

    async with aio.stream(endless) as messages:
        async for m in messages:
            if m == 5:
                break
    with trio.fail_after(5):
        while "closed" not in stopped:
            await trio.sleep(0.01)
