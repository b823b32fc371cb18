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
from smg.router.proxy import proxy


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
    model = request.get("model")
    if model is None:
        if route.model_required:
            raise missing_parameter("model")
    elif not isinstance(model, str) or not model:
        raise GatewayError(400, "invalid_value", "'model' must be a non-empty string", param="model")
    ex.model = model
    ctx.metrics.router_requests(route.name, model or "", "true" if request.get("stream") is True else "false").inc()
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
