"""Per-tenant limit use in Prometheus, read at scrape time from the limiter (cluster-wide with
`--ha-mesh`: the counts are the merged windows), as `/mesh/status`'s `tenants` shows it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from smg.limits.tenants import TenantRateLimiter

MOST_TENANTS = 50  # the named tenants, then the busiest others: a scrape stays small


class TenantCollector(Collector):
    """`smg_tenant_limit` and `smg_tenant_limit_used` by tenant and kind (requests or tokens per
    minute). `limiter` is read at each scrape: the limiter a node has then."""

    def __init__(self, limiter: Callable[[], TenantRateLimiter | None]) -> None:
        self.limiter = limiter

    def collect(self) -> Iterator[GaugeMetricFamily]:
        limit = GaugeMetricFamily("smg_tenant_limit", "A tenant's limit per minute", labels=["tenant", "kind"])
        used = GaugeMetricFamily(
            "smg_tenant_limit_used", "A tenant's use of the sliding minute, every gateway's counted", labels=["tenant", "kind"]
        )
        limiter = self.limiter()
        if limiter is not None:
            report = limiter.report(time.time())
            named = set(limiter.limits.tenants)
            busiest = sorted(
                (t for t in report if t not in named), key=lambda t: -max((k["used"] for k in report[t].values()), default=0)
            )
            for tenant in [*sorted(named & set(report)), *busiest][:MOST_TENANTS]:
                for kind, entry in report[tenant].items():
                    limit.add_metric([tenant, kind], entry["limit"])
                    used.add_metric([tenant, kind], entry["used"])
        yield limit
        yield used
