"""Control plane: `/workers` CRUD, `/get_loads`, `/flush_cache`, `/start_profile`, `/stop_profile`.

The answers carry the reference's field names, so an operator's scripts and
clients work against either gateway. Its errors differ from the data plane's
on purpose: the reference answers control-plane errors as
`{"error": "<message>", "code": "<CODE>"}` with `code` at the top level
(`WORKER_ALREADY_EXISTS`, `WORKER_NOT_FOUND`, `BAD_REQUEST`), and its clients
read `body["code"]`; every handler here sets that shape on its exchange
(`control_error_body`), while inference routes keep the OpenAI shape. The
`x-smg-error-code` header and the access log carry the same code either way.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import trio

from smg.context import GatewayContext
from smg.http.asgi import read_body, send_json
from smg.http.errors import GatewayError, load_json_object
from smg.http.exchange import Exchange
from smg.upstream.grpc.client import EngineClient
from smg.upstream.grpc.status import EngineStatusError
from smg.workers.registry import DuplicateWorker, Worker, normalize_url, worker_id_for
from smg.workers.spec import SpecError, provider_key, provider_of, replaced_settings, worker_settings

CONTROL_BODY_LIMIT = 1024 * 1024

BAD_REQUEST = "BAD_REQUEST"  # the reference's code for every 400 of its worker API
# Stopping a profile can take minutes while the engine writes its traces: the reference
# waits 630 s for an HTTP worker's /start_profile and /stop_profile (45 s for /flush_cache).
PROFILE_TIMEOUT_SECS = 630.0
ENGINE_CALL_SECS = 5.0  # FlushCache and GetLoads, as the HTTP fan-out's 5 s
# The profile options the reference forwards to an engine's /start_profile, with their JSON types.
PROFILE_OPTIONS: dict[str, type] = {
    "output_dir": str,
    "start_step": int,
    "num_steps": int,
    "activities": list,
    "with_stack": bool,
    "record_shapes": bool,
    "profile_by_stage": bool,
}
JSON_TYPES = {str: "a string", int: "an integer", list: "a list of strings", bool: "true or false"}


def control_error_body(error: GatewayError) -> dict[str, Any]:
    """The reference's control-plane error: message and code at the top level."""
    return {"error": error.message, "code": error.code}


def _control(ex: Exchange) -> None:
    """Answer this exchange's errors (raised here, or by the app: 413, 500) in the control-plane shape."""
    ex.error_shape = control_error_body


def _bad_request(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, BAD_REQUEST, message, param=param)


def _not_found(worker_id: str) -> GatewayError:
    return GatewayError(404, "WORKER_NOT_FOUND", f"Worker {worker_id} not found", param="worker_id")


def _settings(body: dict[str, Any]) -> dict[str, Any]:
    """The mutable worker settings in a request body, type-checked (as a discovery manifest's are)."""
    try:
        return worker_settings(body)
    except SpecError as exc:
        raise _bad_request(str(exc), param=exc.param) from None


