"""Workers and the registry the data plane picks from (sans-IO)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any
from urllib.parse import urlsplit

from smg.workers.breaker import BreakerConfig, CircuitBreaker
from smg.workers.health import HealthConfig, HealthMachine, HealthState

DRAINING = "draining"  # the status of a worker being removed: no new requests, in-flight ones finish


def normalize_url(url: str) -> str:
    """Canonical form of a worker URL: the same worker has the same id everywhere."""
    raw = url.strip()
    if "://" not in raw:
        raw = "http://" + raw
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "grpc"):
        raise ValueError(f"unsupported scheme in worker URL '{url}' (use http, https or grpc)")
    if not parts.hostname:
        raise ValueError(f"worker URL '{url}' has no host")
    if parts.query or parts.fragment:
        raise ValueError(f"worker URL '{url}' must not have a query or fragment")
    try:
        port = parts.port or (443 if scheme == "https" else 80 if scheme == "http" else 0)
    except ValueError:
        raise ValueError(f"worker URL '{url}' has an invalid port") from None
    if scheme == "grpc":
        if not port:  # an engine's gRPC port has no conventional default to guess
            raise ValueError(f"gRPC worker URL '{url}' needs a port (grpc://host:port)")
        if parts.path.strip("/"):
            raise ValueError(f"gRPC worker URL '{url}' must not have a path (grpc://host:port)")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


def worker_id_for(normalized_url: str) -> str:
    return blake2b(normalized_url.encode(), digest_size=8).hexdigest()


_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Origin:
    """Where the upstream client connects, parsed once per worker."""

    scheme: str
    host: str
    port: int
    base_path: str
    host_header: bytes

    @classmethod
    def parse(cls, normalized_url: str) -> Origin:
        parts = urlsplit(normalized_url)
        host = parts.hostname or ""
        port = parts.port or 80
        name = f"[{host}]" if ":" in host else host
        # the Host header names the port only when it is not the scheme's own, as clients do
        # (a hosted provider's front end may not expect `api.openai.com:443`)
        netloc = name if _DEFAULT_PORTS.get(parts.scheme) == port else f"{name}:{port}"
        return cls(parts.scheme, host, port, parts.path, netloc.encode())


@dataclass(eq=False)
class Worker:
    url: str
    id: str
    origin: Origin
    models: list[str] = field(default_factory=list)  # what it reports (/v1/models)
    # the model id discovery gave it (Kubernetes --model-id-from): clients ask for that name, its own
    # names stay aliases, and a request for it names the worker's own model on the way (`dataplane.attempts.body_for`)
    model_id: str | None = None
    runtime_type: str = "unknown"
    labels: dict[str, str] = field(default_factory=dict)  # the operator's (POST /workers, discovery): replicated
    engine_labels: dict[str, str] = field(default_factory=dict)  # what a gRPC engine reported: each node's own
    priority: int = 50
    cost: float = 1.0
    api_key: str | None = field(default=None, repr=False)  # never in a log line, a repr or GET /workers
    provider: str | None = None  # a hosted provider (`smg.workers.providers`): no engine endpoints, its own key only
    in_flight: int = 0
    last_error: str | None = None
    health: HealthMachine = field(default_factory=lambda: HealthMachine(HealthConfig()))
    breaker: CircuitBreaker = field(default_factory=lambda: CircuitBreaker(BreakerConfig()))
    discovered: bool = False  # /v1/models answered: the worker's models are known
    draining: bool = False
    reported_load: int = 0  # running + waiting from the worker's /v1/loads (load monitor), else 0
    reported_waiting: int = 0  # waiting requests in that report (overload protection)
    reported_token_usage: float | None = None  # its mean KV-cache usage; None: not reported
    # model -> (until, status): it answered 429 or 503 with Retry-After for that model, and is not
    # chosen for it before then (trio's clock); a request no one else can take gets that status
    cooldowns: dict[str, tuple[float, int]] = field(default_factory=dict)
    peer_in_flight: int = 0  # HA mesh: requests other gateways have in flight on it
    # model -> [prompt tokens, of which cached]: what its answers through this gateway reported,
    # the cache hit rate the cluster page shows per worker and model
    tokens: dict[str, list[int]] = field(default_factory=dict)
    cluster_down: bool = False  # HA mesh: the majority of its health owners report it unhealthy

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        health: HealthConfig | None = None,
        breaker: BreakerConfig | None = None,
        **settings: Any,
    ) -> Worker:
        normalized = normalize_url(url)
        worker = cls(url=normalized, id=worker_id_for(normalized), origin=Origin.parse(normalized), **settings)
        if health is not None:
            worker.health = HealthMachine(health)
        if breaker is not None:
            worker.breaker = CircuitBreaker(breaker)
        return worker

    @property
    def is_grpc(self) -> bool:
        """An engine spoken to over gRPC: the gateway tokenizes, templates and detokenizes for it."""
        return self.origin.scheme == "grpc"

    @property
    def served_models(self) -> list[str]:
        """The names clients reach it by: its discovered model id first, then what it reports."""
        if self.model_id is None:
            return self.models
        return [self.model_id, *(m for m in self.models if m != self.model_id)]

    @property
    def status(self) -> str:
        if self.draining:
            return DRAINING
        if self.cluster_down and self.health.state is HealthState.READY:
            return HealthState.NOT_READY.value  # by its health owners' verdict
        return self.health.state.value

    @property
    def is_routable(self) -> bool:
        """Healthy and not draining; the breaker is asked separately, at pick time."""
        return self.health.state is HealthState.READY and not self.draining and not self.cluster_down

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "model_id": self.served_models[0] if self.served_models else None,
            "models": list(self.served_models),
            "worker_type": "regular",
            "connection_mode": "grpc" if self.is_grpc else "http",
            "runtime_type": self.runtime_type,
            "labels": {**self.engine_labels, **self.labels},  # an operator's label wins over the engine's
            "priority": self.priority,
            "cost": self.cost,
            "is_healthy": self.is_routable,
            "status": self.status,
            "circuit_breaker": self.breaker.state.value,
            "load": self.in_flight,
            "cluster_load": self.in_flight + self.peer_in_flight,
            "last_error": self.last_error,
        }


def _unwatched() -> None:
    pass


class DuplicateWorker(Exception):
    pass


class WorkerRegistry:
    """All known workers, plus an index of available ones per model for the hot path."""

    def __init__(self) -> None:
        self._by_id: dict[str, Worker] = {}
        self._available: dict[str, list[Worker]] = {}
        self._serving: dict[str, list[Worker]] = {}
        # called after a worker's `in_flight` moves (the data plane's attempts): the HA mesh
        # publishes its counts with its next traffic flush instead of waking on a timer
        self.on_in_flight: Callable[[], None] = _unwatched

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._by_id.values()))

    def get(self, worker_id: str) -> Worker | None:
        return self._by_id.get(worker_id)

    def add(self, worker: Worker) -> None:
        if worker.id in self._by_id:
            raise DuplicateWorker(worker.url)
        self._by_id[worker.id] = worker
        self.refresh()

    def remove(self, worker_id: str) -> Worker | None:
        worker = self._by_id.pop(worker_id, None)
        self.refresh()
        return worker

    def refresh(self) -> None:
        """Rebuild the per-model index; call after any status or model change."""
        available: dict[str, list[Worker]] = {}
        serving: dict[str, list[Worker]] = {}
        for worker in self._by_id.values():
            for model in worker.served_models:
                serving.setdefault(model, []).append(worker)
                if worker.is_routable:
                    available.setdefault(model, []).append(worker)
        self._available = available
        self._serving = serving

    def available(self, model: str) -> list[Worker]:
        """Routable workers of `model` (breakers not yet consulted)."""
        return self._available.get(model, [])

    def serving(self, model: str) -> list[Worker]:
        """Every worker that lists `model`, whatever its state, in registration order."""
        return self._serving.get(model, [])

    def available_any(self) -> list[Worker]:
        return [w for w in self._by_id.values() if w.is_routable]

    def serves(self, model: str) -> bool:
        """Whether any known worker (available or not) lists `model`."""
        return any(model in w.served_models for w in self._by_id.values())

    def models(self) -> dict[str, Worker]:
        """Each served model with one worker that serves it (for `/v1/models`)."""
        out: dict[str, Worker] = {}
        for worker in self._by_id.values():
            if worker.is_routable:
                for model in worker.served_models:
                    out.setdefault(model, worker)
        return out

    def healthy_count(self) -> int:
        return sum(1 for w in self._by_id.values() if w.is_routable)
