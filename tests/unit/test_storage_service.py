"""The storage service's trio side: group commit, errors and timeouts, readiness."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from smg.storage.base import StorageError
from smg.storage.memory import MemoryHistory
from smg.storage.records import StoredResponse
from smg.storage.service import History


class SlowBackend(MemoryHistory):
    """A memory store that blocks like a database: every group write takes a while."""

    blocking = True
    pool_size = 4

    def __init__(self, delay: float = 0.02, fail: bool = False) -> None:
        super().__init__(time.time)
        self.delay, self.fail = delay, fail
        self.groups: list[int] = []
        self.lock = threading.Lock()

    def put_responses(self, responses: list[StoredResponse]) -> None:
        time.sleep(self.delay)
        if self.fail:
            raise StorageError("disk full")
        with self.lock:
            self.groups.append(len(responses))
        super().put_responses(responses)


def record(n: int) -> StoredResponse:
    return StoredResponse(f"resp_{n}", "t", 0, {"n": n})


@asynccontextmanager
async def started(backend: SlowBackend, timeout: float = 5.0) -> AsyncIterator[History]:
    """The service with its maintenance task (migration, then group commits) running."""
    history = History(backend, timeout)
    async with trio.open_nursery() as nursery:
        await nursery.start(history.maintain)
        with trio.fail_after(5):
            while not history.ready:
                await trio.sleep(0.001)
        yield history
        nursery.cancel_scope.cancel()


async def test_concurrent_saves_commit_in_groups_and_each_waits_for_its_own() -> None:
    backend = SlowBackend()
    async with started(backend) as history, trio.open_nursery() as nursery:
        for n in range(40):
            nursery.start_soon(history.save_response, record(n))
    assert sum(backend.groups) == 40 and len(backend.groups) < 10  # the first alone, then the rest together
    assert all(backend.get_response("t", f"resp_{n}") is not None for n in range(40))


async def test_a_failed_group_fails_every_caller_in_it() -> None:
    failures = []
    async with started(SlowBackend(fail=True)) as history:

        async def save(n: int) -> None:
            try:
                await history.save_response(record(n))
            except StorageError as exc:
                failures.append(str(exc))

        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(save, n)
    assert failures == ["disk full"] * 5


async def test_a_caller_that_leaves_does_not_strand_the_others() -> None:
    backend = SlowBackend(delay=0.05)

    async def leaves_early() -> None:
        with trio.move_on_after(0.01):  # its client goes away while its group is being written
            await history.save_response(record(0))

    async with started(backend) as history:
        with trio.fail_after(5):  # a stranded save would wait forever
            async with trio.open_nursery() as nursery:
                nursery.start_soon(leaves_early)
                await trio.sleep(0.001)
                for n in range(1, 6):  # these queue behind the group being written
                    nursery.start_soon(history.save_response, record(n))
    assert all(backend.get_response("t", f"resp_{n}") is not None for n in range(6))


async def test_a_call_past_the_timeout_is_abandoned_with_storage_error() -> None:
    async with started(SlowBackend(delay=0.5), timeout=0.05) as history:
        with pytest.raises(StorageError, match=r"did not answer within 0\.05s"):
            await history.save_response(record(1))


async def test_calls_before_the_store_is_ready_fail_fast() -> None:
    history = History(SlowBackend(), 5.0)
    with pytest.raises(StorageError, match="not ready"):
        await history.run(history.backend.get_response, "t", "resp_1")
