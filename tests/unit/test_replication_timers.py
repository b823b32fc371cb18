"""Replication's timers, stepped by hand: the core takes `now`, so no clock and no sleeps.

`tests/unit/test_cluster_replication.py` checks that messages converge a
cluster; these pin down when each message goes out: the resend pacing of an
unacknowledged delta-interval, the idle sync, the one interval in flight per
peer and store that an ack releases, and the full state a differing digest
sends at once.
"""

from __future__ import annotations

from typing import Any

import msgpack

from smg.cluster.replication import ACK, DELTA, Outgoing, Replication
from smg.crdt import HybridClock, LWWMap
from smg.crdt.codec import decode

MS = 1_700_000_000_000  # a plausible wall clock, in ms
STORE = "workers"


def ms(now: float) -> int:
    return MS + int(now * 1000)


def node(name: str, **options: Any) -> Replication:
    replication = Replication(name, HybridClock(f"{name}#1"), **options)
    replication.add_store(STORE, LWWMap())
    return replication


def write(at: Replication, key: str, value: object, now: float) -> None:
    at.changed(STORE, at.state(STORE).set(key, value, at.stamp(ms(now))))


def body(message: Outgoing) -> dict[str, Any]:
    decoded = msgpack.unpackb(message.payload, raw=False)
    assert isinstance(decoded, dict)
    return decoded


def keys_in(message: Outgoing) -> set[str]:
    """The keys a delta-interval carries."""
    delta = decode(body(message)["d"])
    assert isinstance(delta, LWWMap)
    return set(delta.entries)


def deliver(source: Replication, target: Replication, messages: list[Outgoing], now: float) -> list[Outgoing]:
    """`target` merges `source`'s messages; returns its acks, not yet delivered."""
    members = [source.node, target.node]
    acks: list[Outgoing] = []
    for message in messages:
        assert message.peer == target.node and message.channel == DELTA
        acks += target.receive(source.node, message.channel, message.payload, members, ms(now))
    return acks


def acknowledge(source: Replication, target: Replication, acks: list[Outgoing], now: float) -> None:
    """`target`'s acks (from `deliver`) reach `source`."""
    for ack in acks:
        assert ack.peer == source.node and ack.channel == ACK
        assert source.receive(target.node, ack.channel, ack.payload, [source.node, target.node], ms(now)) == []


def exchange(source: Replication, target: Replication, messages: list[Outgoing], now: float) -> None:
    acknowledge(source, target, deliver(source, target, messages, now), now)


def handshake(source: Replication, *targets: Replication, now: float = 0.0) -> None:
    """The first full state (empty) goes to each target and is acknowledged: deltas follow from here."""
    for target in targets:
        first = source.outgoing([target.node], now, ms(now))
        assert [body(m)["n"] for m in first] == [1]  # a new peer gets the full state
        exchange(source, target, first, now)


def test_an_unacknowledged_interval_is_sent_again_each_resend_after_grown_by_what_changed() -> None:
    a, b = node("a", resend_after=1.0, sync_interval=100.0), node("b")
    handshake(a, b)
    write(a, "w1", 1, 10.0)
    first = a.outgoing(["b"], 10.0, ms(10.0))  # lost
    assert len(first) == 1 and keys_in(first[0]) == {"w1"} and body(first[0])["q"] == a.sequence(STORE) == 1
    write(a, "w2", 2, 10.5)
    for now in (10.0, 10.5, 10.999):
        assert a.outgoing(["b"], now, ms(now)) == []  # in flight: the change waits
    again = a.outgoing(["b"], 11.0, ms(11.0))  # resend_after since the send: again, grown
    assert len(again) == 1 and keys_in(again[0]) == {"w1", "w2"} and body(again[0])["q"] == a.sequence(STORE) == 2
    assert a.outgoing(["b"], 11.999, ms(11.999)) == []  # paced from the resend, not from the first send
    third = a.outgoing(["b"], 12.0, ms(12.0))
    assert len(third) == 1 and keys_in(third[0]) == {"w1", "w2"}
    # lagging counts from the first unacknowledged send: resends do not hide a silent peer
    assert a.lagging(["b"], 12.0, bound=1.5) == ["workers/b"]
    assert a.lagging(["b"], 12.0, bound=2.5) == []
    exchange(a, b, third, 12.0)
    assert set(b.state(STORE).entries) == {"w1", "w2"}
    assert a.lagging(["b"], 12.0, bound=1.5) == [] and a.confirmed(STORE, ["b"]) == 2
    assert a.outgoing(["b"], 13.0, ms(13.0)) == []  # acknowledged and nothing new: no resend


