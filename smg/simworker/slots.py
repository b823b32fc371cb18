"""A simulated engine's running slots, shared by its HTTP and gRPC shells: a request waits for
one of `--max-running` slots (counted as waiting meanwhile), then holds it and its KV tokens
(counted as running), as the load reports both shells serve describe."""

from __future__ import annotations

from collections.abc import AsyncIterator
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
