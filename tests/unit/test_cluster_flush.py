"""The cluster node's flush task, on a mock clock: when a local change leaves for the peers.

A store's `send_delay` (the prefix summaries': the traffic's cadence, `TRAFFIC_SECS`) holds its
changes, so a gateway's routed requests wake its peers about once per period, not once per
request; every other store's change, and any earlier flush, goes at once and takes them along.
"""

from __future__ import annotations

from typing import Any

import trio
from trio.testing import wait_all_tasks_blocked

from smg.cluster.load_store import ReplicatedLoad
from smg.cluster.node import FLUSH_SECS, LOAD_SECS, ClusterNode
from smg.cluster.replication import DELTA, TRAFFIC_SECS, Outgoing, Replication
from smg.cluster.worker_store import wall_ms
from smg.crdt import HybridClock, LWWMap
from smg.workers.registry import Worker
from tests.unit.test_cluster_page_state import _cluster_node
from tests.unit.test_replication_timers import keys_in

MS = 1_700_000_000_000
Sent = list[tuple[str, str, bytes]]


def replica(name: str, **options: Any) -> Replication:
    replication = Replication(name, HybridClock(f"{name}#1"), sync_interval=100.0, **options)
    replication.add_store("workers", LWWMap())
    replication.add_store("prefixes", LWWMap(), send_delay=TRAFFIC_SECS)
    return replication


def deliver(node: ClusterNode, peer: Replication, sent: Sent) -> None:
    """What "a" sent reaches "b"; b's acks come back to the node."""
    for _, channel, payload in sent:
        for reply in peer.receive("a", channel, payload, ["a", "b"], wall_ms()):  # (a's flushes stamp with the wall clock)
            node._on_app_message("b", reply.channel, reply.payload)
    sent.clear()


def write(replication: Replication, store: str, key: str) -> None:
    replication.changed(store, replication.state(store).set(key, 1, replication.stamp(MS)))


def keys(sent: Sent) -> list[set[str]]:
    return [keys_in(Outgoing(*message)) for message in sent if message[1] == DELTA]


