"""The trio <-> grpc.aio bridge (`smg.aiothread`), with plain coroutines and async
generators on the loop thread standing in for RPCs (the real RPCs: tests/e2e with the gRPC sim)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import trio

from smg.aiothread import AioThread, PortalClosed, TrioPortal


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


# -- TrioPortal: the loop thread asking trio for work (a gRPC server's handlers) ------------


async def test_the_loop_iterates_a_trio_generator_and_awaits_a_trio_result(aio: AioThread) -> None:
    trio_thread = trio.lowlevel.current_trio_token()

    async def numbers(emit: Callable[[int], None], count: int) -> None:
        assert trio.lowlevel.current_trio_token() is trio_thread  # it runs in trio
        for i in range(count):
            await trio.sleep(0)
            emit(i)

    async def double(x: int) -> int:
        await trio.sleep(0)
        return 2 * x

    async with TrioPortal.open() as portal:

        async def on_loop() -> tuple[list[int], int]:
            got = [i async for i in portal.stream(numbers, 200)]
            return got, await portal.run(double, 21)

        with trio.fail_after(5):
            got, doubled = await aio.call(on_loop)
    assert got == list(range(200))
    assert doubled == 42


async def test_a_trio_error_is_raised_on_the_loop_after_the_items_before_it(aio: AioThread) -> None:
    async def broken(emit: Callable[[int], None]) -> None:
        emit(1)
        raise ValueError("engine failed")

    async with TrioPortal.open() as portal:

        async def on_loop() -> tuple[list[int], str]:
            got: list[int] = []
            try:
                async for i in portal.stream(broken):
                    got.append(i)
            except ValueError as exc:
                return got, str(exc)
            return got, ""

        with trio.fail_after(5):
            assert await aio.call(on_loop) == ([1], "engine failed")


async def test_cancelling_the_loop_side_cancels_the_trio_task(aio: AioThread) -> None:
    started, cancelled = trio.Event(), trio.Event()

    async def forever(emit: Callable[[int], None]) -> None:
        started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set()
            raise

    async with TrioPortal.open() as portal:

        async def on_loop() -> None:
            async for _ in portal.stream(forever):
                pass

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(aio.call, on_loop)
                await started.wait()
                nursery.cancel_scope.cancel()  # cancels the loop coroutine, which cancels the task
            await cancelled.wait()


async def test_leaving_early_cancels_the_trio_task_and_a_closed_portal_is_an_error(aio: AioThread) -> None:
    closed = trio.Event()

    async def endless(emit: Callable[[int], None]) -> None:
        try:
            i = 0
            while True:
                await trio.sleep(0.001)
                emit(i)
                i += 1
        finally:
            closed.set()

    async with TrioPortal.open() as portal:

        async def first_three() -> list[int]:
            got = []
            async with contextlib.aclosing(portal.stream(endless)) as items:
                async for i in items:
                    got.append(i)
                    if len(got) == 3:
                        break
            return got

        with trio.fail_after(5):
            assert await aio.call(first_three) == [0, 1, 2]
            await closed.wait()

    async def late() -> None:
        async for _ in portal.stream(endless):
            pass

    with trio.fail_after(5), pytest.raises(PortalClosed):
        await aio.call(late)


async def test_a_reader_cancelled_outside_the_iteration_still_cancels_the_call(aio: AioThread) -> None:
    """The client goes away while the handler waits on something else: the RPC must not leak."""
    stopped: list[str] = []

    async def endless() -> AsyncIterator[int]:
        try:
            while True:
                yield 1
                await asyncio.sleep(0.01)
        finally:
            stopped.append("closed")

    with trio.move_on_after(0.1):
        async with aio.stream(endless) as messages:
            await messages.__anext__()
            await trio.sleep_forever()  # cancelled here, not inside the iteration
    with trio.fail_after(5):
        while "closed" not in stopped:
            await trio.sleep(0.01)


async def test_a_call_cancelled_on_the_loop_wakes_its_reader_with_an_error(aio: AioThread) -> None:
    """grpc.aio raises CancelledError in the stream when its channel is closed: the reader must
    get an error, not wait for ever."""
    from smg.aiothread import StreamCancelled

    async def closed_under_it() -> AsyncIterator[int]:
        yield 1
        raise asyncio.CancelledError

    with trio.fail_after(5), pytest.raises(StreamCancelled):
        async with aio.stream(closed_under_it) as messages:
            async for _ in messages:
                pass
