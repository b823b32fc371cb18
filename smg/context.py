"""Everything one gateway's handlers share, built once from the config."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from smg.background import Background
from smg.config import GatewayConfig
from smg.config.workers import alias_table
from smg.generation.requests import PipelineOptions
from smg.limits.admission import Admission
from smg.limits.metrics import TenantCollector
from smg.limits.tenants import TenantRateLimiter
from smg.observability import tracing
from smg.observability.events import EventLog
from smg.observability.logs import AccessLog
from smg.observability.metrics import GatewayMetrics
from smg.observability.series import SeriesSet
from smg.routing.policies import Policy, base_policy, make_policy
from smg.storage.service import History
from smg.upstream import Upstream, make_upstream
from smg.upstream.grpc.fleet import EngineFleet
from smg.upstream.grpc.tokenizers import ModelTokenizers
from smg.workers.breaker import STATE_GAUGE
from smg.workers.overload import OverloadLimits
from smg.workers.registrar import Registrar
from smg.workers.registry import Worker, WorkerRegistry
from smg.workers.retry import RetryConfig


class WorkerSink(Protocol):
    """Where operator changes to workers are published (the HA mesh's replicated registry)."""

    def added(self, worker: Worker) -> None: ...
    def updated(self, worker: Worker) -> None: ...
    def removed(self, worker_id: str) -> None: ...


@dataclass
class GatewayContext:
    config: GatewayConfig
    registry: WorkerRegistry
    policy: Policy
    upstream: Upstream
    metrics: GatewayMetrics
    registrar: Registrar
    request_id_headers: tuple[bytes, ...]
    retry: RetryConfig
    admission: Admission
    tenant_keys: dict[str, str]  # API key -> tenant
    access_log: AccessLog = field(default_factory=AccessLog)
    in_flight: int = 0
    draining: bool = False
    worker_sink: WorkerSink | None = None
    health_sink: Callable[[Worker], None] | None = None  # an owner's probe result, for the cluster
    cluster: Any = None  # the ClusterNode with --ha-mesh (for /mesh/*), else None
    limiter: TenantRateLimiter | None = None  # --tenant-rate-limit-config
    overload: OverloadLimits | None = None  # None: --disable-worker-overload-protection
    routing_key_headers: tuple[bytes, ...] = (b"x-smg-routing-key",)  # --routing-key-headers, in order
    history: History | None = None  # --history-backend (None: none)
    background: Background | None = None  # background responses (None: --max-background-responses 0)
    engines: EngineFleet | None = None  # gRPC workers: the clients and the models' tokenizers (run by the gateway)
    pipeline_options: PipelineOptions = field(default_factory=PipelineOptions)  # gRPC workers: parsers
    events: EventLog = field(default_factory=EventLog)  # recent membership, health and breaker events (the page's)
    series: SeriesSet = field(default_factory=SeriesSet)  # the last 15 minutes, sampled by smg.ui.sampler
    answered: int = 0  # data-plane requests answered (the page's request rate)
    failed: int = 0  # ... of which with a status of 400 or more (a client that left is not counted)
    _known_worker_urls: set[str] = field(default_factory=set)

    @classmethod
    def create(cls, config: GatewayConfig) -> GatewayContext:
        registry = WorkerRegistry()
        worker_tls = config.worker_tls()  # one context for every connection to workers
        metrics = GatewayMetrics(duration_buckets=config.prometheus_duration_buckets or None)
        ctx = cls(
            config=config,
            registry=registry,
            policy=make_policy(config.policy, config.policy_config()),
            upstream=make_upstream(
                config.upstream_client,
                connect_timeout=config.connect_timeout_secs,
                max_idle_per_origin=config.upstream_max_idle_per_worker,
                idle_timeout=config.upstream_pool_idle_timeout_secs,
                max_response_size=config.max_upstream_response_size,
                ssl_context=worker_tls,
            ),
            metrics=metrics,
            registrar=Registrar(
                registry,
                startup_timeout=config.worker_startup_timeout_secs,
                check_interval=config.worker_startup_check_interval,
                startup_delay=config.worker_startup_delay,
                health_interval=config.health_check_interval_secs,
                health_timeout=config.health_check_timeout_secs,
                health_endpoint=config.health_check_endpoint,
                health_checks=not config.disable_health_check,
                remove_failed=bool(config.remove_unhealthy_workers),  # None: off; gateway.py turns it on for Kubernetes discovery
                load_interval=config.load_monitor_interval if config.load_monitoring else None,
                api_key=config.api_key,
                ssl_context=worker_tls,
                stagger=random.Random(),
            ),
            request_id_headers=tuple(h.lower().encode() for h in config.request_id_headers),
            retry=config.retry_config(),
            admission=Admission(
                config.max_concurrent_requests if config.max_concurrent_requests > 0 else None,
                config.queue_size,
                config.queue_timeout_secs,
                config.rate_limit_tokens_per_second,
            ),
            tenant_keys=config.tenant_keys(),
        )
        ctx.overload = config.overload_limits()
        tokenizers = ModelTokenizers(
            tokenizer_path=config.tokenizer_path,
            model_path=None if config.disable_tokenizer_autoload else config.model_path,
            cache_dir=config.tokenizer_cache_dir,
            chat_template_path=config.chat_template,
        )
        ctx.engines = EngineFleet(tokenizers, preferred=config.backend)
        ctx.registrar.engines = ctx.engines
        ctx.pipeline_options = PipelineOptions(tool_call_parser=config.tool_call_parser, reasoning_parser=config.reasoning_parser)
        if config.routing_key_headers:
            ctx.routing_key_headers = tuple(h.strip().lower().encode() for h in config.routing_key_headers)
        limits = config.tenant_limits()
        if limits is not None:
            ctx.limiter = TenantRateLimiter(limits)
        metrics.registry.register(TenantCollector(lambda: ctx.limiter))
        ctx.registrar.on_change = ctx.workers_changed
        ctx.registrar.on_removed = ctx.worker_failed
        ctx.registrar.on_checked = ctx.worker_checked
        ctx.registrar.on_event = ctx.worker_event
        policy = base_policy(ctx.policy)
        if hasattr(policy, "on_match"):
            observe = metrics.cache_match_ratio.observe
            policy.on_match = tracing.noting_match(observe) if config.enable_trace else observe
        ctx.access_log.configure(config.log_json)
        return ctx

    @property
    def forward_client_authorization(self) -> bool:
        """A client's own Authorization goes to workers only when the gateway checks no keys."""
        return not self.config.api_key and not self.tenant_keys

    def canonical_model(self, model: str) -> str | None:
        """The served model that `model` (as a client named it) is an alias of, or None to route
        `model` as it is.

        Matching is exact (case-sensitive). A name that some worker serves under its own name is
        never treated as an alias: a real model is not shadowed by a flag. Nor is an alias whose
        canonical model no worker serves now: the client's error then names the model it asked for.
        """
        canonical = alias_table(self.config.model_alias).get(model)
        if canonical is None:
            return None
        registry = self.registry
        if registry.serving(model) or not registry.serving(canonical):
            return None
        return canonical

    def add_worker(self, url: str, *, publish: bool = True, **settings: object) -> Worker:
        """Register a worker by URL; raises DuplicateWorker or ValueError.

        `publish`: an operator's change, to tell the cluster; False when it came from the cluster.
        """
        config = self.config
        worker = Worker.from_url(url, health=config.health_config(), breaker=config.breaker_config(), **settings)
        self.registry.add(worker)
        self.registrar.register(worker)
        self.worker_event(worker, "added" if publish else "added by a peer")
        if publish and self.worker_sink is not None:
            self.worker_sink.added(worker)
        return worker

    def remove_worker(self, worker: Worker, *, publish: bool = True) -> None:
        """Stop routing to `worker` and forget it once its requests finish."""
        self.registrar.drain_and_remove(worker, self.config.shutdown_grace_period_secs)
        self.worker_event(worker, "draining, to be removed" if publish else "draining, removed by a peer")
        if publish and self.worker_sink is not None:
            self.worker_sink.removed(worker.id)

    def worker_settings_changed(self, worker: Worker) -> None:
        if self.worker_sink is not None:
            self.worker_sink.updated(worker)

    def worker_checked(self, worker: Worker, ok: bool) -> None:
        self.metrics.health_checks(worker.url, "ok" if ok else "failed").inc()
        if self.health_sink is not None:
            self.health_sink(worker)

    def worker_event(self, worker: Worker, text: str, severity: str = "info") -> None:
        """Something happened to `worker` that the cluster page's event list shows."""
        self.events.record(time.time(), "worker", worker.url, text, severity)

    def worker_failed(self, worker: Worker) -> None:
        """--remove-unhealthy-workers removed `worker`: a cluster-wide delete."""
        if self.worker_sink is not None:
            self.worker_sink.removed(worker.id)

    def workers_changed(self) -> None:
        forget = getattr(base_policy(self.policy), "forget_workers", None)
        if forget is not None:
            forget({w.id for w in self.registry})
        if self.engines is not None:
            self.engines.retain(w.url for w in self.registry if w.is_grpc)
        self.publish_worker_metrics()

    async def maintain_policy(self) -> None:
        """Tick the policy's periodic upkeep (cache_aware eviction) from the node's nursery."""
        policy = base_policy(self.policy)
        maintain = getattr(policy, "maintain", None)
        if maintain is None:
            return
        while True:
            await trio.sleep(self.config.eviction_interval_secs)
            maintain(trio.current_time())
            for model, size in policy.tree_sizes().items():  # type: ignore[attr-defined]
                self.metrics.cache_tree_size(model).set(size)

    def models_without_tokenizer(self) -> list[str]:
        """Models that routable gRPC workers serve but whose tokenizer is not loaded yet (the
        gateway cannot answer for them). A failed model is tried again from here too, so a node
        that only gets readiness probes still recovers."""
        if self.engines is None:
            return []
        tokenizers = self.engines.tokenizers
        models = {w.models[0] for w in self.registry.available_any() if w.is_grpc and w.models}
        waiting = sorted(m for m in models if tokenizers.get(m) is None)
        for model in waiting:
            tokenizers.retry(model)
        return waiting

    def servable(self) -> bool:
        """Some routable worker can answer: an HTTP worker, or a gRPC worker whose model's
        tokenizer is loaded (`/readiness`: one model without its tokenizer does not take a node
        serving others out of its balancer)."""
        waiting = set(self.models_without_tokenizer())
        return any(not w.is_grpc or (w.models and w.models[0] not in waiting) for w in self.registry.available_any())

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """`/readiness`'s status and body: 200 once this node can serve (caught up with its
        cluster, some worker it can answer through), 503 with the reason otherwise."""
        healthy, total = self.registry.healthy_count(), len(self.registry)
        if self.draining:
            return 503, {"status": "not ready", "reason": "draining"}
        if self.cluster is not None and not self.cluster.synced:
            return 503, {"status": "not ready", "reason": "catching up with the cluster's state"}
        if healthy and not self.servable():  # gRPC workers only, and none of their models' tokenizers loaded yet
            reason = f"tokenizer not yet registered for {', '.join(self.models_without_tokenizer())}"
            return 503, {"status": "not ready", "reason": reason, "healthy_workers": healthy, "total_workers": total}
        if healthy or (self.config.enable_igw and not total):
            return 200, {"status": "ready", "healthy_workers": healthy, "total_workers": total}
        return 503, {"status": "not ready", "reason": "no healthy workers", "healthy_workers": 0, "total_workers": total}

    def publish_worker_metrics(self) -> None:
        metrics = self.metrics
        urls = {w.url for w in self.registry}
        for worker in self.registry:
            metrics.worker_health(worker.url).set(1 if worker.is_routable else 0)
            metrics.cb_state(worker.url).set(STATE_GAUGE[worker.breaker.state])
        for gone in self._known_worker_urls - urls:
            for metric in (metrics.worker_health, metrics.worker_active, metrics.cb_state):
                metric.remove(gone)
        self._known_worker_urls = urls
        metrics.worker_pool_size.set(len(urls))
