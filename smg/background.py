"""Work that outlives its request: background responses, in a nursery the node owns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from smg.observability import tracing


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

    def claim(self, key: str) -> bool:
        """Take one of the `limit` slots for `key`, or False when all are taken. Nothing awaits
        between the count and the taking, so concurrent requests cannot both get the last one;
        the slot is `key`'s until its work ends (or `release`, if it never starts)."""
        if len(self.running) >= self.limit or key in self.running:
            return False
        self.running[key] = _Running()
        return True

    def release(self, key: str) -> None:
        """Give back a slot whose work will not start."""
        running = self.running.pop(key, None)
        if running is not None:
            running.done.set()

    def start(self, key: str, work: Callable[[trio.CancelScope], Awaitable[None]]) -> None:
        """Run `work(scope)` in the node's nursery, in the slot `claim(key)` took; `cancel(key)`
        cancels `scope` (even before the work begins)."""
        assert self.nursery is not None, "background work before the node started"
        running = self.running[key]

        async def run() -> None:
            try:
                with tracing.detached():
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
