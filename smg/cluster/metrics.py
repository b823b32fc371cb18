"""Prometheus metrics of the replicated stores, read at scrape time (like `smg.mesh.metrics`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from smg.cluster.replication import LAG_BUCKETS, Replication


class ClusterState(Protocol):
    """What the collector reads from the cluster node (which owns the collector: no import back)."""

    @property
    def replication(self) -> Replication | None: ...
    @property
    def replication_errors(self) -> int: ...
    @property
    def synced(self) -> bool: ...


class ClusterCollector(Collector):
    def __init__(self, cluster: ClusterState) -> None:
        self.cluster = cluster

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        cluster = self.cluster
        replication = cluster.replication
        entries = GaugeMetricFamily("smg_mesh_store_entries", "Entries in each replicated store", labels=["store"])
        sent = CounterMetricFamily("smg_mesh_replication_bytes_sent", "Replication payload bytes sent", labels=["store", "kind"])
        merged = CounterMetricFamily("smg_mesh_replication_merges", "Remote deltas and full states merged", labels=["store"])
        if replication is not None:
            for store, stats in replication.store_stats().items():
                entries.add_metric([store], stats["entries"])
                sent.add_metric([store, "delta"], stats["delta_bytes"])
                sent.add_metric([store, "full"], stats["full_bytes"])
                merged.add_metric([store], stats["merged"])
        yield entries
        yield sent
        yield merged
        yield CounterMetricFamily(
            "smg_mesh_replication_errors", "Replication messages refused (malformed, unknown store, clock drift)",
            value=cluster.replication_errors,
        )  # fmt: skip
        yield GaugeMetricFamily("smg_mesh_stores_synced", "1 once caught up with the cluster's state", value=int(cluster.synced))
        if replication is not None:
            buckets = [(str(b), c) for b, c in zip(LAG_BUCKETS, replication.lag_buckets, strict=True)]
            buckets.append(("+Inf", replication.lag_count))
            yield HistogramMetricFamily(
                "smg_mesh_replication_lag_seconds",
                "From a write's HLC stamp to its merge on this node",
                buckets=buckets,
                sum_value=replication.lag_sum,
            )