async def _body(ex: Exchange, *, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object; a malformed one is the reference's 400 `BAD_REQUEST`.

    `optional`: an empty body stands for `{}` (the profile routes take one or none).
    """
    raw = await read_body(ex.scope, ex.receive, CONTROL_BODY_LIMIT)
    if optional and not raw.strip():
        return {}
    try:
        return load_json_object(raw)
    except GatewayError as error:
        raise _bad_request(error.message) from None


async def list_workers(ctx: GatewayContext, ex: Exchange) -> None:
    _control(ex)
    workers = [w.to_json() for w in ctx.registry]
    healthy = sum(1 for w in workers if w["is_healthy"])
    stats = {
        # the reference's names (every smg worker is a regular one: no prefill/decode split)
        "prefill_count": 0,
        "decode_count": 0,
        "regular_count": len(workers),
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
    _control(ex)
    body = await _body(ex)
    url = body.get("url")
    if not isinstance(url, str) or not url:
        raise _bad_request("missing required parameter: 'url'", param="url")
    settings = _settings(body)
    provider = _provider(body, url, settings)
    if provider is not None:
        settings["provider"] = provider
    try:
        worker = ctx.add_worker(url, **settings)
    except DuplicateWorker:
        existing = worker_id_for(normalize_url(url))
        raise GatewayError(
            409,
            "WORKER_ALREADY_EXISTS",
            f"Worker already exists at URL '{normalize_url(url)}' with ID {existing}. "
            f"Use PUT /workers/{existing} to replace or PATCH /workers/{existing} to update.",
            param="url",
        ) from None
    except ValueError as exc:
        raise _bad_request(str(exc), param="url") from None
    await _accepted(ex, worker, "worker registration started; it serves traffic once its health check passes")


def _provider(body: dict[str, Any], url: str, settings: dict[str, Any]) -> str | None:
    """A hosted provider's API when `body` adds one (`runtime_type: external`), with its key
    checked into `settings`: the body's `api_key`, else this node's environment's (the
    variable `--backend` would read); refused where the key could leak or is missing."""
    try:
        provider = provider_of(body, url)
        if provider is not None:
            settings["api_key"] = provider_key(provider, url, settings.get("api_key"), os.environ)
    except SpecError as exc:
        raise _bad_request(str(exc), param=exc.param) from None
    return provider


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
    _control(ex)
    await send_json(ex.send, 200, _worker(ctx, worker_id).to_json())


async def patch_worker(ctx: GatewayContext, ex: Exchange, worker_id: str) -> None:
    """Change some settings now: 200 with the worker as it is afterwards.

    The reference queues the change and answers 202 `{"status":"accepted","worker_id",...}`;
    here it is applied before the answer, so the answer shows it. `worker_id` is there too,
    for a client that reads the reference's field.
    """
    _control(ex)
    worker = _worker(ctx, worker_id)
    changes = _keep_provider_key(worker, _settings(await _body(ex)))
    for key, value in changes.items():
        setattr(worker, key, value)
    ctx.worker_settings_changed(worker)
    await send_json(ex.send, 200, {**worker.to_json(), "worker_id": worker.id})


def _keep_provider_key(worker: Worker, changes: dict[str, Any]) -> dict[str, Any]:
    """A hosted provider keeps the key it was started with when a change gives none: without
    it the provider refuses every request, and no other key may be sent in its place."""
    if worker.provider is not None and changes.get("api_key", worker.api_key) is None:
        changes.pop("api_key", None)
    return changes


async def put_worker(ctx: GatewayContext, ex: Exchange, worker_id: str) -> None:
    """Replace a worker's settings and probe it again; its URL cannot change."""
    _control(ex)
    worker = _worker(ctx, worker_id)
    body = await _body(ex)
    url = body.get("url", worker.url)
    try:
        same = isinstance(url, str) and normalize_url(url) == worker.url
    except ValueError:
        same = False
    if not same:
        raise _bad_request(
            f"URL mismatch: worker has URL '{worker.url}' but request body has '{url}'. "
            "URL changes are not supported via PUT. Use DELETE + POST instead.",
            param="url",
        )
    try:
        replacement = _keep_provider_key(worker, replaced_settings(body))
    except SpecError as exc:
        raise _bad_request(str(exc), param=exc.param) from None
    for key, value in replacement.items():
        setattr(worker, key, value)
    ctx.worker_settings_changed(worker)
    ctx.registrar.register(worker)
    await _accepted(ex, worker, "worker settings replaced; re-probing")


async def delete_worker(ctx: GatewayContext, ex: Exchange, worker_id: str) -> None:
    _control(ex)
    worker = _worker(ctx, worker_id)
    ctx.remove_worker(worker)
    await _accepted(ex, worker, "worker draining; removed once its in-flight requests finish")


