"""`/mesh/*`: the cluster as this node sees it, and cluster-wide key operations."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

import trio

from smg.context import GatewayContext
from smg.http.asgi import read_body, send_json
from smg.http.errors import ERROR_CODE_HEADER, GatewayError, error_body, load_json_object, missing_parameter
from smg.http.exchange import Exchange
from smg.mesh.messages import State

KEY_OPS = ("install", "use", "remove")


def _cluster(ctx: GatewayContext) -> Any:
    if ctx.cluster is None:
        raise GatewayError(404, "mesh_not_enabled", "this gateway runs without --ha-mesh")
    return ctx.cluster


async def mesh_status(ctx: GatewayContext, ex: Exchange) -> None:
    await send_json(ex.send, 200, _cluster(ctx).status())


async def mesh_health(ctx: GatewayContext, ex: Exchange) -> None:
    """`healthy` when every known member is alive and every peer keeps up with replication.

    A node left alone by a key or label mismatch says so: `unauthenticated_peers`
    lists who sent frames this node could not open (without making it degraded: a
    stray sender does not hurt this cluster), and a node whose seeds never answered
    is degraded with each seed's fate in `seeds` and the likely cause in `reason`."""
    cluster = _cluster(ctx)
    diagnostics = cluster.mesh.diagnostics()
    members = cluster.mesh.members()
    live = [m for m in members if m["status"] in (State.ALIVE.value, State.SUSPECT.value)]
    troubled = [m["name"] for m in members if m["status"] in (State.SUSPECT.value, State.DEAD.value)]
    lagging = cluster.replication.lagging(cluster.live_peers(), trio.current_time()) if cluster.replication else []
    swim = cluster.mesh.swim  # its seeds are the resolved addresses other than ours (flags, DNS, --router-selector)
    alone = swim is not None and bool(swim.seeds) and len(live) <= 1
    body: dict[str, Any] = {
        "status": "degraded" if troubled or lagging or alone or cluster.error else "healthy",
        "node_name": cluster.name,
        "cluster_size": len(live),
        "stores_healthy": not lagging,
    }
    if troubled:
        body["unreachable_members"] = troubled
    if lagging:
        body["lagging_replication"] = lagging
    if diagnostics["unauthenticated_peers"]:
        body["unauthenticated_peers"] = diagnostics["unauthenticated_peers"]
    if alone:
        body["reason"] = diagnostics.get("reason", "no seed answered yet")
        if "seeds" in diagnostics:
            body["seeds"] = diagnostics["seeds"]
    if cluster.error:
        body["reason"] = cluster.error
    await send_json(ex.send, 200, body)


async def mesh_workers(ctx: GatewayContext, ex: Exchange) -> None:
    cluster = _cluster(ctx)
    records = cluster.workers.records(cluster.health.view) if cluster.workers is not None else []
    await send_json(ex.send, 200, {"node_name": cluster.name, "workers": records, "total": len(records)})


async def mesh_rate_limits(ctx: GatewayContext, ex: Exchange) -> None:
    """Per tenant and limit: the configured limit, this node's applied share of it, the cluster's use."""
    cluster = _cluster(ctx)
    limiter = ctx.limiter
    body: dict[str, Any] = {"node_name": cluster.name, "share": cluster.limit_share(), "tenants": {}}
    if limiter is not None:
        body["tenants"] = limiter.report(time.time())
    await send_json(ex.send, 200, body)


async def mesh_faults(ctx: GatewayContext, ex: Exchange) -> None:
    """Testing only (`--mesh-fault-injection`): drop mesh traffic to/from members, or at random.

    `{"drop_to": ["host:port", ...], "drop_from": ["host", ...], "loss": 0.1, "delay_ms": 50}`
    replaces the filter; `{}` clears it. Used by the chaos suite and benchmarks to partition gateways
    where network namespaces are not available.
    """
    cluster = _cluster(ctx)
    if not cluster.config.mesh_fault_injection:
        raise GatewayError(403, "fault_injection_disabled", "start the gateway with --mesh-fault-injection to use this")
    body = load_json_object(await read_body(ex.scope, ex.receive, 64 * 1024))
    drop_to, drop_from, loss = body.get("drop_to", []), body.get("drop_from", []), body.get("loss", 0.0)
    delay_ms = body.get("delay_ms", 0)
    if not isinstance(delay_ms, (int, float)) or isinstance(delay_ms, bool) or not 0 <= delay_ms <= 10_000:
        raise GatewayError(400, "invalid_value", "'delay_ms' must be a number from 0 to 10000", param="delay_ms")
    if not all(isinstance(v, list) and all(isinstance(a, str) for a in v) for v in (drop_to, drop_from)):
        raise GatewayError(400, "invalid_value", "'drop_to' and 'drop_from' must be lists of addresses")
    if not isinstance(loss, (int, float)) or isinstance(loss, bool) or not 0 <= loss <= 1:
        raise GatewayError(400, "invalid_value", "'loss' must be a number between 0 and 1", param="loss")
    faults = cluster.mesh.transport.faults
    faults.drop_to, faults.drop_from, faults.loss = set(drop_to), set(drop_from), float(loss)
    faults.delay = delay_ms / 1000
    await send_json(
        ex.send,
        200,
        {"drop_to": sorted(faults.drop_to), "drop_from": sorted(faults.drop_from), "loss": faults.loss, "delay_ms": delay_ms},
    )


async def mesh_keys(ctx: GatewayContext, ex: Exchange) -> None:
    """Apply a keyring operation on every live member; answer each member's result (as `serf keys`)."""
    cluster = _cluster(ctx)
    body = load_json_object(await read_body(ex.scope, ex.receive, 64 * 1024))
    op, key_text = body.get("op"), body.get("key")
    if op not in KEY_OPS:
        raise GatewayError(400, "invalid_value", f"'op' must be one of {', '.join(KEY_OPS)}", param="op")
    if not isinstance(key_text, str) or not key_text:
        raise missing_parameter("key")
    try:
        key = base64.b64decode(key_text, validate=True)
    except (binascii.Error, ValueError):
        raise GatewayError(400, "invalid_value", "'key' must be base64", param="key") from None
    if len(key) not in (16, 24, 32):
        raise GatewayError(400, "invalid_value", f"a mesh key is 16, 24 or 32 bytes, got {len(key)}", param="key")
    results = await cluster.mesh.key_op(op, key)
    failed = {name: error for name, error in results.items() if error is not None}
    body = {
        "op": op,
        "members": len(results),
        "succeeded": len(results) - len(failed),
        "results": {name: {"ok": error is None, "error": error} for name, error in sorted(results.items())},
    }
    if failed:
        message = f"'{op}' failed on {len(failed)} of {len(results)} members: " + "; ".join(
            f"{name}: {error}" for name, error in sorted(failed.items())
        )
        body.update(error_body(502, "key_operation_failed", message))
        await send_json(ex.send, 502, body, [(ERROR_CODE_HEADER, b"key_operation_failed")])
    else:
        await send_json(ex.send, 200, body)
