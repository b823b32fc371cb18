"""Inference requests: parse just enough, admit, and hand the body to the attempt loop, as sent
(unless an alias or a tenant's token limit must change it).

Model aliases (`--model-alias ALIAS=CANONICAL`) are resolved here, in `dispatch`, the one path
every inference request takes (clients' and the Responses and Messages APIs' inner chat
completions alike). A request naming an alias is routed, counted and limited as the canonical
model, and its body is rewritten to name the canonical model: the workers were registered
under that name and have never heard of the alias. Their answers pass through unchanged, so
the `model` a client reads back names the model that ran, as with the reference gateway (which
also rewrites only the request). Only a request that used an alias pays for the rewrite (a
parse was done anyway, a dump is added); every other request keeps its original bytes.
"""

from __future__ import annotations

import time
from typing import Any

from smg.config.workers import alias_table
from smg.context import GatewayContext
from smg.dataplane.attempts import asks_usage, proxy, text_of
from smg.dataplane.relay import MESSAGES_ROUTE
from smg.dataplane.routes import InferenceRoute
from smg.http.asgi import dump_json, read_body, send_json
from smg.http.errors import GatewayError, load_json_object, missing_parameter
from smg.http.exchange import Exchange
from smg.http.schemas import check_inference
from smg.limits.tenants import DEFAULT_TENANT
from smg.observability import tracing


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
    rewrite = False  # the body no longer matches `request`: dump it again before it leaves
    if model is not None:
        canonical = ctx.canonical_model(model)
        if canonical is not None:
            ex.model = model = request["model"] = canonical
            rewrite = True
    stream = request.get("stream") is True
    ctx.metrics.router_requests(route.name, model or "", "true" if stream else "false").inc()
    limiter = ctx.limiter
    if limiter is None:
        await _admitted(ctx, ex, route, request, dump_json(request) if rewrite else body)
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
        if stream and ex.route != MESSAGES_ROUTE and not asks_usage(request):
            # so the stream reports its tokens, even when the client asked for none (the options may be null).
            # A Messages stream always does (`message_delta`), and Anthropic refuses a field it does not know.
            options = request.get("stream_options")
            request["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
            rewrite = True
    if rewrite:
        body = dump_json(request)
    try:
        await _admitted(ctx, ex, route, request, body)
    finally:
        if ex.completion_tokens:
            limiter.charge_tokens(tenant, ex.completion_tokens, time.time())


async def _admitted(ctx: GatewayContext, ex: Exchange, route: InferenceRoute, request: dict[str, Any], body: bytes) -> None:
    admission = ctx.admission
    if admission.unlimited:
        await proxy(ctx, ex, route, request, body)
        return
    try:
        if tracing.ENABLED:
            with tracing.span("smg.admission") as waited:  # its length is the queue wait
                how = await admission.acquire()
                waited.set_attribute("smg.admission.result", how)
        else:
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
    """The served models, then the aliases of served models (as OpenAI lists its aliases beside
    the models they name), each alias owned as its model is. Aliases come last so that a client
    taking the first entry still gets a model a worker serves under that name."""
    served = ctx.registry.models()
    data = [
        {"id": model, "object": "model", "created": 0, "owned_by": worker.runtime_type}
        for model, worker in sorted(served.items())
    ]
    aliases = alias_table(ctx.config.model_alias)
    data += [
        {"id": alias, "object": "model", "created": 0, "owned_by": served[canonical].runtime_type}
        for alias, canonical in sorted(aliases.items())
        if canonical in served and not ctx.registry.serving(alias)  # as `GatewayContext.canonical_model` routes it
    ]
    await send_json(ex.send, 200, {"object": "list", "data": data})
