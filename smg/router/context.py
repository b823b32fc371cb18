"""Everything one gateway's handlers share, built once from the config."""

from __future__ import annotations

from dataclasses import dataclass, field

from smg.config import GatewayConfig
from smg.observability.logs import AccessLog
from smg.observability.metrics import GatewayMetrics
from smg.router.policies import Policy, make_policy
from smg.router.registration import Registrar
from smg.router.upstream import Upstream, make_upstream
from smg.router.workers import Worker, WorkerRegistry


@dataclass
class GatewayContext:
    config: GatewayConfig
    registry: WorkerRegistry
    policy: Policy
    upstream: Upstream
    metrics: GatewayMetrics
    registrar: Registrar
    request_id_headers: tuple[bytes, ...]
    access_log: AccessLog = field(default_factory=AccessLog)
    in_flight: int = 0
    draining: bool = False
    _known_worker_urls: set[str] = field(default_factory=set)

    @classmethod
    def create(cls, config: GatewayConfig) -> GatewayContext:
        registry = WorkerRegistry()
        metrics = GatewayMetrics()
        ctx = cls(
            config=config,
            registry=registry,
            policy=make_policy(config.policy),
            upstream=make_upstream(
                config.upstream_client,
                connect_timeout=config.connect_timeout_secs,
                max_idle_per_origin=config.upstream_max_idle_per_worker,
            ),
            metrics=metrics,
            registrar=Registrar(
                registry,
                startup_timeout=config.worker_startup_timeout_secs,
                check_interval=config.worker_startup_check_interval,
                api_key=config.api_key,
            ),
            request_id_headers=tuple(h.lower().encode() for h in config.request_id_headers),
        )
        ctx.registrar.on_change = ctx.publish_worker_metrics
        ctx.access_log.configure(config.log_json)
        return ctx

    def add_worker(self, url: str, **settings: object) -> Worker:
        """Register a worker by URL; raises DuplicateWorker or ValueError."""
        worker = Worker.from_url(url, **settings)  # type: ignore[arg-type]
        self.registry.add(worker)
        self.registrar.register(worker)
        return worker

    def publish_worker_metrics(self) -> None:
        metrics = self.metrics
        urls = {w.url for w in self.registry}
        for worker in self.registry:
            metrics.worker_health(worker.url).set(1 if worker.is_available else 0)
        for gone in self._known_worker_urls - urls:
            metrics.worker_health.remove(gone)
            metrics.worker_active.remove(gone)
        self._known_worker_urls = urls
        metrics.worker_pool_size.set(len(urls))