async def test_a_delayed_stores_change_leaves_after_its_send_delay(autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        node, sent, _ = await _started(nursery)
        assert node.replication is not None
        flushed_at: list[float] = []
        record = node.mesh.send_to
        node.mesh.send_to = lambda *message: flushed_at.append(trio.current_time()) or record(*message)  # type: ignore[method-assign]
        start = trio.current_time()
        write(node.replication, "prefixes", "l1")
        await trio.sleep(TRAFFIC_SECS / 2)
        write(node.replication, "prefixes", "l2")  # the earliest deadline holds: not pushed back
        await trio.sleep(TRAFFIC_SECS * 2)
        assert keys(sent) == [{"l1", "l2"}] and flushed_at == [start + TRAFFIC_SECS]
        nursery.cancel_scope.cancel()


async def test_any_earlier_flush_takes_a_delayed_change_along(autojump_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        node, sent, _ = await _started(nursery)
        assert node.replication is not None
        start = trio.current_time()
        write(node.replication, "prefixes", "l1")
        write(node.replication, "workers", "w1")  # flushed at once, with the held change
        await wait_all_tasks_blocked()
        assert sorted(keys(sent), key=sorted) == [{"l1"}, {"w1"}] and trio.current_time() == start
        nursery.cancel_scope.cancel()


async def test_an_ack_frees_a_delayed_stores_change_within_its_delay_not_at_once(autojump_clock: Any) -> None:
    """Behind an unacknowledged interval a change waits for the ack; the ack then flushes it as a
    change would be, within the store's delay: flushed at the ack, a gateway routing a request
    per round trip would wake its peers per request again."""
    async with trio.open_nursery() as nursery:
        node, sent, peer = await _started(nursery)
        assert node.replication is not None
        write(node.replication, "prefixes", "l1")
        await trio.sleep(TRAFFIC_SECS * 1.5)
        assert keys(sent) == [{"l1"}]
        in_flight = list(sent)
        sent.clear()
        write(node.replication, "prefixes", "l2")  # behind l1's interval
        await trio.sleep(TRAFFIC_SECS * 2)
        assert keys(sent) == []  # waits for the ack (the resend is 1 s away)
        acked = trio.current_time()
        deliver(node, peer, in_flight)
        await wait_all_tasks_blocked()
        assert keys(sent) == [] and trio.current_time() == acked  # not at the ack ...
        await trio.sleep(TRAFFIC_SECS * 1.5)
        assert keys(sent) == [{"l2"}]  # ... but within the delay after it
        nursery.cancel_scope.cancel()


async def _started(nursery: trio.Nursery) -> tuple[ClusterNode, Sent, Replication]:
    """Node "a" with its flush task running, past the first full states to a core peer "b" (returned)."""
    node, sent = _cluster_node()
    node.replication = replica("a")
    node.replication.on_change = node.changed
    node.live_peers = lambda: ["b"]  # type: ignore[method-assign]
    nursery.start_soon(node._flush)
    await wait_all_tasks_blocked()
    node.changed()  # the first full states, at once
    await wait_all_tasks_blocked()
    assert sent and trio.current_time() == 0
    peer = replica("b")
    deliver(node, peer, sent)
    await wait_all_tasks_blocked()  # (the acks' flush: nothing more to send)
    assert sent == []
    return node, sent, peer


async def _with_load(nursery: trio.Nursery) -> tuple[ClusterNode, Sent, Replication, Worker, list[float]]:
    """`_started`'s node with the load store, one worker, and past the store's first state: idle."""
    node, sent, peer = await _started(nursery)
    assert node.replication is not None
    node.load = ReplicatedLoad(node.ctx, node.replication, "a", lambda: ["a", "b"])
    peer.add_store("load", LWWMap())
    node.ctx.registry.on_in_flight = node._in_flight_moved
    worker = Worker.from_url("http://w1:1")
    node.ctx.registry.add(worker)
    flushed_at: list[float] = []
    record = node.mesh.send_to
    node.mesh.send_to = lambda *message: flushed_at.append(trio.current_time()) or record(*message)  # type: ignore[method-assign]
    await trio.sleep(FLUSH_SECS * 1.5)  # the new store's first (empty) state, at the next resend tick
    deliver(node, peer, sent)
    await trio.sleep(FLUSH_SECS * 3)
    assert sent == []  # idle: the resend wake-ups find nothing to send ...
    assert len(node.load.map) == 0  # ... and an idle worker needs no record (none reads as 0)
    flushed_at.clear()
    return node, sent, peer, worker, flushed_at


def move(node: ClusterNode, worker: Worker, by: int) -> None:
    """What the data plane does as a request starts (+1) or ends (-1) on a worker."""
    worker.in_flight += by
    node.ctx.registry.on_in_flight()


async def test_a_moved_in_flight_count_leaves_with_the_flush_due_within_the_load_delay(autojump_clock: Any) -> None:
    """No load timer: a request that starts (or ends) makes a flush due within LOAD_SECS, which
    carries the count as it is then, so a request over before its flush sends nothing."""
    async with trio.open_nursery() as nursery:
        node, sent, _, worker, flushed_at = await _with_load(nursery)
        assert node.load is not None
        start = trio.current_time()
        move(node, worker, +1)
        await trio.sleep(LOAD_SECS / 2)
        move(node, worker, +1)  # the earlier deadline holds
        await trio.sleep(LOAD_SECS)
        assert keys(sent) == [{f"{worker.id}|a"}] and flushed_at == [start + LOAD_SECS]
        assert node.load.map.get(f"{worker.id}|a") == 2
        sent.clear()

        move(node, worker, +1)  # a short request, over before its flush: nothing to say
        move(node, worker, -1)
        await trio.sleep(LOAD_SECS * 2)
        assert keys(sent) == []
        nursery.cancel_scope.cancel()


async def test_an_ack_frees_a_waiting_count_within_the_load_delay_not_at_once(autojump_clock: Any) -> None:
    """A count written while its store's last interval awaits an ack goes after the ack, within
    the cadence: at once, every flush other stores cause (a rate-limit count per admitted
    request) would add a load message per round trip to every peer."""
    async with trio.open_nursery() as nursery:
        node, sent, peer, worker, _ = await _with_load(nursery)
        assert node.replication is not None
        move(node, worker, +1)
        await trio.sleep(LOAD_SECS * 1.5)
        in_flight = list(sent)
        assert keys(in_flight) == [{f"{worker.id}|a"}]
        sent.clear()
        move(node, worker, +1)
        write(node.replication, "workers", "w9")  # a flush at once: it writes the count, which waits
        await wait_all_tasks_blocked()
        assert keys(sent) == [{"w9"}]
        sent.clear()
        acked = trio.current_time()
        deliver(node, peer, in_flight)
        await wait_all_tasks_blocked()
        assert keys(sent) == [] and trio.current_time() == acked  # not at the ack ...
        await trio.sleep(LOAD_SECS * 1.5)
        assert keys(sent) == [{f"{worker.id}|a"}]  # ... but within the delay after it
        nursery.cancel_scope.cancel()


async def test_a_stale_count_of_its_own_heard_back_is_corrected_within_the_load_delay(autojump_clock: Any) -> None:
    """A peer still holding this node's count from before a restart: merging it makes a flush
    due, which writes the true count (no request needs to move first)."""
    async with trio.open_nursery() as nursery:
        node, sent, peer, worker, _ = await _with_load(nursery)
        assert node.load is not None
        key = f"{worker.id}|a"
        peer.changed("load", peer.state("load").set(key, 5, peer.stamp(MS)))
        for _, channel, payload in peer.outgoing(["a"], 0.0, MS):
            node._on_app_message("b", channel, payload)
        assert node.load.map.get(key) == 5
        await trio.sleep(LOAD_SECS * 1.5)
        assert keys(sent) == [{key}] and node.load.map.get(key) == 0
        nursery.cancel_scope.cancel()


def test_the_store_s_send_delay_reaches_the_shell() -> None:
    replication = replica("a")
    delays: list[float] = []
    replication.on_change = delays.append
    write(replication, "workers", "w1")
    write(replication, "prefixes", "l1")
    assert delays == [0.0, TRAFFIC_SECS]
