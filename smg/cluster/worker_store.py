"""The worker registry replicated over the mesh: an LWW map of worker records.

The key is the worker id (derived from the normalised URL), so the same
`--worker-urls` given to several nodes is one record. An operator's add,
settings change or delete on any node is a write to the map; `reconcile`
then makes the local registry match the merged map: records without a local
worker are registered (and discovered and probed here), local workers whose
record is deleted are drained and removed. A delete is a tombstone until
every member holds it (see `smg.cluster.replication`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from smg.cluster.replication import Replication
from smg.context import GatewayContext
from smg.crdt.lww import LWWMap
from smg.workers.providers import PROVIDERS, environment_key, key_source
from smg.workers.registry import DuplicateWorker, Worker

log = logging.getLogger("smg.cluster")

STORE = "workers"
SETTINGS = ("labels", "priority", "cost", "api_key", "model_id", "provider")


def wall_ms() -> int:
    return int(time.time() * 1000)


def record_of(worker: Worker) -> dict[str, Any]:
    """A worker's replicated record. A hosted provider's key stays on its node: every node reads
    its own from its environment (`provider_key`), so the key never crosses the network."""
    record = {"url": worker.url, **{key: getattr(worker, key) for key in SETTINGS}}
    if worker.provider is not None:
        record["api_key"] = None
    return record


def provider_key(provider: str, url: str, local: Worker | None) -> str | None:
    """This node's key for a provider a peer added: the one it holds, else its environment's."""
    if local is not None and local.api_key:
        return local.api_key
    return environment_key(provider, url, os.environ)


class ReplicatedWorkers:
    """Publishes local operator changes, applies merged remote ones (the context's `WorkerSink`)."""

    def __init__(self, ctx: GatewayContext, replication: Replication) -> None:
        self.ctx = ctx
        self.replication = replication
        replication.add_store(STORE, LWWMap(), on_merge=self.reconcile)
        self._keyless: set[str] = set()  # providers peers added that this node has no key for

    @property
    def map(self) -> LWWMap:
        return self.replication.state(STORE)  # type: ignore[no-any-return]

    # -- local operator changes -> the map ------------------------------------------

    def added(self, worker: Worker) -> None:
        self._write(self.map.set(worker.id, record_of(worker), self.replication.stamp(wall_ms())))

    def updated(self, worker: Worker) -> None:
        self.added(worker)

    def removed(self, worker_id: str) -> None:
        if worker_id in self.map:
            self._write(self.map.delete(worker_id, self.replication.stamp(wall_ms())))

    def _write(self, delta: LWWMap) -> None:
        self.replication.changed(STORE, delta)

    # -- the merged map -> the local registry ---------------------------------------

    def reconcile(self) -> None:
        ctx = self.ctx
        records = dict(self.map.items())
        for worker_id, record in records.items():
            worker = ctx.registry.get(worker_id)
            settings = {key: record.get(key) for key in SETTINGS if key in record}
            if not isinstance(settings.get("model_id"), str | None):
                log.warning("ignoring replicated worker record %s: its model_id is not a string", worker_id)
                continue
            provider = settings.get("provider")
            if provider not in (None, *PROVIDERS):
                log.warning("ignoring replicated worker record %s: unknown provider %r", worker_id, provider)
                continue
            if provider is not None:
                settings["api_key"] = provider_key(provider, str(record.get("url")), worker)
                if settings["api_key"] is None:
                    if worker is None and worker_id not in self._keyless:
                        self._keyless.add(worker_id)  # said once
                        log.warning(
                            "not serving provider %s that a peer added: this node has no key for it (an 'api_key' given here, %s)",
                            record.get("url"),
                            key_source(provider, str(record.get("url"))),
                        )
                    continue
            if worker is None:
                try:
                    ctx.add_worker(record["url"], publish=False, **settings)
                    log.info("worker %s added by a peer", record["url"])
                except (DuplicateWorker, ValueError, KeyError, TypeError) as exc:
                    log.warning("ignoring replicated worker record %s: %s", worker_id, exc)
            elif not worker.draining and any(getattr(worker, k) != v for k, v in settings.items()):
                model_id = worker.model_id
                for key, value in settings.items():
                    setattr(worker, key, value)
                if worker.model_id != model_id:  # the models it serves changed: re-index them
                    ctx.registry.refresh()
                log.info("worker %s settings changed by a peer", worker.url)
        for worker in list(ctx.registry):
            if worker.id not in records and not worker.draining:
                log.info("worker %s removed by a peer", worker.url)
                ctx.remove_worker(worker, publish=False)

    def records(self, health_view: Callable[[str], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """The replicated records with this node's view of each worker's health."""
        out = []
        for worker_id, record in sorted(self.map.items()):
            entry = self.map.entries[worker_id]
            worker = self.ctx.registry.get(worker_id)
            out.append(
                {
                    "worker_id": worker_id,
                    "url": record.get("url"),
                    "labels": record.get("labels", {}),
                    "priority": record.get("priority"),
                    "cost": record.get("cost"),
                    "written_by": entry.ts.replica,
                    "written_at_ms": entry.ts.wall,
                    "status": worker.status if worker is not None else "unknown",
                    "is_healthy": worker.is_routable if worker is not None else False,
                    "models": list(worker.models) if worker is not None else [],
                    "cluster_load": worker.in_flight + worker.peer_in_flight if worker is not None else 0,
                    **(health_view(worker_id) if health_view is not None else {}),
                }
            )
        return out
