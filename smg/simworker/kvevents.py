"""The simulated engine's KV-event publisher (sans-IO): what SubscribeKvEvents streams.

An engine with a prefix cache publishes what it stores and evicts as numbered batches, so a
gateway can index which worker holds which prefix from the engine's own account rather than
from its routing decisions (the reference's `--kv-index`). This is that publisher for the
simulated worker's cache model (`smg.simworker.kvcache`), in the shapes of `smg-grpc-proto`'s
`KvEventBatch`, kept free of gRPC and of the clock (the shell passes the time):

- `publish` numbers the events of one engine step as a batch (sequences start at 1);
- `since(cursor)` answers a subscriber's resume point from a bounded history, or None when the
  history no longer reaches back to it;
- `snapshot` is the resync a subscriber gets instead (start 0, or a cursor too old): one chunk
  with a "cleared" event then every live block, parents before children, numbered with the
  sequence the state was taken at, so live batches follow with no gap and no duplicate.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from smg.simworker.kvcache import KvCleared, KvEvent, KvStored, PrefixKVCache

HISTORY_BATCHES = 1024


@dataclass(frozen=True, slots=True)
class KvBatch:
    sequence: int
    timestamp: float  # seconds since the epoch, as engines stamp their batches
    events: tuple[KvEvent, ...] = ()
    snapshot_blocks: int | None = None  # set on a snapshot chunk (one chunk: index 0 of 1)
    load_only: bool = False  # a load record between batches: repeats the last sequence sent


class KvEventLog:
    def __init__(self, history: int = HISTORY_BATCHES) -> None:
        self.sequence = 0  # the last batch's number (0: none yet)
        self._history: deque[KvBatch] = deque(maxlen=history)

    def publish(self, events: list[KvEvent], now: float) -> KvBatch | None:
        """The step's events as the next batch (None when the step changed nothing)."""
        if not events:
            return None
        self.sequence += 1
        batch = KvBatch(self.sequence, now, tuple(events))
        self._history.append(batch)
        return batch

    def since(self, cursor: int) -> list[KvBatch] | None:
        """The batches after `cursor`; None when some of them are no longer kept, or the cursor
        is past the last batch (another life of the engine): the subscriber must resync."""
        if cursor == self.sequence:
            return []
        if cursor > self.sequence:
            return None
        history = self._history
        if not history or history[0].sequence > cursor + 1:
            return None
        return [batch for batch in history if batch.sequence > cursor]

    def snapshot(self, cache: PrefixKVCache, now: float) -> KvBatch:
        """The cache's state as of `self.sequence`, to resync a subscriber."""
        blocks = cache.live_blocks()
        events: list[KvEvent] = [KvCleared()]
        events += [KvStored(parent, ((block, tokens),)) for block, parent, tokens in blocks]
        return KvBatch(self.sequence, now, tuple(events), snapshot_blocks=len(blocks))
