"""Work that outlives its request: background responses, in a nursery the node owns."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio


@dataclass
class Background:
    """Background responses in flight on this node, each cancellable, at most `limit` at once."""

    limit: int
    nursery: trio.Nursery | None = None
    running: dict[str, trio.CancelScope] = field(default_factory=dict)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            task_status.started()
            await trio.sleep_forever()
