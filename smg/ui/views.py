"""What the cluster page and `smg mesh status` read: one gateway's view, and the cluster's.

`node_view` is what this gateway sees, built from its own state only (registry, breakers, the
workers' load reports, the tenant limiter, the replicated stores' digests, its events and
series). `cluster_view` adds the membership and every live peer's `node_view`, which each peer
builds for itself and sends back on the mesh's authenticated streams
(`ClusterNode.ask_views`), so the page shows each gateway's view as that gateway has it, not as
replicated here; no credential leaves the gateway, and each process of `--processes N` answers
for itself. A peer that does not answer within `PEER_TIMEOUT_SECS` is shown with the reason.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import trio

from smg import __version__
from smg.context import GatewayContext

PEER_TIMEOUT_SECS = 2.0
EVENTS_SHOWN = 50
ALL_SERIES = ("",)
PEER_SERIES = ("gateway|", "mesh|")  # what the page draws of the other gateways' history
LIVE = ("alive", "suspect")
DIGEST_CACHE_SECS = 1.0  # the page polls every 2 s: digests (whole stores sorted and hashed) at most once a second


def node_name(ctx: GatewayContext) -> str:
    """The mesh member name; without `--ha-mesh`, `--mesh-server-name` or the host name."""
    cluster = ctx.cluster
    if cluster is not None:
        return str(cluster.name)
    return ctx.config.mesh_server_name or socket.gethostname()


def worker_view(worker: Any, now: float) -> dict[str, Any]:
    """A worker as this gateway sees it: `GET /workers`' fields plus its load report, KV use,
    cache hit rate per model and the models it is cooling down for (`now`: trio's clock)."""
    view: dict[str, Any] = worker.to_json()
    view.update(
        in_flight=worker.in_flight,
        peer_in_flight=worker.peer_in_flight,
        provider=worker.provider,
        reported_load=worker.reported_load,
        reported_waiting=worker.reported_waiting,
        kv_usage=worker.reported_token_usage,
        cache={
            model: {"prompt_tokens": prompt, "cached_tokens": cached, "hit_rate": round(cached / prompt, 4) if prompt else None}
            for model, (prompt, cached) in sorted(worker.tokens.items())
        },
        cooling_down={model: round(until - now, 1) for model, (until, _status) in worker.cooldowns.items() if until > now},
    )
    return view


def node_view(ctx: GatewayContext, series: tuple[str, ...] | None = ALL_SERIES) -> dict[str, Any]:
    """This gateway's view (`GET /ui/api/node`), with the time series under `series` (None: none)."""
    wall, now = time.time(), trio.current_time()
    status, readiness = ctx.readiness()
    view: dict[str, Any] = {
        "node_name": node_name(ctx),
        "version": __version__,
        "time": round(wall, 3),
        "policy": ctx.config.policy,
        "ready": status == 200,
        "readiness": readiness,
        "draining": ctx.draining,
        "in_flight": ctx.in_flight,
        "requests_answered": ctx.answered,
        "requests_failed": ctx.failed,
        "workers": [worker_view(worker, now) for worker in sorted(ctx.registry, key=lambda w: w.url)],
        "tenants": ctx.limiter.report(wall) if ctx.limiter is not None else {},
        "events": ctx.events.recent(EVENTS_SHOWN),
        "events_total": ctx.events.total,
    }
    cluster = ctx.cluster
    if cluster is not None:
        replication = cluster.replication
        view["replication"] = {
            "stores": cluster.store_digests(DIGEST_CACHE_SECS),
            "lagging": replication.lagging(cluster.live_peers(), now) if replication is not None else [],
            "lag_mean_ms": round(replication.lag_sum / replication.lag_count * 1000, 2)
            if replication is not None and replication.lag_count
            else None,
            "errors": cluster.replication_errors,
            "synced": cluster.synced,
        }
    if series is not None:
        view["series"] = ctx.series.as_json(series)
    return view


def peer_view(ctx: GatewayContext, series: bool) -> dict[str, Any]:
    """What this gateway answers a peer's page (`ClusterNode.describe`): its view, with only the
    history the page draws per gateway."""
    return node_view(ctx, PEER_SERIES if series else None)


def members(ctx: GatewayContext) -> dict[str, Any]:
    """`/mesh/status`'s members and store digests, always with this gateway among them (alone
    without `--ha-mesh`, or while its mesh is not running)."""
    cluster = ctx.cluster
    name = node_name(ctx)
    body: dict[str, Any] = (
        dict(cluster.status(DIGEST_CACHE_SECS)) if cluster is not None else {"node_name": name, "node_count": 1, "stores": {}}
    )
    nodes = list(body.get("nodes", []))
    if all(node["name"] != name for node in nodes):
        nodes.insert(0, {"name": name, "status": "alive", "incarnation": 0})
    body["nodes"] = nodes
    return body


async def cluster_view(ctx: GatewayContext, *, series: bool = True) -> dict[str, Any]:
    """The membership plus every member's own view (`GET /ui/api/cluster`); `agreeing` tells, per
    store, whether every gateway that answered holds the same digest."""
    body = members(ctx)
    own = node_view(ctx, ALL_SERIES if series else None)
    views: dict[str, dict[str, Any]] = {own["node_name"]: own}
    cluster = ctx.cluster
    answers = await cluster.ask_views(series, PEER_TIMEOUT_SECS) if cluster is not None else {}
    for node in body["nodes"]:
        name = node["name"]
        if name == own["node_name"]:
            continue
        answer = answers.get(name)
        if isinstance(answer, dict):
            views[name] = {**answer, "node_name": name}  # under the name the mesh authenticated
        elif answer is not None:
            views[name] = {"node_name": name, "error": answer}
        else:
            views[name] = {"node_name": name, "error": f"not asked: the member is {node['status']}"}
    body["views"] = views
    body["agreeing"] = agreement(views)
    return body


def agreement(views: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """Per replicated store: True when every view that reports it has the same digest."""
    digests: dict[str, set[str]] = {}
    for view in views.values():
        replication = view.get("replication")
        stores = replication.get("stores") if isinstance(replication, dict) else None
        if not isinstance(stores, dict):
            continue
        for store, info in stores.items():
            digests.setdefault(str(store), set()).add(str(info.get("digest") if isinstance(info, dict) else info))
    return {store: len(found) == 1 for store, found in sorted(digests.items())}
