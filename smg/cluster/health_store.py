"""Worker health checked once per owner, not once per gateway.

Each worker has `owners` (R, default 2) among the alive members, chosen by
rendezvous hashing, so every node agrees without coordination. Only owners
probe it; after each probe an owner writes its health state into the
`health` LWW map under `<worker>|<owner>` when it changed. Every node then
marks a worker down cluster-wide when more than half of its current owners'
reports say unhealthy or failed (an owner that has not reported yet does not
vote). When an owner dies the next member in the ranking becomes an owner
and probes from its next health round. Each node's own circuit breaker still
applies on top, from its own traffic.
"""

from __future__ import annotations

from collections.abc import Callable

from smg.cluster import per_node
from smg.cluster.ownership import owners
from smg.cluster.replication import Replication
from smg.cluster.worker_store import wall_ms
from smg.context import GatewayContext
from smg.crdt.lww import LWWMap
from smg.workers.health import HealthState
from smg.workers.registry import Worker

STORE = "health"
DOWN = (HealthState.NOT_READY.value, HealthState.FAILED.value)


class ReplicatedHealth:
    def __init__(
        self,
        ctx: GatewayContext,
        replication: Replication,
        node: str,
        alive_members: Callable[[], list[str]],
        owner_count: int = 2,
    ) -> None:
        self.ctx = ctx
        self.replication = replication
        self.node = node
        self.alive_members = alive_members
        self.owner_count = owner_count
        replication.add_store(STORE, LWWMap(), on_merge=self.apply)

    @property
    def map(self) -> LWWMap:
        return self.replication.state(STORE)  # type: ignore[no-any-return]

    def owners_of(self, worker_id: str) -> list[str]:
        return owners(worker_id, self.alive_members(), self.owner_count)

    def should_check(self, worker: Worker) -> bool:
        return self.node in self.owners_of(worker.id)

    def checked(self, worker: Worker) -> None:
        """Our probe of `worker` (as an owner) ended: publish the state if it changed."""
        record_key = per_node.key(worker.id, self.node)
        state = worker.health.state.value
        current = self.map.get(record_key)
        if current is None or current.get("state") != state:
            delta = self.map.set(record_key, {"state": state}, self.replication.stamp(wall_ms()))
            self.replication.changed(STORE, delta)
            self.apply()

    def apply(self) -> None:
        """Recompute every worker's cluster verdict from the current owners' reports."""
        reports = per_node.by_worker(self.map)
        changed = False
        for worker in self.ctx.registry:
            worker_reports = reports.get(worker.id, {})
            votes = [worker_reports[o]["state"] for o in self.owners_of(worker.id) if o in worker_reports]
            down = sum(1 for state in votes if state in DOWN)
            verdict = bool(votes) and down * 2 > len(votes)
            if verdict != worker.cluster_down:
                worker.cluster_down = verdict
                changed = True
        if changed:
            self.ctx.registrar.changed()

    def view(self, worker_id: str) -> dict[str, object]:
        """For /mesh/workers: owners and their reports."""
        reports = per_node.by_worker(self.map).get(worker_id, {})
        return {"health_owners": self.owners_of(worker_id), "health_reports": {n: r.get("state") for n, r in reports.items()}}
