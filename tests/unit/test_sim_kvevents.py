"""The simulated engine's KV events (sans-IO): what the cache model stores, evicts and clears,
numbered into batches with a bounded history and a snapshot for resync."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from smg.simworker.kvcache import KvCleared, KvRemoved, KvStored, PrefixKVCache
from smg.simworker.kvevents import KvEventLog


def tokens(n: int, start: int = 0) -> list[str]:
    return [str(i) for i in range(start, start + n)]


def test_stores_are_runs_of_new_blocks_with_their_parent_and_tokens() -> None:
    cache = PrefixKVCache(100, block_tokens=4, record_events=True)
    cache.admit(tokens(10))  # two full blocks
    (first,) = cache.drain_events()
    assert isinstance(first, KvStored) and first.parent is None
    assert [b for _, b in first.blocks] == [("0", "1", "2", "3"), ("4", "5", "6", "7")]
    cache.admit(tokens(13))  # the same two, then one new
    (second,) = cache.drain_events()
    assert isinstance(second, KvStored) and second.parent == first.blocks[1][0]
    assert [b for _, b in second.blocks] == [("8", "9", "10", "11")]
    cache.admit(tokens(8))  # nothing new: no event
    assert cache.drain_events() == []


def test_evictions_and_flush_are_events_and_nothing_is_recorded_unless_asked() -> None:
    cache = PrefixKVCache(2, block_tokens=2, record_events=True)
    cache.admit(tokens(4))
    cache.admit(tokens(2, start=100))
    events = cache.drain_events()
    assert isinstance(events[-1], KvRemoved) and len(events[-1].hashes) == 1
    cache.flush()
    assert cache.drain_events() == [KvCleared()]
    quiet = PrefixKVCache(2, block_tokens=2)
    quiet.admit(tokens(6))
    quiet.flush()
    assert quiet.drain_events() == []


def test_log_numbers_batches_resumes_from_a_cursor_and_asks_for_a_resync_when_behind() -> None:
    log = KvEventLog(history=3)
    assert log.publish([], 1.0) is None and log.sequence == 0
    assert log.since(0) == []
    for i in range(5):
        log.publish([KvCleared()], float(i))
    assert log.sequence == 5
    assert [b.sequence for b in log.since(2) or []] == [3, 4, 5]
    assert log.since(5) == []
    assert log.since(1) is None  # batch 2 is no longer kept
    assert log.since(9) is None  # a cursor from another life of the engine


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 12)), min_size=1, max_size=30), st.integers(2, 12))
def test_replaying_the_events_or_the_snapshot_gives_the_cache_contents(prompts: list[tuple[int, int]], capacity: int) -> None:
    """A subscriber applying every batch, and one applying only a snapshot taken at the end,
    both hold exactly the blocks the cache holds, and every block's parent came before it."""
    cache = PrefixKVCache(capacity, block_tokens=2, record_events=True)
    log = KvEventLog()
    held: set[bytes] = set()
    for prefix, length in prompts:
        cache.admit(tokens(length, start=prefix * 1000))
        batch = log.publish(cache.drain_events(), 0.0)
        for event in batch.events if batch else ():
            if isinstance(event, KvStored):
                held.update(h for h, _ in event.blocks)
            elif isinstance(event, KvRemoved):
                held.difference_update(event.hashes)
            else:
                held.clear()
    live = {h for h, _, _ in cache.live_blocks()}
    assert held == live and len(live) == len(cache)
    snapshot = log.snapshot(cache, 1.0)
    assert snapshot.sequence == log.sequence and snapshot.snapshot_blocks == len(live)
    assert isinstance(snapshot.events[0], KvCleared)
    seen: set[bytes] = set()
    for event in snapshot.events[1:]:
        assert isinstance(event, KvStored)
        if event.parent is not None and event.parent in live:
            assert event.parent in seen  # parents before children
        seen.update(h for h, _ in event.blocks)
    assert seen == live
