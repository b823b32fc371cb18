"""The delta replicator: intervals, acks, restarts, chunked full states, and a
20-replica simulation with partitions, loss, duplication and reordering."""

from __future__ import annotations

import random
from functools import partial

import pytest

from smg.crdt import LWWMap, PrefixSummary, Timestamp, WindowedCounter, new_replica_id
from smg.crdt.codec import CodecError
from smg.crdt.delta import DeltaMessage, DeltaReplicator
from smg.hashing import chain_hashes


def deliver(src: DeltaReplicator, dst: DeltaReplicator, src_name: str, dst_name: str) -> int:
    """Send everything src has for dst, and the ack back; returns messages sent."""
    messages = src.outgoing(dst_name)
    for message in messages:
        seq = dst.receive(src_name, message)
        if seq is not None:
            src.ack(dst_name, seq, message.sender, dst.replica)
    return len(messages)


def test_intervals_skip_what_the_peer_sent_and_acks_trim() -> None:
    a = DeltaReplicator(LWWMap(), "a#1")
    b = DeltaReplicator(LWWMap(), "b#1")
    assert a.outgoing("b")[0].is_full  # a new peer gets the full state first
    deliver(a, "b" and b, "a", "b")
    a.apply_local(a.state.set("x", 1, Timestamp(1, 0, "a#1")))
    out = a.outgoing("b")
    assert len(out) == 1 and not out[0].is_full and dict(out[0].delta.items()) == {"x": 1}
    deliver(a, b, "a", "b")
    assert a.outgoing("b") == []
    b.apply_local(b.state.set("y", 2, Timestamp(2, 0, "b#1")))
    deliver(b, a, "b", "a")
    assert a.outgoing("b") == []  # y came from b: not echoed back
    assert a.state.state_digest() == b.state.state_digest()


def test_lost_messages_are_covered_by_the_next_interval() -> None:
    a = DeltaReplicator(LWWMap(), "a#1")
    b = DeltaReplicator(LWWMap(), "b#1")
    deliver(a, b, "a", "b")
    for i in range(5):
        a.apply_local(a.state.set(f"k{i}", i, Timestamp(i + 1, 0, "a#1")))
        if i < 4:
            a.outgoing("b")  # sent and lost: no ack
    deliver(a, b, "a", "b")
    assert len(b.state) == 5


def test_restarts_and_peers_too_far_behind_get_full_state_in_chunks() -> None:
    a = DeltaReplicator(LWWMap(), "a#1", max_log=3, chunk_bytes=100)
    b = DeltaReplicator(LWWMap(), "b#1")
    deliver(a, b, "a", "b")
    for i in range(10):
        a.apply_local(a.state.set(f"key-{i}", "v" * 20, Timestamp(i + 1, 0, "a#1")))
    messages = a.outgoing("b")  # the log holds 3 of the 10 changes: full state
    assert len(messages) > 1 and all(m.is_full for m in messages)
    random.Random(1).shuffle(messages)
    for m in messages:
        seq = b.receive("a", m)
    a.ack("b", seq, "a#1", "b#1")
    assert b.state.state_digest() == a.state.state_digest()
    reborn = DeltaReplicator(LWWMap(), "b#2")  # b restarted: empty, new epoch
    deliver(reborn, a, "b", "a")
    full = a.outgoing("b")
    assert full and full[0].is_full
    for m in full:
        seq = reborn.receive("a", m)
    assert reborn.state.state_digest() == a.state.state_digest()
    a.ack("b", 999, "a#1", "b#2")  # an ack from the future (or a past life) changes nothing
    a.ack("b", 1, "a#0", "b#2")
    with pytest.raises(CodecError):
        reborn.receive("a", DeltaMessage("a#1", 50, chunk=b"\x01garbage", index=0, count=1))
    with pytest.raises(CodecError):
        reborn.receive("a", DeltaMessage("a#1", 51, chunk=b"", index=3, count=1))


@pytest.mark.parametrize("seed", range(2))
def test_twenty_replicas_converge_after_partitions_loss_and_reordering(seed: int) -> None:
    rng = random.Random(seed)
    names = [f"n{i}" for i in range(20)]
    kinds = [LWWMap, WindowedCounter, partial(PrefixSummary, budget=40, ttl_ms=10_000)]
    nodes = {n: [DeltaReplicator(kind(), new_replica_id(n, 1), max_log=64, chunk_bytes=512) for kind in kinds] for n in names}
    step = 0
    in_flight: list[tuple[float, str, str, int, DeltaMessage]] = []  # (deliver at, src, dst, store, message)

    def mutate(node: str) -> None:
        nonlocal step
        step += 1
        lww, win, prefixes = nodes[node]
        ts = Timestamp(step, 0, lww.replica)
        key = f"k{rng.randrange(30)}"
        lww.apply_local(lww.state.set(key, step, ts) if rng.random() < 0.8 else lww.state.delete(key, ts))
        win.apply_local(win.state.increment(f"t{rng.randrange(5)}", win.replica, step // 50, 1))
        blocks = [b"p%d" % rng.randrange(8) for _ in range(rng.randrange(1, 4))]
        prefixes.apply_local(prefixes.state.record(f"m{rng.randrange(2)}", f"w{rng.randrange(4)}", chain_hashes(blocks), ts))

    def gossip(now: float, partitioned: bool, loss: float) -> None:
        for src in names:
            for dst in rng.sample(names, 3):
                if dst == src or (partitioned and (names.index(src) < 7) != (names.index(dst) < 7)):
                    continue
                for store in range(len(kinds)):
                    for message in nodes[src][store].outgoing(dst):
                        copies = 0 if rng.random() < loss else (2 if rng.random() < 0.1 else 1)
                        for _ in range(copies):
                            in_flight.append((now + rng.random() * 3, src, dst, store, message))

    def deliver_due(now: float, loss: float) -> None:
        due = [m for m in in_flight if m[0] <= now]
        in_flight[:] = [m for m in in_flight if m[0] > now]
        rng.shuffle(due)
        for _, src, dst, store, message in due:
            seq = nodes[dst][store].receive(src, message)
            if seq is not None and rng.random() >= loss:
                nodes[src][store].ack(dst, seq, message.sender, nodes[dst][store].replica)

    for t in range(60):  # partitioned, lossy, with a restart
        for _ in range(5):
            mutate(rng.choice(names))
        if t == 30:
            nodes["n3"] = [DeltaReplicator(kind(), new_replica_id("n3", 2), max_log=64, chunk_bytes=512) for kind in kinds]
        gossip(t, partitioned=t < 40, loss=0.3)
        deliver_due(t, loss=0.3)
    for t in range(60, 200):  # healed and quiet: anti-entropy only
        gossip(t, partitioned=False, loss=0.0)
        deliver_due(t, loss=0.0)
        if t % 10 == 9 and all(len({nodes[n][s].state.state_digest() for n in names}) == 1 for s in range(len(kinds))):
            break
    for store in range(len(kinds)):
        digests = {nodes[n][store].state.state_digest() for n in names}
        assert len(digests) == 1, f"store {store} did not converge"