async def get_loads(ctx: GatewayContext, ex: Exchange) -> None:
    """Each routable worker's own load report, plus sums over them.

    `workers` is the reference's list: per worker its URL, `load` (the KV-cache
    tokens in use over all its data-parallel ranks; -1 when the worker did not say
    or reports no capacity, so "unknown" never reads as "idle") and `details`, the
    worker's report as it sent it. The other fields are smg's own.
    """
    _control(ex)
    available = ctx.registry.available_any()
    results: list[tuple[Worker, FanOutResult]] = list(
        await ctx.registrar.fan_out("GET", "/v1/loads", [w for w in available if not w.is_grpc])
    )
    results += await _engine_calls(ctx, [w for w in available if w.is_grpc], _engine_load)
    loads = []
    workers = []
    totals = {"num_running_reqs": 0, "num_waiting_reqs": 0, "num_total_reqs": 0}
    for worker, result in results:
        entry: dict[str, Any] = {"worker_id": worker.id, "worker": worker.url, "gateway_in_flight": worker.in_flight}
        reference: dict[str, Any] = {"worker": worker.url, "load": -1}
        report = _json_or_error(result)
        if isinstance(report, dict) and isinstance(report.get("loads"), list):
            entry["loads"] = report["loads"]
            ranks = [rank for rank in report["loads"] if isinstance(rank, dict)]
            for rank in ranks:
                for key in totals:
                    value = rank.get(key)
                    if isinstance(value, (int, float)):
                        totals[key] += int(value)
            reference["load"] = _used_tokens(ranks)
            reference["details"] = report
        else:
            entry["error"] = report if isinstance(report, str) else "worker sent no load report"
        loads.append(entry)
        workers.append(reference)
    ok = sum(1 for entry in loads if "loads" in entry)
    await send_json(
        ex.send,
        200,
        {
            "workers": workers,
            "total_workers": len(loads),
            "successful": ok,
            "failed": len(loads) - ok,
            "loads": loads,
            "aggregate": totals,
        },
    )


def _used_tokens(ranks: list[dict[str, Any]]) -> int:
    """KV tokens in use over all ranks, or -1 unless some rank reports its capacity (as the reference)."""
    if not any(_number(rank.get("max_total_num_tokens")) > 0 for rank in ranks):
        return -1
    return sum(int(_number(rank.get("num_used_tokens"))) for rank in ranks)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


async def flush_cache(ctx: GatewayContext, ex: Exchange) -> None:
    _control(ex)
    workers = ctx.registry.available_any()
    http = [w for w in workers if not w.is_grpc]
    engines = [w for w in workers if w.is_grpc]
    results: list[tuple[Worker, FanOutResult]] = list(await ctx.registrar.fan_out("POST", "/flush_cache", http))
    results += await _engine_calls(ctx, engines, _flush_engine)
    body = _fan_out_body(results, "workers_flushed", "cache flushed")
    body["total_http_workers"] = len(http)  # as the reference, HTTP and gRPC workers counted apart
    body["total_grpc_workers"] = len(engines)
    body["failed_workers"] = body.get("failed", [])
    await send_json(ex.send, 200 if body["status"] == "success" else 502, body)


async def start_profile(ctx: GatewayContext, ex: Exchange) -> None:
    """Start a profiling run on every worker, or on the one `{"url": ...}` names.

    The body's profile options (`output_dir`, `num_steps`, `activities`, ...) go to
    each engine's own `/start_profile`, as the reference sends them.
    """
    _control(ex)
    body = await _body(ex, optional=True)
    options: dict[str, Any] = {"profile_by_stage": False}
    for name, kind in PROFILE_OPTIONS.items():
        value = body.get(name)
        if value is None:  # absent or null: the engine's default
            continue
        # `type() is`: JSON's true is not an integer, 1 is not true
        strings = not isinstance(value, list) or all(isinstance(item, str) for item in value)
        if type(value) is not kind or not strings:
            raise _bad_request(f"'{name}' must be {JSON_TYPES[kind]}", param=name)
        options[name] = value
    await _profile(ctx, ex, body, "/start_profile", options, "started profiling")


async def stop_profile(ctx: GatewayContext, ex: Exchange) -> None:
    """Stop the profiling run on every worker, or on the one `{"url": ...}` names."""
    _control(ex)
    body = await _body(ex, optional=True)
    await _profile(ctx, ex, body, "/stop_profile", None, "stopped profiling")


