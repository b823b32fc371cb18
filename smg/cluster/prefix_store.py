"""Prefix summaries shared by every gateway: where each conversation's prefix is cached.

`cache_aware` on each node records the chain hashes of every prompt under the
worker it chose; this store (a `PrefixSummary`: per model, (worker, block
hash) -> last seen, bounded by a budget and a TTL) replicates them, and
`cache_aware` matches a prompt against its own tree and this merged summary.
So a conversation whose turns land on different gateways keeps hitting the
worker that holds its prefix. A block is sent again only when its last
sighting is older than `refresh_ms`: a hot prefix does not flood the mesh.
"""

from __future__ import annotations

from smg.cluster.replication import TRAFFIC_SECS, Replication
from smg.cluster.worker_store import wall_ms
from smg.crdt.codec import CRDT
from smg.crdt.prefix_summary import PrefixSummary

STORE = "prefixes"
MAX_MODELS = 1024  # a peer naming more models than this is refused, not obeyed


class SharedPrefixes:
    def __init__(self, replication: Replication, budget: int, ttl_ms: int) -> None:
        self.replication = replication
        self.summary = PrefixSummary(budget, ttl_ms)
        self.refresh_ms = ttl_ms // 4
        # hints, refreshed by traffic; written as a request is routed (its new blocks)
        replication.add_store(STORE, self.summary, vet=self._vet, soft=True, send_delay=TRAFFIC_SECS)

    def record(self, model: str, worker: str, chain: list[bytes]) -> None:
        now_ms = wall_ms()
        stale = now_ms - self.refresh_ms
        last_seen = self.summary.last_seen
        fresh = [h for h in chain if (seen := last_seen(model, worker, h)) is None or seen.wall < stale]
        if fresh:  # most requests of a hot conversation send nothing
            self.replication.changed(STORE, self.summary.record(model, worker, fresh, self.replication.stamp(now_ms)))

    def match(self, model: str, chain: list[bytes]) -> dict[str, int]:
        return self.summary.match(model, chain)

    def footprint(self, model: str) -> dict[str, int]:
        return self.summary.footprint(model)

    def _vet(self, remote: CRDT, now_ms: int) -> None:
        if isinstance(remote, PrefixSummary) and len(set(remote.models) | set(self.summary.models)) > MAX_MODELS:
            raise ValueError(f"prefix summaries for more than {MAX_MODELS} models")