def test_an_up_to_date_peer_gets_a_sync_each_sync_interval_after_the_last_send() -> None:
    a, b = node("a", resend_after=1.0, sync_interval=5.0), node("b")
    handshake(a, b, now=0.0)
    assert a.outgoing(["b"], 4.999, ms(4.999)) == []
    sync = a.outgoing(["b"], 5.0, ms(5.0))  # lost
    assert len(sync) == 1
    assert body(sync[0])["n"] == 0 and "d" not in body(sync[0]) and body(sync[0])["q"] == a.sequence(STORE) == 0
    # an unacknowledged sync is not resent at resend_after (it carries no data): the next sync is
    assert a.outgoing(["b"], 6.0, ms(6.0)) == []
    assert a.outgoing(["b"], 9.999, ms(9.999)) == []
    assert a.lagging(["b"], 9.999, bound=4.0) == ["workers/b"]  # but the silence shows
    sync = a.outgoing(["b"], 10.0, ms(10.0))
    assert len(sync) == 1 and body(sync[0])["n"] == 0
    exchange(a, b, sync, 10.0)
    assert a.lagging(["b"], 10.0, bound=0.0) == []
    # a delta sent meanwhile counts as the sync: the next is due sync_interval after it
    write(a, "w1", 1, 12.0)
    delta = a.outgoing(["b"], 12.0, ms(12.0))
    assert len(delta) == 1 and keys_in(delta[0]) == {"w1"}
    exchange(a, b, delta, 12.0)
    assert a.outgoing(["b"], 15.0, ms(15.0)) == []  # 5 s after the last sync, but 3 s after the delta
    assert a.outgoing(["b"], 16.999, ms(16.999)) == []
    sync = a.outgoing(["b"], 17.0, ms(17.0))
    assert len(sync) == 1 and body(sync[0])["n"] == 0 and body(sync[0])["q"] == a.sequence(STORE) == 1


def test_an_ack_releases_the_interval_in_flight_and_confirmed_follows_the_slowest_peer() -> None:
    a, b, c = node("a", resend_after=1.0, sync_interval=100.0), node("b"), node("c")
    handshake(a, b, c)
    assert a.sequence(STORE) == 0 and a.confirmed(STORE, ["b", "c"]) == 0
    write(a, "w0", 0, 1.0)
    first = a.outgoing(["b", "c"], 1.0, ms(1.0))
    assert [m.peer for m in first] == ["b", "c"] and all(keys_in(m) == {"w0"} for m in first)
    for i in range(1, 5):  # a burst behind the interval in flight
        write(a, f"w{i}", i, 1.0 + i / 10)
        assert a.outgoing(["b", "c"], 1.0 + i / 10, ms(1.0 + i / 10)) == []
    assert a.sequence(STORE) == 5
    to_b, to_c = first
    acks = deliver(a, b, [to_b], 1.5)
    assert a.confirmed(STORE, ["b"]) == 0  # merged there, but not known here until the ack
    acknowledge(a, b, acks, 1.5)
    assert a.confirmed(STORE, ["b"]) == 1 and a.confirmed(STORE, ["b", "c"]) == 0  # c holds it back
    assert a.confirmed(STORE, []) == a.confirmed(STORE, ["a"]) == 5  # no peers: our own position
    # the ack frees b's slot at once (no wait for resend_after): the rest, joined, after what b acknowledged
    flushed = a.outgoing(["b", "c"], 1.5, ms(1.5))
    assert [m.peer for m in flushed] == ["b"]
    assert keys_in(flushed[0]) == {"w1", "w2", "w3", "w4"} and body(flushed[0])["q"] == 5
    exchange(a, b, flushed, 1.6)
    assert a.confirmed(STORE, ["b"]) == 5 and a.confirmed(STORE, ["b", "c"]) == 0
    # c's first interval was slow: the resend covers everything, and the late ack of the first
    # one does not release the resend's slot (only an ack of what was sent last does)
    resent = a.outgoing(["b", "c"], 2.0, ms(2.0))
    assert [m.peer for m in resent] == ["c"] and body(resent[0])["q"] == 5
    exchange(a, c, [to_c], 2.1)
    assert a.confirmed(STORE, ["c"]) == 1
    write(a, "w5", 5, 2.1)
    assert a.outgoing(["c"], 2.1, ms(2.1)) == []  # the resend is still in flight
    exchange(a, c, resent, 2.2)
    assert a.confirmed(STORE, ["b", "c"]) == 5
    flushed = a.outgoing(["b", "c"], 2.2, ms(2.2))
    assert [m.peer for m in flushed] == ["b", "c"] and all(keys_in(m) == {"w5"} for m in flushed)


