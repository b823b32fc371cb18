"""Work that outlives its request: background responses, in a nursery the node owns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio


@dataclass
class _Running:
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


@dataclass
class Background:
    """Background responses in flight on this node, each cancellable, at most `limit` at once."""

    limit: int
    nursery: trio.Nursery | None = None
    running: dict[str, _Running] = field(default_factory=dict)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def start(self, key: str, work: Callable[[trio.CancelScope], Awaitable[None]]) -> None:
        """Run `work(scope)` in the node's nursery; `cancel(key)` cancels `scope`."""
        assert self.nursery is not None, "background work before the node started"
        running = self.running[key] = _Running()

        async def run() -> None:
            try:
                await work(running.scope)
            finally:
                del self.running[key]
                running.done.set()

        self.nursery.start_soon(run)

    async def cancel(self, key: str) -> bool:
        """Cancel `key` and wait until its work has finished; False when it is not running here."""
        running = self.running.get(key)
        if running is None:
            return False
        running.scope.cancel()
        await running.done.wait()
        return True
