"""The process shell's runtime policy: the heap is settled once a server has started."""

from __future__ import annotations

import gc
import weakref

import pytest
import trio

from smg import cli


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_settle_heap_collects_the_garbage_then_freezes_what_is_left() -> None:
    gc.unfreeze()
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # a cycle only the collector frees
    garbage = weakref.ref(a)
    kept = _Node()
    del a, b
    try:
        cli.settle_heap()
        assert garbage() is None  # collected first: not frozen alive
        assert gc.get_freeze_count() > 0 and gc.is_tracked(kept)
        gc.collect()
        assert kept.other is None  # untouched (frozen objects stay usable)
    finally:
        gc.unfreeze()  # the rest of the test session collects as before


def test_the_heap_is_settled_after_start_up_and_the_result_passes_through(monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[str] = []
    monkeypatch.setattr(cli, "settle_heap", lambda: steps.append("settled"))
    release = trio.Event()

    async def serve(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        steps.append("starting")
        task_status.started()
        await release.wait()  # serving: settled meanwhile, not at the end
        steps.append("stopped")
        return 3

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_release_when_settled, steps, release)
            return int(await cli.settled_once_started(serve))

    assert trio.run(main) == 3
    assert steps == ["starting", "settled", "stopped"]


def test_a_server_that_fails_to_start_is_not_settled(monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[str] = []
    monkeypatch.setattr(cli, "settle_heap", lambda: steps.append("settled"))

    async def serve(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise OSError("port taken")

    with pytest.raises(ExceptionGroup) as failed:  # as every start-up failure reaches `cli.main`: grouped
        trio.run(cli.settled_once_started, serve)
    assert failed.group_contains(OSError, match="port taken")
    assert steps == []


async def _release_when_settled(steps: list[str], release: trio.Event) -> None:
    with trio.fail_after(5):
        while "settled" not in steps:
            await trio.sleep(0)
    release.set()
