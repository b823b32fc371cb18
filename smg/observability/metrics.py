"""Prometheus metrics of one gateway, named as the reference names them.

Each gateway owns its registry (several gateways may live in one test
process). Label children are cached so the hot path pays one dict lookup
per metric instead of prometheus-client's label validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from smg.http.asgi import Receive, Scope, Send, send_bytes, send_text, serve_lifespan

disable_created_metrics()  # the `_created` series double the scrape for no use here

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _Cached:
    """`metric.labels(*values)` memoised by the label tuple."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child

    def remove(self, *values: str) -> None:
        if self._children.pop(values, None) is not None:
            self._metric.remove(*values)


class GatewayMetrics:
    def __init__(self, duration_buckets: Sequence[float] | None = None) -> None:
        """`duration_buckets` (`--prometheus-duration-buckets`, seconds) replace `LATENCY_BUCKETS`
        in every histogram of a duration, so a deployment can put its bounds where its SLOs are;
        ratios keep their own buckets. prometheus-client adds the `+Inf` bucket itself."""
        self.registry = r = CollectorRegistry(auto_describe=True)
        seconds = tuple(duration_buckets) if duration_buckets else LATENCY_BUCKETS
        self.http_requests = _Cached(Counter("smg_http_requests_total", "HTTP requests received", ["method", "path"], registry=r))
        self.http_duration = _Cached(
            Histogram(
                "smg_http_request_duration_seconds",
                "Time from request start to the end of the response",
                ["method", "path"],
                buckets=seconds,
                registry=r,
            )
        )
        self.http_responses = _Cached(
            Counter("smg_http_responses_total", "HTTP responses sent", ["path", "status_code"], registry=r)
        )
        self.router_requests = _Cached(
            Counter("smg_router_requests_total", "Inference requests routed", ["route", "model", "stream"], registry=r)
        )
        self.router_errors = _Cached(
            Counter("smg_router_request_errors_total", "Requests answered with an error", ["route", "error_code"], registry=r)
        )
        self.upstream_responses = _Cached(
            Counter(
                "smg_router_upstream_responses_total",
                "Responses received from workers",
                ["worker", "status_code"],
                registry=r,
            )
        )
        self.ttft = _Cached(
            Histogram(
                "smg_router_ttft_seconds",
                "Time to the first streamed byte from the worker",
                ["model"],
                buckets=seconds,
                registry=r,
            )
        )
        self.worker_active = _Cached(Gauge("smg_worker_requests_active", "Requests in flight per worker", ["worker"], registry=r))
        self.worker_health = _Cached(Gauge("smg_worker_health", "1 if the worker is available, else 0", ["worker"], registry=r))
        self.health_checks = _Cached(
            Counter("smg_worker_health_checks_total", "Health probes sent by this gateway", ["worker", "result"], registry=r)
        )
        self.worker_pool_size = Gauge("smg_worker_pool_size", "Workers known to this gateway", registry=r)
        self.worker_selection = _Cached(
            Counter("smg_worker_selection_total", "Workers picked by the policy", ["policy", "worker"], registry=r)
        )
        self.retries = _Cached(
            Counter("smg_worker_retries_total", "Attempts retried after a failure on this worker", ["worker"], registry=r)
        )
        self.retries_exhausted = _Cached(
            Counter("smg_worker_retries_exhausted_total", "Requests whose every attempt failed", ["route"], registry=r)
        )
        self.tokens = _Cached(
            Counter(
                "smg_router_tokens_total",
                "Tokens answers reported, by the model that ran, the worker's backend (a provider's API or the engine) "
                "and kind: prompt (cached ones included), completion, cached (prompt tokens served from a cache)",
                ["model", "backend", "kind"],
                registry=r,
            )
        )
        self.fallbacks = _Cached(
            Counter(
                "smg_router_fallbacks_total",
                "Requests sent on to a --model-fallback pool, by the model that failed, the fallback and why",
                ["model", "fallback", "reason"],
                registry=r,
            )
        )
        self.cb_state = _Cached(
            Gauge("smg_worker_cb_state", "Circuit breaker state: 0 closed, 1 open, 2 half-open", ["worker"], registry=r)
        )
        self.cb_transitions = _Cached(
            Counter("smg_worker_cb_transitions_total", "Circuit breaker transitions", ["worker", "from", "to"], registry=r)
        )
        self.cache_match_ratio = Histogram(
            "smg_router_cache_match_ratio",
            "cache_aware: matched share of the prompt at the best worker",
            buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
            registry=r,
        )
        self.cache_tree_size = _Cached(
            Gauge("smg_router_cache_tree_size", "cache_aware: characters or tokens in a model's tree", ["model"], registry=r)
        )
        self.rate_limit = _Cached(Counter("smg_http_rate_limit_total", "Admission decisions", ["result"], registry=r))
        self.control_plane_auth = _Cached(
            Counter(
                "smg_http_control_plane_auth_total",
                "Control-plane credential checks (allowed, missing, invalid, forbidden, unavailable)",
                ["result"],
                registry=r,
            )
        )
        self.storage_operations = _Cached(
            Counter(
                "smg_storage_operations_total",
                "History storage operations, by result (ok, error, timeout)",
                ["backend", "operation", "result"],
                registry=r,
            )
        )
        self.storage_duration = _Cached(
            Histogram(
                "smg_storage_operation_duration_seconds",
                "History storage operation time, waiting for a connection included",
                ["backend", "operation"],
                buckets=seconds,
                registry=r,
            )
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsApp:
    """ASGI app serving `/metrics` on the separate Prometheus port."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
        elif scope["type"] == "http":
            if scope["path"] in ("/metrics", "/"):
                await send_bytes(send, 200, self.metrics.render(), content_type=(b"content-type", CONTENT_TYPE_LATEST.encode()))
            else:
                await send_text(send, 404, "not found; metrics are at /metrics")
