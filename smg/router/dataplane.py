"""Inference routes: parse just enough, pick a worker, forward the body unchanged."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from smg.asgi import read_body, send_bytes, send_json
from smg.router.context import GatewayContext
from smg.router.errors import GatewayError, load_json_object, missing_parameter, model_not_found
from smg.router.exchange import REQUEST_ID_HEADER, Exchange
from smg.router.policies import RequestInfo
from smg.router.upstream import UpstreamConnectError, UpstreamError, UpstreamResponse
from smg.router.workers import Worker

ROUTED_WORKER_HEADER = b"x-smg-routed-worker-id"
# Client headers passed on to workers; everything else stays at the gateway.
FORWARDED_HEADERS = frozenset({b"authorization", b"x-correlation-id", b"traceparent", b"tracestate", b"x-smg-routing-key"})
_JSON_TYPE = b"application/json"


@dataclass(frozen=True)
class InferenceRoute:
    name: str  # the `route` label in metrics
    target: bytes  # path on the worker
    model_required: bool = True
    transform: Callable[[dict[str, Any], bytes, str, str], bytes] | None = None


def rerank_response(request: dict[str, Any], payload: bytes, model: str, request_id: str) -> bytes:
    """Wrap a worker's bare rerank list as `{id, object, created, model, results, usage}`."""
    results = json.loads(payload)
    usage = None
    if isinstance(results, dict):  # a worker that already answers the wrapped shape
        usage = results.get("usage")
        results = results.get("results", [])
    top_k = request.get("top_k", request.get("top_n"))
    if isinstance(top_k, int) and top_k >= 0:
        results = results[:top_k]
    return json.dumps(
        {"id": request_id, "object": "rerank", "created": int(time.time()), "model": model, "results": results, "usage": usage},
        separators=(",", ":"),
    ).encode()


ROUTES = {
    "/v1/chat/completions": InferenceRoute("chat", b"/v1/chat/completions"),
    "/v1/completions": InferenceRoute("completions", b"/v1/completions"),
    "/v1/embeddings": InferenceRoute("embeddings", b"/v1/embeddings"),
    "/generate": InferenceRoute("generate", b"/generate", model_required=False),
    "/v1/rerank": InferenceRoute("rerank", b"/v1/rerank", transform=rerank_response),
    "/rerank": InferenceRoute("rerank", b"/v1/rerank", transform=rerank_response),
}


def choose_worker(ctx: GatewayContext, model: str | None, path: str) -> Worker:
    registry = ctx.registry
    workers = registry.available(model) if model is not None else registry.available_any()
    if not workers:
        if model is not None and not registry.serves(model) and all(w.models for w in registry):
            raise model_not_found(model)
        what = f"model '{model}'" if model is not None else "this request"
        raise GatewayError(503, "no_available_workers", f"no available worker for {what}")
    return ctx.policy.select(workers, RequestInfo(model or "", path))


def upstream_headers(ex: Exchange, worker: Worker) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", _JSON_TYPE), (REQUEST_ID_HEADER, ex.request_id.encode())]
    for name, value in ex.scope["headers"]:
        if name in FORWARDED_HEADERS:
            if name == b"authorization" and worker.api_key:
                continue
            headers.append((name, value))
    if worker.api_key:
        headers.append((b"authorization", b"Bearer " + worker.api_key.encode()))
    return headers


async def handle_inference(ctx: GatewayContext, ex: Exchange, route: InferenceRoute) -> None:
    body = await read_body(ex.scope, ex.receive, ctx.config.max_payload_size)
    request = load_json_object(body)
    model = request.get("model")
    if model is None:
        if route.model_required:
            raise missing_parameter("model")
    elif not isinstance(model, str) or not model:
        raise GatewayError(400, "invalid_value", "'model' must be a non-empty string", param="model")
    ex.model = model
    worker = choose_worker(ctx, model, ex.scope["path"])
    ex.worker = worker
    ctx.metrics.router_requests(route.name, model or "", "true" if request.get("stream") is True else "false").inc()
    active = ctx.metrics.worker_active(worker.url)
    worker.in_flight += 1
    active.inc()
    try:
        await forward(ctx, ex, route, worker, upstream_headers(ex, worker), body, request)
    finally:
        worker.in_flight -= 1
        active.dec()


