"""The sans-IO replication of named CRDT stores between cluster members."""

from __future__ import annotations

import msgpack
import pytest

from smg.cluster.replication import ACK, DELTA, Replication, ReplicationError
from smg.crdt import HybridClock, LWWMap

MS = 1_000_000_000  # a plausible wall clock, in ms


class Cluster:
    """Members exchanging replication messages in memory; `down` members get nothing."""

    def __init__(self, names: list[str], **options: object) -> None:
        self.now = 0.0
        self.nodes = {n: self.boot(n, 1, **options) for n in names}
        self.down: set[str] = set()
        self.options = options

    def boot(self, name: str, epoch: int, **options: object) -> Replication:
        node = Replication(name, HybridClock(f"{name}#{epoch}"), **options)  # type: ignore[arg-type]
        node.add_store("workers", LWWMap())
        return node

    def restart(self, name: str) -> None:
        self.nodes[name] = self.boot(name, 2, **self.options)

    def set(self, name: str, key: str, value: object) -> None:
        node = self.nodes[name]
        node.changed("workers", node.state("workers").set(key, value, node.stamp(self.ms)))

    def delete(self, name: str, key: str) -> None:
        node = self.nodes[name]
        node.changed("workers", node.state("workers").delete(key, node.stamp(self.ms)))

    @property
    def ms(self) -> int:
        return MS + int(self.now * 1000)

    def round(self, seconds: float = 0.1) -> None:
        """Everyone sends what is due; deliver every message (and the acks) at once."""
        self.now += seconds
        members = list(self.nodes)
        queue = []
        for name, node in self.nodes.items():
            if name not in self.down:
                queue += [(name, *m) for m in node.outgoing([m for m in members if m not in self.down], self.now, self.ms)]
        while queue:
            source, peer, channel, payload = queue.pop(0)
            if peer in self.down:
                continue
            replies = self.nodes[peer].receive(source, channel, payload, members, self.ms)
            queue += [(peer, *r) for r in replies]

    def digests(self) -> set[str]:
        return {n.digests()["workers"] for name, n in self.nodes.items() if name not in self.down}


def test_changes_reach_every_member_and_deletes_win() -> None:
    c = Cluster(["a", "b", "c"])
    c.set("a", "w1", {"url": "http://w1"})
    c.set("b", "w2", {"url": "http://w2"})
    c.round()
    assert len(c.digests()) == 1 and len(c.nodes["c"].state("workers")) == 2
    c.delete("c", "w1")
    c.round()
    assert "w1" not in c.nodes["a"].state("workers") and len(c.digests()) == 1


def test_a_change_is_sent_once_per_peer_and_never_echoed_round_the_cluster() -> None:
    c = Cluster(["a", "b", "c"], sync_interval=1000.0)
    c.round()
    c.set("a", "w1", 1)
    sent = []
    for _ in range(10):
        c.now += 1.5
        for name, node in c.nodes.items():
            for peer, channel, payload in node.outgoing(list(c.nodes), c.now, c.ms):
                sent.append((name, peer, msgpack.unpackb(payload).get("d") is not None))
                for reply in c.nodes[peer].receive(name, channel, payload, list(c.nodes), c.ms):
                    node.receive(peer, reply[1], reply[2], list(c.nodes), c.ms)
    assert [(s, p) for s, p, delta in sent if delta] == [("a", "b"), ("a", "c")]
    assert len(c.digests()) == 1


def test_unacknowledged_messages_are_sent_again_and_idle_peers_sync() -> None:
    c = Cluster(["a", "b"], resend_after=1.0, sync_interval=5.0)
    c.round()
    c.set("a", "w1", 1)
    out = c.nodes["a"].outgoing(["b"], c.now, c.ms)  # lost
    assert [m[1] for m in out] == [DELTA]
    assert c.nodes["a"].outgoing(["b"], c.now + 0.5, c.ms) == []  # still in flight
    c.round(1.5)
    assert "w1" in c.nodes["b"].state("workers")
    assert c.nodes["a"].outgoing(["b"], c.now + 1, c.ms) == []  # acknowledged, nothing new
    assert len(c.nodes["a"].outgoing(["b"], c.now + 6, c.ms)) == 1  # a sync after the sync interval


def test_changes_made_while_an_interval_is_in_flight_wait_for_its_ack_and_go_out_joined() -> None:
    """One interval in flight per peer and store: a burst of changes behind a slow link costs one
    message per round trip, not a fresh ever-larger join per change queued behind it."""
    c = Cluster(["a", "b"], resend_after=1.0)
    c.round()
    c.set("a", "w0", 0)
    first = c.nodes["a"].outgoing(["b"], c.now, c.ms)
    assert [m[1] for m in first] == [DELTA]
    for i in range(1, 20):  # the ack is slow to come back
        c.set("a", f"w{i}", i)
        assert c.nodes["a"].outgoing(["b"], c.now + i * 0.01, c.ms) == []
    for peer, channel, payload in first:
        for reply in c.nodes[peer].receive("a", channel, payload, ["a", "b"], c.ms):
            c.nodes["a"].receive(peer, reply[1], reply[2], ["a", "b"], c.ms)
    joined = c.nodes["a"].outgoing(["b"], c.now + 0.3, c.ms)  # acknowledged: the rest, in one message
    assert [m[1] for m in joined] == [DELTA]
    assert len(msgpack.unpackb(joined[0][2])["d"]) < 2000
    c.nodes["b"].receive("a", DELTA, joined[0][2], ["a", "b"], c.ms)
    assert len(c.nodes["b"].state("workers")) == 20


