"""Cluster-wide in-flight load: each node publishes its own count per worker.

A node writes its in-flight count for each worker whose count changed into
the `load` LWW map under `<worker>|<node>` at its next flush, due within
`LOAD_SECS` of a request starting or ending (`ClusterNode._in_flight_moved`); every node
sums the entries of the other members it counts (`live_members`: the alive
ones; a suspect's requests may have died with it) into `Worker.peer_in_flight`, so
load-aware policies balance on what the whole cluster sends each worker, not
only on this gateway's share.
"""

from __future__ import annotations

from collections.abc import Callable

from smg.cluster import per_node
from smg.cluster.replication import TRAFFIC_SECS, Replication
from smg.cluster.worker_store import wall_ms
from smg.context import GatewayContext
from smg.crdt.lww import LWWMap

STORE = "load"


class ReplicatedLoad:
    def __init__(self, ctx: GatewayContext, replication: Replication, node: str, live_members: Callable[[], list[str]]) -> None:
        self.ctx = ctx
        self.replication = replication
        self.node = node
        self.live_members = live_members
        # written at flushes only (`publish`), so no change of its own asks for one; the delay
        # is for an ack freeing a count that waited for it: within the traffic's cadence, not
        # at once (at once, every flush that other stores cause would add one per round trip)
        replication.add_store(STORE, LWWMap(), on_merge=self.apply, send_delay=TRAFFIC_SECS)

    @property
    def map(self) -> LWWMap:
        return self.replication.state(STORE)  # type: ignore[no-any-return]

    def publish(self) -> None:
        """Write this node's in-flight count of every worker whose count changed (no record
        reads as 0: a worker this node never sent a request needs none)."""
        for worker in self.ctx.registry:
            record_key = per_node.key(worker.id, self.node)
            if self.map.get(record_key, 0) != worker.in_flight:
                delta = self.map.set(record_key, worker.in_flight, self.replication.stamp(wall_ms()))
                self.replication.changed(STORE, delta)

    def apply(self) -> None:
        live = set(self.live_members())
        live.discard(self.node)
        loads = per_node.by_worker(self.map)
        for worker in self.ctx.registry:
            counts = loads.get(worker.id, {})
            if counts.get(self.node, 0) != worker.in_flight:
                # this node's own count as a peer still holds it (from before a restart): the
                # next flush, made due as a request moving would, writes the true one
                self.ctx.registry.on_in_flight()
            worker.peer_in_flight = sum(n for node, n in counts.items() if node in live and isinstance(n, int))