def test_a_differing_digest_sends_the_full_state_at_once_in_chunks() -> None:
    a, b = node("a", resend_after=1.0, sync_interval=100.0, chunk_bytes=64), node("b")
    handshake(a, b)
    for i in range(8):
        write(a, f"w{i}", "x" * 20, 1.0)
    exchange(a, b, a.outgoing(["b"], 1.0, ms(1.0)), 1.0)
    assert a.digests() == b.digests()
    assert a.compare("b", b.digests()) == []  # equal digests: nothing changes
    assert a.outgoing(["b"], 1.1, ms(1.1)) == []
    write(a, "late", 1, 2.0)
    in_flight = a.outgoing(["b"], 2.0, ms(2.0))
    assert len(in_flight) == 1 and keys_in(in_flight[0]) == {"late"}
    a.state(STORE).set("sneaked", 1, a.stamp(ms(2.0)))  # not logged: only a digest shows it
    assert a.outgoing(["b"], 2.1, ms(2.1)) == []  # the interval is in flight
    assert a.compare("b", b.digests()) == [STORE]
    # at once, although an interval is in flight and no resend or sync is due
    full = a.outgoing(["b"], 2.1, ms(2.1))
    assert len(full) > 1 and all(m.channel == DELTA and "d" not in body(m) for m in full)
    assert [body(m)["i"] for m in full] == list(range(len(full)))
    assert {body(m)["n"] for m in full} == {len(full)} and {body(m)["q"] for m in full} == {a.sequence(STORE)}
    assert deliver(a, b, full[:-1], 2.2) == []  # a partial full state is not acknowledged
    assert a.outgoing(["b"], 2.2, ms(2.2)) == []  # and the full state is now what is in flight
    acks = deliver(a, b, full[-1:], 2.2)
    assert len(acks) == 1 and b.digests() == a.digests() and "sneaked" in b.state(STORE)
    acknowledge(a, b, acks, 2.2)
    assert a.confirmed(STORE, ["b"]) == a.sequence(STORE) and a.lagging(["b"], 10.0, bound=0.0) == []
    assert a.outgoing(["b"], 3.5, ms(3.5)) == []  # up to date: nothing until the sync interval


def test_a_soft_store_is_compared_only_once_settled_on_both_sides() -> None:
    def soft_node(name: str) -> Replication:
        replication = node(name, sync_interval=100.0)
        replication.add_store("load", LWWMap(), soft=True)
        return replication

    a, b = soft_node("a"), soft_node("b")

    def hint(at: Replication, key: str, now: float) -> None:
        at.changed("load", at.state("load").set(key, 1, at.stamp(ms(now))))
        at.outgoing([], now, ms(now))  # the shell's flush dates the change (its deltas go out now)

    hint(a, "w|a", 1.0)  # neither has the other's hint yet: their deltas are in flight
    hint(b, "w|b", 1.0)
    # a digest mismatch explained by deltas in flight: neither side offers or compares the soft store
    assert set(b.digests(at=2.0)) == {STORE} and set(a.digests(at=2.0)) == {STORE}
    assert a.compare("b", b.digests(at=2.0), 2.0) == []
    # a is busy itself: even offered the store (as an older node offers every store), it waits
    assert a.compare("b", {**b.digests(), "load": b.digests()["load"]}, 2.0) == []
    # settled (nothing changed for SETTLE_SECS): a real difference gets the full state, as before
    settled = 1.0 + a.settle_secs
    assert set(b.digests(at=settled)) == {STORE, "load"}
    assert a.compare("b", b.digests(at=settled), settled) == ["load"]
    # a store that is not soft is compared busy or not, even missing from the peer's digests
    write(a, "w9", 1, settled)
    assert a.compare("b", {}, settled) == [STORE]


def test_a_soft_store_busy_for_ever_is_still_compared_every_max_skip_secs() -> None:
    """A member that cannot hear a writer (a partial partition) still gets its hints, however
    busy the store: anti-entropy skips a soft store with a peer for `max_skip_secs` at most."""
    a = node("a", max_skip_secs=300.0)
    a.add_store("prefixes", LWWMap(), soft=True)
    busy = {"prefixes": "digest of a store that never settles", STORE: a.digests()[STORE]}

    def touch(now: float) -> None:
        a.changed("prefixes", a.state("prefixes").set(f"k{now}", 1, a.stamp(ms(now))))
        a.outgoing([], now, ms(now))

    touch(0.0)
    assert a.compare("b", busy, 0.0) == []  # the first push-pull with b starts its clock
    for now in (30.0, 120.0, 299.0):
        touch(now)
        assert a.compare("b", busy, now) == []
    touch(300.0)
    assert a.compare("b", busy, 300.0) == ["prefixes"]  # overdue: compared, differs, full state
    touch(330.0)
    assert a.compare("b", busy, 330.0) == []  # and the clock starts again


def test_a_merged_delta_makes_a_soft_store_busy_too() -> None:
    a, b = node("a"), node("b")
    for replication in (a, b):
        replication.add_store("prefixes", LWWMap(), soft=True)
    b.changed("prefixes", b.state("prefixes").set("k", 1, b.stamp(ms(0.0))))
    full = b.outgoing(["a"], 0.0, ms(0.0))
    deliver(b, a, [m for m in full if body(m)["s"] == "prefixes"], 10.0)
    assert "prefixes" not in a.digests(at=10.0)  # it just changed here, by the merge
    assert "prefixes" in a.digests(at=10.0 + a.settle_secs)
