"""A simulated engine's running and prefill slots, shared by its HTTP and gRPC shells: a request
waits for one of `--max-running` slots (counted as waiting meanwhile), then holds it and its KV
tokens (counted as running), as the load reports both shells serve describe; within it, its
prefill waits for one of `--prefill-slots` (when set), so uncached prompts queue behind one
another as in an engine that prefills one batch at a time."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from smg.simworker.engine import SimEngine


@asynccontextmanager
async def running_slot(engine: SimEngine, slots: trio.Semaphore, tokens: int) -> AsyncIterator[None]:
    """Hold a slot and `tokens` of KV cache for the block."""
    engine.waiting += 1
    try:
        await slots.acquire()
    finally:
        engine.waiting -= 1
    engine.running += 1
    engine.running_tokens += tokens
    try:
        yield
    finally:
        engine.running -= 1
        engine.running_tokens -= tokens
        slots.release()


class PrefillSlots:
    """The semaphore of `--prefill-slots`, made again when the setting changes at run time
    (`POST /sim/config`); None when prefills are not limited."""

    def __init__(self) -> None:
        self._size = 0
        self._slots: trio.Semaphore | None = None

    def current(self, size: int) -> trio.Semaphore | None:
        if size != self._size:
            self._size, self._slots = size, (trio.Semaphore(size) if size > 0 else None)
        return self._slots


async def prefill(
    engine: SimEngine,
    slots: trio.Semaphore | None,
    tokens: list[str],
    prompt_tokens: int,
    request_id: str,
    on_change: Callable[[], None] | None = None,
    held: int = 0,
) -> int:
    """Wait for a prefill slot in arrival order (trio's semaphores are FIFO), then look the prompt
    up in the cache and spend its time to first token; returns the cached tokens. What the
    request found and waited for is recorded in `engine.prefills` (a prefill cancelled by its
    client's leaving is not). `on_change`: the load changed (it started waiting, or its prompt
    entered the cache), for the gRPC shell's KV events. `held`: the KV tokens its running slot
    counts (`running_slot`), not in use while it waits for a prefill slot."""
    arrival, wall = trio.current_time(), time.time()
    guess = prompt_tokens - engine.cache.peek(tokens)  # its prefill work, as the queue sees it now
    queued = (engine.prefill_waiting, engine.prefill_queued_tokens)
    engine.prefill_queued_tokens += guess
    try:
        if slots is not None:
            try:
                slots.acquire_nowait()  # a free slot: no wait counted (a release hands a slot to the first waiter)
            except trio.WouldBlock:
                engine.prefill_waiting += 1
                engine.prefill_waiting_tokens += held
                if on_change is not None:
                    on_change()
                try:
                    await slots.acquire()
                finally:
                    engine.prefill_waiting -= 1
                    engine.prefill_waiting_tokens -= held
        try:
            started = trio.current_time()
            cached = engine.cache.admit(tokens)
            if on_change is not None:
                on_change()
            delay = engine.ttft_secs(prompt_tokens - cached)
            if delay > 0:
                await trio.sleep(delay)
        finally:
            if slots is not None:
                slots.release()
    finally:
        engine.prefill_queued_tokens -= guess
    engine.record_prefill(wall, request_id, queued, prompt_tokens - cached, started - arrival, delay)
    return cached
