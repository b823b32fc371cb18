"""grpcio inside trio: `grpc.aio` on one dedicated thread, bridged to trio tasks.

Used by the gateway's gRPC upstream and by the simulated gRPC worker alike, so it sits low in
the layers (beside the sans-IO cores) and imports only trio and asyncio.

grpcio's asyncio API needs an asyncio event loop, and smg's concurrency is trio's; grpcio's sync
API would need a thread per stream (a thread hop per streamed message). So one thread runs one
asyncio loop that owns every gRPC channel of the node, and trio tasks hand it work:

- `AioThread.call(fn, ...)`: run a coroutine on the loop (a unary RPC) and await its result in
  trio. Cancelling the trio task cancels the asyncio task, and with it the RPC.
- `AioThread.stream(open_call)`: iterate a server-streaming RPC from trio. The loop side reads
  a message, hands it to trio with `TrioToken.run_sync_soon` (thread-safe, no blocking), and
  reads the next only while fewer than `window` messages wait unread in trio (credits are given
  back with `call_soon_threadsafe`), so a slow client slows the RPC instead of filling memory.
  Leaving the iteration early (the client went away, a stop string matched, a deadline) cancels
  the RPC on the loop.

The other direction, for a gRPC *server* whose handlers run on the loop but whose work lives in
trio (the simulated gRPC worker's engine): `TrioPortal`, opened in trio, lets loop code start a
trio task and iterate what it emits (`portal.stream(fn)`), or await its result (`portal.run`).
The task starts in the portal's nursery with `TrioToken.run_sync_soon`, hands each item back
with `loop.call_soon_threadsafe`, and cancellation goes both ways: the loop side leaving (the
RPC cancelled) cancels the trio task's scope; the trio side failing raises in the loop side.

Neither side ever blocks a thread waiting for the other: each wakes the other's loop.
`bench/grpc_bridge.py` measures this against grpcio's sync API in trio's thread pool.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import math
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

T = TypeVar("T")
WINDOW = 64  # streamed messages waiting unread in trio before the loop stops reading


class _End:
    """The stream ended (`error` None) or failed."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class AioThread:
    """One asyncio loop on its own daemon thread, for the node's lifetime (`start`, `stop`)."""

    def __init__(self, name: str = "smg-grpc") -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread and wait until its loop runs (a few milliseconds, once per node)."""
        if self._thread is not None:
            return
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self.loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop (pending RPCs are cancelled) and join the thread."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(cancel_all(), loop)
        thread.join(timeout)
        self.loop, self._thread = None, None

    def run_sync(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the loop's thread and wait for it (set-up only: creating channels)."""
        loop = self._loop()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result()

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`await fn(*args)` on the loop, from trio; cancellation reaches the coroutine."""
        loop = self._loop()
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        future = asyncio.run_coroutine_threadsafe(_awaited(fn, args), loop)
        future.add_done_callback(lambda _: _wake(token, done.set))
        try:
            await done.wait()
        except trio.Cancelled:
            future.cancel()  # cancels the asyncio task, and so the RPC
            raise
        return future.result()

    @asynccontextmanager
    async def stream(self, open_call: Callable[[], Any], window: int = WINDOW) -> AsyncIterator[AsyncIterator[Any]]:
        """Iterate the messages of the server-streaming call `open_call()` makes on the loop (a
        grpc.aio call object, or any async iterable). Errors of the call are raised in trio;
        leaving the block cancels the call if it is still running.

        Both directions are batched, since each cross-thread wake-up costs about as much as
        grpc.aio's own handling of a message: messages that arrive while trio has not yet run
        the last hand-over join it (one wake-up for all), and credits go back to the loop a
        quarter window at a time."""
        loop = self._loop()
        token = trio.lowlevel.current_trio_token()
        send, receive = trio.open_memory_channel[Any](math.inf)  # bounded by the credits
        pending: collections.deque[Any] = collections.deque()  # loop -> trio, appended on the loop
        scheduled = [False]  # a hand-over is on its way to trio
        credits = _Credits(window)
        batch = max(1, window // 4)

        def hand_over() -> None:  # on the trio thread
            scheduled[0] = False
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while pending:  # (suppressed: the reader left, the pump is being cancelled)
                    send.send_nowait(pending.popleft())

        def deliver(item: Any) -> None:  # on the loop
            pending.append(item)
            if not scheduled[0]:
                scheduled[0] = True
                _wake(token, hand_over)

        state: dict[str, Any] = {}  # the call, made on the loop by `pump`

        async def pump() -> None:  # on the loop
            error: BaseException | None = None
            try:
                call = open_call()
                state["call"] = call
                async for message in call:
                    await credits.take()
                    deliver(message)
            except asyncio.CancelledError:
                cancel = getattr(state.get("call"), "cancel", None)
                if cancel is not None:
                    cancel()
                # grpc.aio raises this too when its channel closes: a reader still waiting must wake
                deliver(_End(StreamCancelled("the gRPC call was cancelled")))
                raise
            except BaseException as exc:  # the RPC's status, given to the reader
                error = exc
            deliver(_End(error))

        task_future = asyncio.run_coroutine_threadsafe(pump(), loop)

        async def messages() -> AsyncIterator[Any]:
            consumed = 0
            async with receive:
                async for item in receive:
                    if isinstance(item, _End):
                        if item.error is not None:
                            raise item.error
                        return
                    consumed += 1
                    if consumed >= batch:
                        loop.call_soon_threadsafe(credits.give, consumed)
                        consumed = 0
                    yield item

        iterator = messages()
        try:
            yield iterator
        finally:
            if not task_future.done():
                task_future.cancel()  # first: the close below may be cancelled with its reader
            with trio.CancelScope(shield=True):
                await iterator.aclose()  # type: ignore[attr-defined]

    def _loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            raise RuntimeError("the gRPC loop is not running (AioThread.start)")
        return self.loop


class PortalClosed(RuntimeError):
    """The trio side of a `TrioPortal` is gone (the run ended, or the portal was closed)."""


class TrioPortal:
    """Loop-thread code's way into trio: `stream` and `run` are called on the asyncio loop.

    Open it in trio (`async with TrioPortal.open() as portal`); the tasks it starts live in its
    nursery, and leaving the block cancels those still running. Items are not flow-controlled
    (an asyncio.Queue without bound): the trio functions it serves pace themselves (the
    simulated worker sleeps per token), and the loop side reads as fast as gRPC writes."""

    def __init__(self, token: trio.lowlevel.TrioToken, nursery: trio.Nursery) -> None:
        self.token = token
        self.nursery = nursery

    @classmethod
    @asynccontextmanager
    async def open(cls) -> AsyncIterator[TrioPortal]:
        """A portal into the calling trio run, for the duration of the block."""
        async with trio.open_nursery() as nursery:
            yield cls(trio.lowlevel.current_trio_token(), nursery)
            nursery.cancel_scope.cancel()

    async def stream(self, fn: Callable[..., Awaitable[None]], *args: Any) -> AsyncGenerator[Any, None]:
        """(On the loop.) Run `fn(emit, *args)` as a trio task and iterate what it emits.

        `fn` calls the synchronous `emit(item)` for each item (rather than being an async
        generator: a trio generator must not yield inside its cancel scopes, and an engine's
        generation is full of them). An exception of `fn` is raised here after the items
        before it; closing this iterator or cancelling its reader cancels the trio task (use
        `contextlib.aclosing` to leave early)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        scope = trio.CancelScope()  # made here, entered there: a cancel may precede the start

        def put(item: Any) -> None:  # on the trio thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, item)

        async def task() -> None:  # on the trio thread
            end = _End(PortalClosed("the trio side stopped"))
            try:
                with scope:
                    await fn(put, *args)
                    end = _End(None)
            except Exception as exc:  # given to the loop side
                end = _End(exc)
            finally:
                put(end)

        def start() -> None:  # on the trio thread: must not raise (it would crash the run)
            try:
                self.nursery.start_soon(task)
            except RuntimeError as exc:  # the nursery is closed
                put(_End(PortalClosed(str(exc))))

        try:
            self.token.run_sync_soon(start)
        except trio.RunFinishedError:
            raise PortalClosed("the trio run has finished") from None
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            with contextlib.suppress(trio.RunFinishedError):
                self.token.run_sync_soon(scope.cancel)

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """(On the loop.) `await fn(*args)` as a trio task and return its result; cancelling
        the caller cancels the task."""

        async def one(emit: Callable[[T], None]) -> None:
            emit(await fn(*args))

        async with contextlib.aclosing(self.stream(one)) as items:
            async for item in items:
                result: T = item
                return result
        raise PortalClosed("the trio task ended without a result")


class _Credits:
    """How many more messages the loop may hand to trio before the reader catches up (loop side)."""

    def __init__(self, window: int) -> None:
        self.available = window
        self._more = asyncio.Event()

    async def take(self) -> None:
        while self.available <= 0:
            self._more.clear()
            await self._more.wait()
        self.available -= 1

    def give(self, count: int) -> None:
        self.available += count
        self._more.set()


class StreamCancelled(ConnectionError):
    """A stream's call was cancelled on the loop (its channel closed, or the loop stopping)."""


def _wake(token: trio.lowlevel.TrioToken, fn: Callable[[], None]) -> None:
    """`fn` on the trio thread soon; nothing if trio's run has ended (the loop outlived it)."""
    with contextlib.suppress(trio.RunFinishedError):
        token.run_sync_soon(fn)


async def _awaited(fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
    return await fn(*args)
