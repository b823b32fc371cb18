"""Inference routes: parse just enough, admit, and hand the unchanged body to the proxy."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from smg.asgi import read_body, send_json
from smg.router.context import GatewayContext
from smg.router.errors import GatewayError, load_json_object, missing_parameter
from smg.router.exchange import Exchange
from smg.router.proxy import proxy, text_of
from smg.router.schemas import check_inference
from smg.router.tenant_limits import DEFAULT_TENANT


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


async def handle_inference(ctx: GatewayContext, ex: Exchange, route: InferenceRoute) -> None:
    body = await read_body(ex.scope, ex.receive, ctx.config.max_payload_size)
    request = load_json_object(body)
    check_inference(route.name, request)
    model = request.get("model")
    if model is None:
        if route.model_required:
            raise missing_parameter("model")
    elif not isinstance(model, str) or not model:
        raise GatewayError(400, "invalid_value", "'model' must be a non-empty string", param="model")
    ex.model = model
    await dispatch(ctx, ex, route, request, body)


async def dispatch(ctx: GatewayContext, ex: Exchange, route: InferenceRoute, request: dict[str, Any], body: bytes) -> None:
    """Count, hold to the tenant's limits, admit and proxy one parsed request (`ex.model` set).
    The gateway's own APIs (Responses, Messages) send the requests they build through here too."""
    model = ex.model
    stream = request.get("stream") is True
    ctx.metrics.router_requests(route.name, model or "", "true" if stream else "false").inc()
    limiter = ctx.limiter
    if limiter is None:
        await _admitted(ctx, ex, route, request, body)
        return
    tenant = ex.tenant or DEFAULT_TENANT
    counts_tokens = limiter.limits.for_tenant(tenant).tokens_per_minute is not None
    prompt_tokens = len(text_of(ex, request)) // 4 + 1 if counts_tokens else 0  # ~4 characters a token, until usage
    refusal = limiter.admit(tenant, prompt_tokens, time.time())
    if refusal is not None:
        ctx.metrics.rate_limit("tenant_limited").inc()
        raise GatewayError(
            429,
            "rate_limit_exceeded",
            f"tenant '{tenant}' is over its {refusal.kind.replace('_', ' ')} limit "
            f"({refusal.used:.0f} used of {refusal.limit:g} in the last minute); retry in {refusal.retry_after}s",
            type="rate_limit_error",
            headers=[(b"retry-after", str(refusal.retry_after).encode())],
        )
    if counts_tokens:
        ex.want_usage = True
        if stream and not _asks_usage(request):
            # so the stream reports its tokens; the options may be null (or anything on /v1/messages, not its field)
            options = request.get("stream_options")
            request["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
            body = json.dumps(request, separators=(",", ":")).encode()
    try:
        await _admitted(ctx, ex, route, request, body)
    finally:
        if ex.completion_tokens:
            limiter.charge_tokens(tenant, ex.completion_tokens, time.time())


def _asks_usage(request: dict[str, Any]) -> bool:
    options = request.get("stream_options")
    return isinstance(options, dict) and "include_usage" in options


async def _admitted(ctx: GatewayContext, ex: Exchange, route: InferenceRoute, request: dict[str, Any], body: bytes) -> None:
    admission = ctx.admission
    if admission.unlimited:
        await proxy(ctx, ex, route, request, body)
        return
    try:
        how = await admission.acquire()
    except GatewayError as error:
        ctx.metrics.rate_limit(error.code).inc()
        raise
    ctx.metrics.rate_limit(how).inc()
    try:
        await proxy(ctx, ex, route, request, body)  # the permit is held until the body, stream included, ends
    finally:
        admission.release()


async def handle_models(ctx: GatewayContext, ex: Exchange) -> None:
    data = [
        {"id": model, "object": "model", "created": 0, "owned_by": worker.runtime_type}
        for model, worker in sorted(ctx.registry.models().items())
    ]
    await send_json(ex.send, 200, {"object": "list", "data": data})