async def forward(
    ctx: GatewayContext,
    ex: Exchange,
    route: InferenceRoute,
    worker: Worker,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    request: dict[str, Any],
) -> None:
    """Call the worker and answer the client, ending cleanly on every failure."""
    error: GatewayError | None = None
    answer: tuple[int, bytes, bytes] | None = None
    routed = (ROUTED_WORKER_HEADER, worker.url.encode())
    with trio.move_on_after(ctx.config.request_timeout_secs) as deadline:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_disconnect, ex, nursery.cancel_scope)
            try:
                async with ctx.upstream.request(worker.origin, b"POST", route.target, headers, body) as response:
                    ctx.metrics.upstream_responses(worker.url, str(response.status)).inc()
                    content_type = _content_type(response)
                    if content_type.startswith(b"text/event-stream"):
                        await relay_events(ctx, ex, worker, response, content_type, routed)
                    else:
                        answer = (response.status, content_type, await response.read())
            except UpstreamConnectError as exc:
                error = GatewayError(502, "upstream_connect_error", f"cannot reach worker {worker.url}: {exc}")
            except UpstreamError as exc:
                error = GatewayError(502, "upstream_error", f"worker {worker.url} failed: {exc}")
            nursery.cancel_scope.cancel()
    if ex.client_gone:
        ex.status = 499
        return
    if deadline.cancelled_caught:
        error = GatewayError(
            504, "upstream_timeout", f"worker {worker.url} did not answer within {ctx.config.request_timeout_secs:g}s"
        )
    if error is not None:
        await ex.fail(error)
    elif answer is not None:  # sent after the worker connection went back to the pool
        status, content_type, payload = answer
        if route.transform is not None and status == 200:
            try:
                payload = route.transform(request, payload, ex.model or "", ex.request_id)
            except (ValueError, TypeError, AttributeError) as exc:
                message = f"worker {worker.url} sent an unexpected {route.name} answer: {exc}"
                await ex.fail(GatewayError(502, "upstream_invalid_response", message))
                return
        await send_bytes(ex.send, status, payload, [routed], (b"content-type", content_type))


async def _cancel_on_disconnect(ex: Exchange, scope: trio.CancelScope) -> None:
    while (await ex.receive())["type"] != "http.disconnect":
        pass
    if not ex.finished:  # hypercorn also reports a disconnect once the response is complete
        ex.client_gone = True
        scope.cancel()


def _content_type(response: UpstreamResponse) -> bytes:
    for name, value in response.headers:
        if name == b"content-type":
            return value
    return _JSON_TYPE


async def relay_events(
    ctx: GatewayContext,
    ex: Exchange,
    worker: Worker,
    response: UpstreamResponse,
    content_type: bytes,
    routed: tuple[bytes, bytes],
) -> None:
    """Relay an SSE body as raw bytes, as it arrives; end with an error event if the worker breaks."""
    ex.event_stream = True
    send = ex.send
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [(b"content-type", content_type), (b"cache-control", b"no-cache"), routed],
        }
    )
    chunks = response.aiter_body()
    try:
        first = await anext(chunks, None)
        ctx.metrics.ttft(ex.model or "").observe(time.perf_counter() - ex.started_at)
        if first is not None:
            await send({"type": "http.response.body", "body": first, "more_body": True})
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except UpstreamError as exc:
        await ex.fail(GatewayError(502, "upstream_stream_error", f"worker {worker.url} failed mid-stream: {exc}"))
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def handle_models(ctx: GatewayContext, ex: Exchange) -> None:
    data = [
        {"id": model, "object": "model", "created": 0, "owned_by": worker.runtime_type}
        for model, worker in sorted(ctx.registry.models().items())
    ]
    await send_json(ex.send, 200, {"object": "list", "data": data})
