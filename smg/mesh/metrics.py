"""Prometheus metrics of a mesh node, read from the node at scrape time.

A custom collector: the protocol core keeps plain counters, and nothing on the
packet path pays for label lookups.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from smg.mesh.messages import State
from smg.mesh.node import MeshNode
from smg.mesh.swim import RTT_BUCKETS


class MeshCollector(Collector):
    def __init__(self, node: MeshNode) -> None:
        self.node = node

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        node, swim = self.node, self.node.swim
        members = GaugeMetricFamily("smg_mesh_members", "Known mesh members by state", labels=["state"])
        counts = {state: 0 for state in State}
        if swim is not None:
            for member in swim.members.values():
                counts[member.state] += 1
        for state, count in counts.items():
            members.add_metric([state.value], count)
        yield members
        transport = node.transport
        yield CounterMetricFamily("smg_mesh_packets_sent_total", "Packets and frames sent", value=transport.sent_packets)
        yield CounterMetricFamily(
            "smg_mesh_packets_received_total", "Packets and frames received", value=transport.received_packets
        )
        yield CounterMetricFamily("smg_mesh_bytes_sent_total", "Bytes sent, sealed", value=transport.sent_bytes)
        yield CounterMetricFamily("smg_mesh_bytes_received_total", "Bytes received, sealed", value=transport.received_bytes)
        dropped = CounterMetricFamily("smg_mesh_packets_dropped_total", "Packets dropped, by reason", labels=["reason"])
        for reason in ("unauthenticated", "malformed", "oversize", "oversize_sent", "truncated", "fault_filter"):
            dropped.add_metric([reason], transport.dropped[reason])
        yield dropped
        stats = swim.stats if swim is not None else {}
        for key, help_text in (
            ("suspicions", "Suspicions raised or accepted"),
            ("refutations", "Suspicions of this node it refuted"),
            ("false_deaths", "Times this node heard itself declared dead while alive (false positives)"),
            ("push_pulls", "Push-pull state exchanges merged"),
            ("probes", "Probes started"),
            ("failed_probes", "Probes that got no ack"),
        ):
            yield CounterMetricFamily(f"smg_mesh_{key}_total", help_text, value=stats.get(key, 0))
        if swim is not None:
            buckets = [(str(b), c) for b, c in zip(RTT_BUCKETS, swim.rtt_buckets, strict=True)]
            buckets.append(("+Inf", swim.rtt_count))
            yield HistogramMetricFamily(
                "smg_mesh_probe_rtt_seconds", "Probe round trip (direct or indirect)", buckets=buckets, sum_value=swim.rtt_sum
            )
        yield GaugeMetricFamily(
            "smg_mesh_local_health", "Lifeguard local health score (0 is healthy)", value=swim.health if swim else 0
        )