def test_a_restarted_member_gets_the_full_state() -> None:
    c = Cluster(["a", "b", "c"])
    for i in range(5):
        c.set("a", f"w{i}", i)
    c.round()
    c.restart("c")
    for _ in range(3):
        c.round(1.1)
    assert len(c.nodes["c"].state("workers")) == 5 and len(c.digests()) == 1


def test_tombstones_are_collected_only_once_every_known_member_holds_them() -> None:
    c = Cluster(["a", "b", "c"], gc_grace_ms=0, sync_interval=1.0)
    c.set("a", "w1", 1)
    c.round()
    c.down.add("c")  # c is dead but not reaped: it still counts
    c.delete("a", "w1")
    for _ in range(5):
        c.round(1.1)
    members = list(c.nodes)
    assert c.nodes["a"].collect(members) == {"workers": 0}
    assert c.nodes["a"].state("workers").tombstones == 1
    c.down.clear()  # c is back and catches up
    for _ in range(5):
        c.round(1.1)
    assert all(n.state("workers").tombstones == 1 for n in c.nodes.values())
    assert c.nodes["a"].collect(members) == {"workers": 1}
    c.round(1.1)  # a's raised floor reaches b and c: they collect the same tombstones
    assert len(c.digests()) == 1 and all(n.state("workers").tombstones == 0 for n in c.nodes.values())
    # a straggler's old write of the deleted key does not come back
    stale = LWWMap()
    stale.set("w1", 1, c.nodes["a"].state("workers").floor._replace(wall=MS))
    c.nodes["b"].state("workers").merge(stale)
    assert "w1" not in c.nodes["b"].state("workers")


def test_anti_entropy_resyncs_differing_stores() -> None:
    c = Cluster(["a", "b"])
    c.round()
    c.nodes["a"].state("workers").set("sneaked", 1, c.nodes["a"].stamp(c.ms))  # not logged: only push-pull finds it
    c.round(1.1)
    assert "sneaked" not in c.nodes["b"].state("workers")
    assert c.nodes["a"].compare("b", c.nodes["b"].digests()) == ["workers"]
    c.round(1.1)
    assert len(c.digests()) == 1
    with pytest.raises(ReplicationError):
        c.nodes["a"].compare("b", ["not", "a", "map"])


def test_bad_messages_raise_replication_errors_and_change_nothing() -> None:
    c = Cluster(["a", "b"])
    c.set("a", "w1", 1)
    c.round()
    b = c.nodes["b"]
    before = b.digests()
    future = LWWMap()
    future.set("evil", 1, c.nodes["a"].stamp(c.ms + 3_600_000))  # an hour ahead: refused, never adopted
    forged = [
        (DELTA, b"\xc1garbage"),
        (DELTA, msgpack.packb([1, 2])),
        (DELTA, msgpack.packb({"s": "nope", "r": "a#1", "q": 1, "d": b""})),
        (DELTA, msgpack.packb({"s": "workers", "r": "a#1", "q": -4, "c": b"", "i": 0, "n": 1})),
        (DELTA, msgpack.packb({"s": "workers", "r": "a#1", "q": 9, "d": b"\x01\x02"})),
        (ACK, msgpack.packb({"s": "workers", "q": 1, "e": "b#1", "p": "a#1", "f": "x"})),
        ("crdt.other", msgpack.packb({"s": "workers"})),
    ]
    from smg.crdt.codec import encode

    forged.append((DELTA, msgpack.packb({"s": "workers", "r": "a#1", "q": 50, "d": encode(future)})))
    for channel, payload in forged:
        with pytest.raises(ReplicationError):
            b.receive("a", channel, payload, ["a", "b"], c.ms)
    assert b.digests() == before and b.clock.wall < c.ms + 60_000


def test_rendezvous_owners_agree_spread_and_move_only_when_needed() -> None:
    from collections import Counter

    from smg.cluster.ownership import owners

    members = [f"10.0.0.{i}:39527" for i in range(8)]
    workers = [f"{i:016x}" for i in range(400)]
    before = {w: owners(w, members, 2) for w in workers}
    assert all(owners(w, list(reversed(members)), 2) == before[w] for w in workers)  # order-free
    spread = Counter(o for pair in before.values() for o in pair)
    assert min(spread.values()) > 0.5 * 800 / 8  # no member gets far less than its share
    gone = members[3]
    after = {w: owners(w, [m for m in members if m != gone], 2) for w in workers}
    for w in workers:
        if gone not in before[w]:
            assert after[w] == before[w]  # only the dead member's workers move
        else:
            assert next(o for o in before[w] if o != gone) == after[w][0]
