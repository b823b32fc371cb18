"""Inference requests: parse just enough, admit, and hand the unchanged body to the attempt loop."""

from __future__ import annotations

import json
import time
from typing import Any

from smg.context import GatewayContext
from smg.dataplane.attempts import proxy, text_of
from smg.dataplane.routes import InferenceRoute
from smg.http.asgi import read_body, send_json
from smg.http.errors import GatewayError, load_json_object, missing_parameter
from smg.http.exchange import Exchange
from smg.http.schemas import check_inference
from smg.limits.tenants import DEFAULT_TENANT


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
