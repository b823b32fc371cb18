"""Control plane: `/workers` CRUD, `/get_loads`, `/flush_cache` (reference shapes)."""

from __future__ import annotations

import sys
from typing import Any

import httpx

from smg.context import GatewayContext
from smg.http.asgi import read_body, send_json
from smg.http.errors import GatewayError, load_json_object, missing_parameter
from smg.http.exchange import Exchange
from smg.workers.registry import DuplicateWorker, Worker, normalize_url

CONTROL_BODY_LIMIT = 1024 * 1024
MAX_PRIORITY = 2**32 - 1


def _not_found(worker_id: str) -> GatewayError:
    return GatewayError(404, "WORKER_NOT_FOUND", f"no worker with id '{worker_id}'", param="worker_id")


def _settings(body: dict[str, Any]) -> dict[str, Any]:
    """The mutable worker settings in a request body, type-checked."""
    out: dict[str, Any] = {}
    if "labels" in body:
        labels = body["labels"]
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise GatewayError(400, "invalid_value", "'labels' must map strings to strings", param="labels")
        out["labels"] = dict(labels)
    if "priority" in body:
        # a u32, as the reference's: the replicated record is msgpack, whose integers stop at 64 bits
        if (
            not isinstance(body["priority"], int)
            or isinstance(body["priority"], bool)
            or not 0 <= body["priority"] <= MAX_PRIORITY
        ):
            raise GatewayError(400, "invalid_value", f"'priority' must be an integer from 0 to {MAX_PRIORITY}", param="priority")
        out["priority"] = body["priority"]
    if "cost" in body:
        cost = body["cost"]
        # bounded by the largest float: 1e999 parses as infinity, and 10**400 has no float
        if not isinstance(cost, (int, float)) or isinstance(cost, bool) or not 0 <= cost <= sys.float_info.max:
            raise GatewayError(400, "invalid_value", "'cost' must be a finite non-negative number", param="cost")
        out["cost"] = float(body["cost"])
    if "api_key" in body:
        if body["api_key"] is not None and not isinstance(body["api_key"], str):
            raise GatewayError(400, "invalid_value", "'api_key' must be a string", param="api_key")
        out["api_key"] = body["api_key"] or None
    return out


async def _body(ex: Exchange) -> dict[str, Any]:
    return load_json_object(await read_body(ex.scope, ex.receive, CONTROL_BODY_LIMIT))


async def list_workers(ctx: GatewayContext, ex: Exchange) -> None:
    workers = [w.to_json() for w in ctx.registry]
    healthy = sum(1 for w in workers if w["is_healthy"])
    stats = {
        "total_workers": len(workers),
        "healthy_workers": healthy,
        "unhealthy_workers": len(workers) - healthy,
        "total_load": sum(w["load"] for w in workers),
        "regular_workers": len(workers),
        "prefill_workers": 0,
        "decode_workers": 0,
    }
    await send_json(ex.send, 200, {"workers": workers, "total": len(workers), "stats": stats})


async def add_worker(ctx: GatewayContext, ex: Exchange) -> None:
    body = await _body(ex)
    url = body.get("url")
    if not isinstance(url, str) or not url:
        raise missing_parameter("url")
    try:
        worker = ctx.add_worker(url, **_settings(body))
    except DuplicateWorker:
        raise GatewayError(
            409, "WORKER_ALREADY_EXISTS", f"a worker with URL '{normalize_url(url)}' already exists", param="url"
        ) from None
    except ValueError as exc:
        raise GatewayError(400, "invalid_value", str(exc), param="url") from None
    await _accepted(ex, worker, "worker registration started; it serves traffic once its health check passes")


async def _accepted(ex: Exchange, worker: Worker, message: str) -> None:
    """202 for a change that completes in the background; `location` is where to watch it."""
    location = f"/workers/{worker.id}"
    body = {"status": "accepted", "worker_id": worker.id, "url": worker.url, "location": location, "message": message}
    await send_json(ex.send, 202, body, [(b"location", location.encode())])


