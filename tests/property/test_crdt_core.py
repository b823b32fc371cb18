"""Property tests of the HLC, LWW register/map (with tombstone GC) and counters."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smg.crdt import ClockDriftError, HybridClock, LWWMap, Timestamp, new_replica_id

REPLICAS = ["a#1", "b#1", "c#1"]
KEYS = ["k0", "k1", "k2", "k3"]

# (replica index, op, key index, value): op 0 = set, 1 = delete
ops_strategy = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1), st.integers(0, 3), st.integers(0, 5)), max_size=30)


def run_map_ops(ops: list[tuple[int, int, int, int]], history: str = "") -> tuple[list[LWWMap], list[LWWMap]]:
    """Each replica applies its own ops; returns the replicas' states and every delta, in order.

    Separate histories get distinct replica ids: one timestamp names one write.
    """
    states = [LWWMap() for _ in REPLICAS]
    deltas = []
    for step, (r, op, k, value) in enumerate(ops, start=1):
        ts = Timestamp(step, 0, REPLICAS[r] + history)
        delta = states[r].set(KEYS[k], value, ts) if op == 0 else states[r].delete(KEYS[k], ts)
        deltas.append(delta)
    return states, deltas


def merged(*maps: LWWMap) -> LWWMap:
    out = LWWMap()
    for m in maps:
        out.merge(m)
    return out


@given(ops_strategy, ops_strategy, ops_strategy)
def test_lww_map_merge_is_a_join(x: list, y: list, z: list) -> None:
    a, b, c = (merged(*run_map_ops(ops, history)[0]) for ops, history in ((x, "x"), (y, "y"), (z, "z")))
    ab, ba = a.copy(), b.copy()
    ab.merge(b)
    ba.merge(a)
    assert ab.state_digest() == ba.state_digest()  # commutative
    left, right = ab.copy(), b.copy()
    left.merge(c)
    right.merge(c)
    a_right = a.copy()
    a_right.merge(right)
    assert left.state_digest() == a_right.state_digest()  # associative
    again = ab.copy()
    again.merge(ab)
    assert again.state_digest() == ab.state_digest()  # idempotent


@given(ops_strategy, st.randoms(use_true_random=False))
def test_lww_map_deltas_in_any_order_with_duplicates_and_drops_converge(ops: list, rng: random.Random) -> None:
    states, deltas = run_map_ops(ops)
    reference = merged(*states)
    replicas = [LWWMap() for _ in REPLICAS]
    for replica in replicas:
        shuffled = [d for d in deltas if rng.random() > 0.2] * 2  # drops and duplicates
        rng.shuffle(shuffled)
        for delta in shuffled:
            replica.merge(delta)
    for replica in replicas:  # anti-entropy: full states
        for source in states:
            replica.merge(source)
    assert {r.state_digest() for r in replicas} == {reference.state_digest()}


@given(ops_strategy)
def test_lww_map_gc_never_resurrects(ops: list) -> None:
    states, deltas = run_map_ops(ops)
    everyone = merged(*states)
    stable = Timestamp(len(ops) + 1, 0, "")  # every member has merged every op
    for replica in states:
        replica.merge(everyone)
        replica.collect(stable)
    assert all(replica.tombstones == 0 for replica in states)
    deleted = {k for k in KEYS if k not in everyone and k in {key for key, _ in everyone.entries.items()}}
    for replica in states:
        for delta in deltas:  # stragglers arrive after the GC
            replica.merge(delta)
        for key in deleted:
            assert key not in replica
    assert len({r.state_digest() for r in states}) == 1


def test_lww_map_basics() -> None:
    m = LWWMap()
    m.set("x", 1, Timestamp(1, 0, "a"))
    m.set("x", 2, Timestamp(1, 0, "b"))  # same time: the replica id decides
    assert m.get("x") == 2
    m.delete("x", Timestamp(2, 0, "a"))
    assert "x" not in m and m.tombstones == 1
    m.set("x", 3, Timestamp(1, 5, "c"))  # older than the tombstone
    assert "x" not in m
    assert m.collect(Timestamp(2, 0, "a")) == 1
    m.merge(LWWMap({"x": m.set("y", 0, Timestamp(0, 1, "z")).entries["y"]._replace(value=9)}))
    assert "x" not in m  # at/below the floor: dropped
    m.set("x", 4, Timestamp(3, 0, "a"))
    assert m.get("x") == 4 and dict(m.items()) == {"x": 4}


def test_replica_ids_are_fresh_per_boot_and_refuse_the_separator() -> None:
    """A restarted node writes under a new id, so its counts from 0 are never outvoted by its old slot."""
    assert new_replica_id("node-a", epoch=1) != new_replica_id("node-a", epoch=2)
    assert new_replica_id("n") != new_replica_id("n")
    with pytest.raises(ValueError):
        new_replica_id("bad#name")


def test_hlc_orders_events_and_refuses_far_future_stamps() -> None:
    clock = HybridClock("a#1", max_drift_ms=1000)
    t1 = clock.now(100)
    t2 = clock.now(100)  # the wall clock did not move
    t3 = clock.now(50)  # it went backwards
    assert t1 < t2 < t3
    clock.observe(Timestamp(900, 7, "b#1"), physical_ms=200)
    t4 = clock.now(200)
    assert t4 > Timestamp(900, 7, "b#1")
    with pytest.raises(ClockDriftError):
        clock.observe(Timestamp(5000, 0, "evil#1"), physical_ms=200)
    assert clock.now(201).wall == 900  # the refused stamp was not adopted


@settings(max_examples=200)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3), st.integers(0, 2000), st.integers(0, 5)), max_size=50))
def test_hlc_is_monotone(events: list[tuple[bool, int, int, int]]) -> None:
    clock = HybridClock("a#1", max_drift_ms=10**9)
    last = Timestamp(0, 0, "")
    physical = 0
    for local, step, remote_wall, remote_logical in events:
        physical += step
        if local:
            stamp = clock.now(physical)
            assert stamp > last
            last = stamp
        else:
            clock.observe(Timestamp(remote_wall, remote_logical, "b#1"), physical)
            stamp = clock.now(physical)
            assert stamp > Timestamp(remote_wall, remote_logical, "b#1") and stamp > last
            last = stamp
