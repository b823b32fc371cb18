"""Property tests of WindowedCounter and PrefixSummary."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from smg.crdt import PrefixSummary, Timestamp, WindowedCounter
from smg.hashing import chain_hashes

REPLICAS = ["a#1", "b#1", "c#1"]


def joined(*states):  # type: ignore[no-untyped-def]
    out = states[0].copy()
    for s in states[1:]:
        out.merge(s)
    return out


def assert_join_laws(a, b, c) -> None:  # type: ignore[no-untyped-def]
    assert joined(a, b).state_digest() == joined(b, a).state_digest()
    assert joined(joined(a, b), c).state_digest() == joined(a, joined(b, c)).state_digest()
    assert joined(a, a).state_digest() == a.state_digest()


def deliver_shuffled(empty, deltas: list, states: list, rng: random.Random):  # type: ignore[no-untyped-def]
    """Deltas in random order with drops and duplicates, then full-state anti-entropy."""
    replica = empty
    batch = [d for d in deltas if rng.random() > 0.2] * 2
    rng.shuffle(batch)
    for delta in batch:
        replica.merge(delta)
    for state in states:
        replica.merge(state)
    return replica


# -- windowed counter -------------------------------------------------------------

incs = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1), st.integers(0, 3), st.integers(0, 4)), max_size=30)


def run_windowed(ops: list) -> tuple[list[WindowedCounter], list[WindowedCounter]]:
    states = [WindowedCounter() for _ in REPLICAS]
    deltas = [states[r].increment(f"t{k}", REPLICAS[r], epoch, n) for r, k, epoch, n in ops]
    return states, deltas


@given(incs, incs, incs)
def test_windowed_counter_join_laws(x: list, y: list, z: list) -> None:
    assert_join_laws(*(joined(*run_windowed(ops)[0]) for ops in (x, y, z)))


@given(incs, st.randoms(use_true_random=False))
def test_windowed_counter_converges_and_sums_increments(ops: list, rng: random.Random) -> None:
    states, deltas = run_windowed(ops)
    replicas = [deliver_shuffled(WindowedCounter(), deltas, states, rng) for _ in range(3)]
    assert len({r.state_digest() for r in replicas}) == 1
    newest = max((e for _, _, e, n in ops if n), default=-1)
    for key in ("t0", "t1"):
        for epoch in (newest - 1, newest):  # the newest window anywhere and the one before are kept
            expected = sum(n for _, k, e, n in ops if f"t{k}" == key and e == epoch)
            assert replicas[0].total(key, epoch) == expected
        assert all(e >= newest - 1 for e in replicas[0].keys.get(key, {}))


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 5)), max_size=40), st.randoms(use_true_random=False))
def test_windowed_read_is_monotone_within_a_window(incs_: list, rng: random.Random) -> None:
    states = [WindowedCounter() for _ in REPLICAS]
    deltas = [states[r].increment("tenant", REPLICAS[r], 7, n) for r, n in incs_]
    rng.shuffle(deltas)
    reader, last = WindowedCounter(), 0.0
    for delta in deltas + deltas:
        reader.merge(delta)
        now = reader.read("tenant", 7)
        assert now >= last
        last = now
    assert last == sum(n for _, n in incs_)


def test_windowed_sliding_estimate_and_pruning() -> None:
    w = WindowedCounter()
    w.increment("t", "a#1", 10, 40)
    w.increment("t", "a#1", 11, 10)
    assert w.read("t", 11, elapsed_fraction=0.25) == 10 + 40 * 0.75
    w.increment("t", "b#1", 12, 1)  # a third window: the oldest goes
    assert w.total("t", 10) == 0 and w.total("t", 11) == 10
    w.increment("other", "a#1", 14, 1)  # a newer window anywhere: "t", idle since 12, is dropped
    assert set(w.keys) == {"other"}
    peer = WindowedCounter({"t": {12: {"b#1": 5}}})
    peer.merge(w)
    assert peer.state_digest() == w.state_digest()  # the drop follows from the merged state alone
    assert w.increment("late", "a#1", 12, 3).keys == {}  # a window everybody has moved past


# -- OR map / set -------------------------------------------------------------------

# -- prefix summary -------------------------------------------------------------------

summary_ops = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 1), st.integers(0, 3), st.integers(1, 6), st.integers(0, 3000)), max_size=25
)


def run_summary(ops: list, history: str = "", budget: int = 12) -> tuple[list[PrefixSummary], list[PrefixSummary]]:
    states = [PrefixSummary(budget=budget, ttl_ms=2000) for _ in REPLICAS]
    deltas = []
    for step, (r, w, prefix, blocks, wall) in enumerate(ops):
        chain = chain_hashes(f"p{prefix}b{i}".encode() for i in range(blocks))
        deltas.append(states[r].record("m", f"w{w}", chain, Timestamp(wall, step, REPLICAS[r] + history)))
    return states, deltas


@given(summary_ops, summary_ops, summary_ops)
def test_prefix_summary_join_laws(x: list, y: list, z: list) -> None:
    assert_join_laws(*(joined(*run_summary(ops, h)[0]) for ops, h in ((x, "x"), (y, "y"), (z, "z"))))


@given(summary_ops, st.randoms(use_true_random=False))
def test_prefix_summary_converges_within_budget(ops: list, rng: random.Random) -> None:
    states, deltas = run_summary(ops)
    reference = joined(*states)
    replicas = [deliver_shuffled(PrefixSummary(budget=12, ttl_ms=2000), deltas, states, rng) for _ in range(3)]
    assert {r.state_digest() for r in replicas} == {reference.state_digest()}
    assert all(len(r) <= 12 for r in replicas)


@given(summary_ops, st.randoms(use_true_random=False))
def test_prefix_summary_match_agrees_with_its_entries(ops: list, rng: random.Random) -> None:
    states, deltas = run_summary(ops, budget=8)
    replica = deliver_shuffled(PrefixSummary(budget=8, ttl_ms=2000), deltas, states, rng)
    for prefix in range(4):
        chain = chain_hashes(f"p{prefix}b{i}".encode() for i in range(6))
        brute: dict[str, int] = {}
        for i, h in enumerate(chain):
            for worker, block in replica.models.get("m", {}):
                if block == h:
                    brute[worker] = i + 1
        assert replica.match("m", chain) == brute
    footprint: dict[str, int] = {}
    for worker, _ in replica.models.get("m", {}):
        footprint[worker] = footprint.get(worker, 0) + 1
    assert replica.footprint("m") == footprint


def test_prefix_summary_match_ttl_and_eviction_order() -> None:
    s = PrefixSummary(budget=3, ttl_ms=1000)
    chain = chain_hashes([b"a", b"b", b"c"])
    s.record("m", "w1", chain, Timestamp(100, 0, "r"))
    s.record("m", "w2", chain[:1], Timestamp(200, 0, "r"))
    assert len(s) == 3  # budget 3: the oldest entry (of w1; ties by hash) made room
    evicted = min(chain)
    assert ("w1", evicted) not in s.models["m"] and ("w2", chain[0]) in s.models["m"]
    s = PrefixSummary(budget=10, ttl_ms=1000)
    s.record("m", "w1", chain, Timestamp(100, 0, "r"))
    s.record("m", "w2", chain[:2], Timestamp(200, 0, "r"))
    assert s.match("m", chain) == {"w1": 3, "w2": 2}
    s.record("m", "w3", chain[:1], Timestamp(1200, 0, "r"))  # w1's entries are now 1100 ms old
    assert s.match("m", chain) == {"w2": 2, "w3": 1}