def _worker(ctx: GatewayContext, worker_id: str) -> Worker:
    worker = ctx.registry.get(worker_id)
    if worker is None:
        raise _not_found(worker_id)
    return worker


async def get_worker(ctx: GatewayContext, ex: Exchange, worker_id: str) -> None:
    await send_json(ex.send, 200, _worker(ctx, worker_id).to_json())


async def patch_worker(ctx: GatewayContext, ex: Exchange, worker_id: str) -> None:
    worker = _worker(ctx, worker_id)
    changes = _settings(await _body(ex))
    for key, value in changes.items():
        setattr(worker, key, value)
    ctx.worker_settings_changed(worker)
    await send_json(ex.send, 200, worker.to_json())


async def put_worker(ctx: GatewayContext, ex: Exchange, worker_id: str) -> None:
    """Replace a worker's settings and probe it again; its URL cannot change."""
    worker = _worker(ctx, worker_id)
    body = await _body(ex)
    url = body.get("url", worker.url)
    try:
        same = isinstance(url, str) and normalize_url(url) == worker.url
    except ValueError:
        same = False
    if not same:
        raise GatewayError(400, "WORKER_URL_MISMATCH", "PUT cannot change a worker's URL; add a new worker instead", param="url")
    replacement = {"labels": {}, "priority": 50, "cost": 1.0, "api_key": None, **_settings(body)}
    for key, value in replacement.items():
        setattr(worker, key, value)
    ctx.worker_settings_changed(worker)
    ctx.registrar.register(worker)
    await _accepted(ex, worker, "worker settings replaced; re-probing")


async def delete_worker(ctx: GatewayContext, ex: Exchange, worker_id: str) -> None:
    worker = _worker(ctx, worker_id)
    ctx.remove_worker(worker)
    await _accepted(ex, worker, "worker draining; removed once its in-flight requests finish")


async def get_loads(ctx: GatewayContext, ex: Exchange) -> None:
    results = await ctx.registrar.fan_out("GET", "/v1/loads", ctx.registry.available_any())
    loads = []
    totals = {"num_running_reqs": 0, "num_waiting_reqs": 0, "num_total_reqs": 0}
    for worker, result in results:
        entry: dict[str, Any] = {"worker_id": worker.id, "worker": worker.url, "gateway_in_flight": worker.in_flight}
        report = _json_or_error(result)
        if isinstance(report, dict) and isinstance(report.get("loads"), list):
            entry["loads"] = report["loads"]
            for rank in report["loads"]:
                for key in totals:
                    value = rank.get(key) if isinstance(rank, dict) else None
                    if isinstance(value, (int, float)):
                        totals[key] += int(value)
        else:
            entry["error"] = report if isinstance(report, str) else "worker sent no load report"
        loads.append(entry)
    ok = sum(1 for entry in loads if "loads" in entry)
    await send_json(
        ex.send,
        200,
        {"total_workers": len(loads), "successful": ok, "failed": len(loads) - ok, "loads": loads, "aggregate": totals},
    )


async def flush_cache(ctx: GatewayContext, ex: Exchange) -> None:
    results = await ctx.registrar.fan_out("POST", "/flush_cache", ctx.registry.available_any())
    failed = []
    for worker, result in results:
        if isinstance(result, Exception) or result.status_code != 200:
            failed.append({"worker": worker.url, "error": _describe(result)})
    flushed = len(results) - len(failed)
    status = "success" if not failed else ("partial_success" if flushed else "failed")
    await send_json(
        ex.send,
        200 if not failed else 502,
        {
            "status": status,
            "message": f"cache flushed on {flushed} of {len(results)} workers",
            "workers_flushed": flushed,
            "total_workers": len(results),
            "failed_workers": failed,
        },
    )


def _describe(result: httpx.Response | Exception) -> str:
    if isinstance(result, Exception):
        return f"{type(result).__name__}: {result}"
    return f"HTTP {result.status_code}"


def _json_or_error(result: httpx.Response | Exception) -> Any:
    if isinstance(result, Exception) or result.status_code != 200:
        return _describe(result)
    try:
        return result.json()
    except ValueError:
        return "worker sent invalid JSON"