async def _profile(
    ctx: GatewayContext, ex: Exchange, body: dict[str, Any], path: str, options: dict[str, Any] | None, done: str
) -> None:
    """Fan `path` out to the chosen workers: 200 `success`, 404 when none matches, 502 when any failed."""
    url = body.get("url")
    if url is not None and not isinstance(url, str):
        raise _bad_request("'url' must be a string", param="url")
    workers = [w for w in ctx.registry if not w.draining]
    if url is not None:
        try:
            wanted = normalize_url(url)
        except ValueError:
            wanted = url
        workers = [w for w in workers if w.url == wanted]
    if not workers:
        what = f"No worker matching url '{url}'" if url is not None else "No workers available for profiling"
        await send_json(ex.send, 404, {"status": "error", "message": what, "workers_profiled": 0, "total_workers": 0})
        return
    http = [w for w in workers if not w.is_grpc]
    results: list[tuple[Worker, FanOutResult]] = list(
        await ctx.registrar.fan_out("POST", path, http, json=options, timeout=PROFILE_TIMEOUT_SECS)
    )
    unsupported = ValueError("profiling gRPC workers is not supported by smg; profile the engine directly")
    results += [(w, unsupported) for w in workers if w.is_grpc]
    answer = _fan_out_body(results, "workers_profiled", done)
    await send_json(ex.send, 200 if answer["status"] == "success" else 502, answer)


FanOutResult = httpx.Response | Exception | dict[str, Any] | None  # a gRPC worker's: its answer, or None for done


async def _engine_calls(
    ctx: GatewayContext, workers: list[Worker], call: Callable[[EngineClient], Awaitable[FanOutResult]]
) -> list[tuple[Worker, FanOutResult]]:
    """`call` on every gRPC worker's client at once, as `Registrar.fan_out` does for HTTP workers;
    a failed call is its exception, in worker order."""
    fleet = ctx.engines
    if fleet is None or not workers:
        return []
    results: list[FanOutResult] = [None] * len(workers)

    async def one(i: int, worker: Worker) -> None:
        try:
            results[i] = await call(fleet.client(worker))
        except (EngineStatusError, ValueError) as exc:
            results[i] = exc

    async with trio.open_nursery() as nursery:
        for i, worker in enumerate(workers):
            nursery.start_soon(one, i, worker)
    return list(zip(workers, results, strict=True))


async def _flush_engine(client: EngineClient) -> None:
    flushed, message = await client.flush_cache(ENGINE_CALL_SECS)
    if not flushed:
        raise ValueError(f"the engine did not flush its cache{': ' + message if message else ''}")


async def _engine_load(client: EngineClient) -> dict[str, Any]:
    """GetLoads in the shape of an HTTP worker's `/v1/loads` (summed over ranks: the engine's
    per-rank detail is not kept)."""
    report = await client.loads(ENGINE_CALL_SECS)
    rank: dict[str, Any] = {
        "num_running_reqs": report.running,
        "num_waiting_reqs": report.waiting,
        "num_total_reqs": report.running + report.waiting,
    }
    if report.token_usage is not None:
        rank["token_usage"] = report.token_usage
    return {"loads": [rank]}


def _fan_out_body(results: list[tuple[Worker, FanOutResult]], count_field: str, done: str) -> dict[str, Any]:
    """The reference's fan-out answer: `status`, `message` ("<done> on N of M workers"), the count
    that worked, `total_workers`; on a failure also `successful` (URLs) and `failed` (`{worker, error}`).
    Any 2xx from a worker counts as done (SGLang answers some of these with a plain-text 200)."""
    failed = [
        {"worker": worker.url, "error": _describe(result)}
        for worker, result in results
        if isinstance(result, Exception) or (isinstance(result, httpx.Response) and not 200 <= result.status_code < 300)
    ]
    ok = len(results) - len(failed)
    body: dict[str, Any] = {
        "status": "success" if not failed else ("partial_success" if ok else "failed"),
        "message": f"{done} on {ok} of {len(results)} workers",
        count_field: ok,
        "total_workers": len(results),
    }
    if failed:
        failed_urls = {entry["worker"] for entry in failed}
        body["successful"] = [worker.url for worker, _ in results if worker.url not in failed_urls]
        body["failed"] = failed
    return body


def _describe(result: FanOutResult) -> str:
    if isinstance(result, EngineStatusError):
        return f"{result.status}: {result.details}"
    if isinstance(result, Exception):
        return f"{type(result).__name__}: {result}"
    if isinstance(result, httpx.Response):
        return f"HTTP {result.status_code}"
    return "done"


def _json_or_error(result: FanOutResult) -> Any:
    if not isinstance(result, httpx.Response):
        return result if isinstance(result, dict) else _describe(result)
    if result.status_code != 200:
        return _describe(result)
    try:
        return result.json()
    except ValueError:
        return "worker sent invalid JSON"
