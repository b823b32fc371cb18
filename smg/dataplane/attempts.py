"""Forwarding one inference request: attempts, retries, breaker bookkeeping, SSE relay.

Each attempt picks a worker again (preferring ones this request has not
tried). An attempt fails, and may be retried after a backoff, when the worker
cannot be reached, breaks before answering, sends no response headers within
`--worker-first-byte-timeout-secs`, or answers a retryable status (408, 429,
500, 502, 503, 504). Any other answer is final and passed through with its
body. Once a stream has started it is never retried: a worker failing or
stalling mid-stream ends it with an error event. When every attempt failed,
the last worker answer (or error) goes to the client.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from functools import partial
from typing import Any, TypeGuard

import trio

from smg.config.workers import fallback_table
from smg.context import GatewayContext
from smg.dataplane import engine
from smg.dataplane.relay import (
    KEEPALIVE_COMMENT,
    MESSAGES_PING,
    MESSAGES_ROUTE,
    ROUTED_WORKER_HEADER,
    Answer,
    Failed,
    KeepAlive,
    Refused,
    count_usage,
    end_stream_with,
    keeping_alive,
)
from smg.dataplane.routes import InferenceRoute
from smg.dataplane.usage import usage_in, usage_of
from smg.http.asgi import CLIENT_GONE, dump_json, send_bytes
from smg.http.errors import GatewayError, model_not_found
from smg.http.exchange import REQUEST_ID_HEADER, Exchange
from smg.http.sse import EventFramer, EventTooLarge
from smg.observability import tracing
from smg.routing.policies import NoEligibleWorker, RequestInfo, load_of
from smg.routing.policies.sticky import credential_key
from smg.routing.text import routing_text
from smg.upstream import UpstreamConnectError, UpstreamError, UpstreamResponse, anthropic
from smg.workers.breaker import STATE_GAUGE, Transition
from smg.workers.providers import ANTHROPIC, auth_headers
from smg.workers.registry import Worker
from smg.workers.retry import is_retryable

log = logging.getLogger("smg.router")

# Client headers passed on to workers; everything else stays at the gateway.
FORWARDED_HEADERS = frozenset({b"x-correlation-id", b"traceparent", b"tracestate", b"x-smg-routing-key"})
# With --enable-trace the worker gets the attempt span's trace context instead of the client's.
FORWARDED_WHEN_TRACED = FORWARDED_HEADERS - {b"traceparent", b"tracestate"}
# A provider speaking Anthropic's API takes these from a Messages client as they are (the API
# version it wrote against, the beta features it asked for); the gateway's default otherwise.
ANTHROPIC_HEADERS = frozenset({b"anthropic-version", b"anthropic-beta"})
# Worker answer headers a client sees: how long to wait before trying again (a provider's 429).
PASSED_ANSWER_HEADERS = frozenset({b"retry-after"})
JSON_TYPE = b"application/json"
COOLDOWN_CAP_SECS = 600.0  # the longest Retry-After a worker is taken at its word for
FALLBACK_HEADERS = (b"x-smg-fallback-step", b"x-smg-fallback-model")


def text_of(ex: Exchange, request: dict[str, Any]) -> str:
    """The request's routing text, computed once per request (policies and token limits share it)."""
    if ex.routing_text is None:
        ex.routing_text = routing_text(request)
    return ex.routing_text


def request_info(ctx: GatewayContext, ex: Exchange, request: dict[str, Any]) -> RequestInfo:
    """What the policy may know of this request, gathered once for all attempts."""
    routing_key = target = authorization = forwarded = None
    key_headers = ctx.routing_key_headers
    keys: dict[bytes, str] = {}
    for name, value in ex.scope["headers"]:
        if name in key_headers:
            if name not in keys and value.strip():  # the first non-blank value of each header
                keys[name] = value.decode("latin-1").strip()
        elif name == b"x-smg-target-worker":
            try:
                target = int(value)
            except ValueError:
                raise GatewayError(
                    400,
                    "invalid_routing_header",
                    "X-SMG-Target-Worker must be a worker index (an integer)",
                    param="x-smg-target-worker",
                ) from None
        elif name == b"authorization":
            authorization = value
        elif name == b"x-forwarded-for" and forwarded is None:
            forwarded = value
    routing_key = next((keys[name] for name in key_headers if name in keys), None)  # the first header, in order
    client_key = None
    if ctx.policy.needs_client_key:  # a digest, never the credential: keys may be pinned and replicated
        if authorization is not None:
            client_key = credential_key(authorization)
        elif forwarded is not None:
            client_key = forwarded.decode("latin-1").split(",")[0].strip()
    model = ex.model or ""
    return RequestInfo(
        model=model,
        path=ex.scope["path"],
        text=text_of(ex, request) if ctx.policy.needs_text else "",
        routing_key=routing_key,
        target_index=target,
        client_key=client_key,
        lineage_key=ex.lineage,
        pool=ctx.registry.serving(model) if ex.model is not None else (),
        request_id=ex.request_id,
    )


def choose_worker(ctx: GatewayContext, info: RequestInfo, tried: Sequence[str] = (), unfit: GatewayError | None = None) -> Worker:
    """`unfit`: why an Anthropic provider cannot take this request (`untranslatable`): the
    others are chosen among, and it is the answer when there are none."""
    registry = ctx.registry
    model = info.model or None
    candidates = registry.available(model) if model is not None else registry.available_any()
    if unfit is not None:
        fit = [w for w in candidates if w.provider != ANTHROPIC]
        if candidates and not fit:
            raise unfit
        candidates = fit
    if not candidates:
        if model is not None and not registry.serves(model) and all(w.discovered for w in registry):
            raise model_not_found(model)
        what = f"model '{model}'" if model is not None else "this request"
        raise GatewayError(503, "no_available_workers", f"no available worker for {what}")
    now = trio.current_time()
    key = model or ""
    workers = [w for w in candidates if w.breaker.is_available(now) and not (w.cooldowns and _cooling(w, key, now))]
    if not workers:
        cooling = [w for w in candidates if w.cooldowns and _cooling(w, key, now)]
        if cooling:
            raise _cooling_down(cooling, key, now)
        raise GatewayError(503, "no_available_workers", "every worker's circuit breaker is open; try again shortly")
    if tried:
        fresh = [w for w in workers if w.id not in tried]
        workers = fresh or workers
    if ctx.overload is not None:
        workers = ctx.overload.choose(workers, load_of)
        if not workers:
            ctx.metrics.rate_limit("worker_overload_shed").inc()
            interval = f"{math.ceil(ctx.config.load_monitor_interval)}"
            raise GatewayError(
                503,
                "worker_overload_protection_shed",
                "every worker that could serve this request is overloaded (waiting requests or KV-cache usage over "
                "the --worker-overload-* thresholds); try again shortly",
                headers=[(b"retry-after", interval.encode())],
            )
    if tracing.ENABLED:
        tracing.note("smg.candidates", len(workers))
    try:
        info.now = now
        worker = ctx.policy.select(workers, info)
    except NoEligibleWorker as exc:
        raise GatewayError(503, "no_available_workers", str(exc)) from None
    ctx.metrics.worker_selection(ctx.policy.name, worker.url).inc()
    if ctx.config.log_routing_decisions:
        _log_decision(ctx, info, workers, worker)
    return worker


def _log_decision(ctx: GatewayContext, info: RequestInfo, workers: Sequence[Worker], chosen: Worker) -> None:
    """`--log-routing-decisions`: the choice and what this gateway believed of each candidate at
    that moment: [in flight from this gateway, from its peers, the worker's reported running +
    waiting, of which waiting] (the last two from its latest load report)."""
    beliefs = {w.url: [w.in_flight, w.peer_in_flight, w.reported_load, w.reported_waiting] for w in workers}
    fields = {"request_id": info.request_id, "model": info.model, "worker": chosen.url, "candidates": beliefs}
    ctx.access_log.write(logging.INFO, "route", fields)


def _cooling(worker: Worker, model: str, now: float) -> bool:
    """`worker` asked for time (Retry-After) for `model`, and it is not over (an ended wait is forgotten)."""
    wait = worker.cooldowns.get(model)
    if wait is None:
        return False
    if wait[0] <= now:
        del worker.cooldowns[model]
        return False
    return True


def _cooling_down(workers: list[Worker], model: str, now: float) -> GatewayError:
    """Every worker that could answer asked the gateway to wait (a 429 or 503 with Retry-After):
    the client is told the same, with the shortest wait."""
    waits = [w.cooldowns[model] for w in workers]
    wait = str(max(1, math.ceil(min(until for until, _ in waits) - now))).encode()
    limited = any(status == 429 for _, status in waits)
    status, code = (429, "rate_limit_exceeded") if limited else (503, "no_available_workers")
    message = (
        f"every worker that could serve this request asked to be left alone for a while (Retry-After); retry in {wait.decode()}s"
    )
    return GatewayError(status, code, message, headers=[(b"retry-after", wait)])


def cool_down(worker: Worker, model: str, status: int, headers: list[tuple[bytes, bytes]], now: float) -> bool:
    """A 429 or 503 with Retry-After (seconds, at most `COOLDOWN_CAP_SECS`): the worker is not
    chosen for `model` until then (a provider limits each model apart; an HTTP-date
    Retry-After is not read). True if it is cooling down."""
    for name, value in headers:
        if name == b"retry-after":
            try:
                secs = float(value)
            except ValueError:
                return False
            if secs > 0 and math.isfinite(secs):
                worker.cooldowns[model] = (now + min(secs, COOLDOWN_CAP_SECS), status)
                return True
            return False
    return False


def upstream_headers(ctx: GatewayContext, ex: Exchange, worker: Worker, route: InferenceRoute) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", JSON_TYPE), (REQUEST_ID_HEADER, ex.request_id.encode())]
    forwarded = FORWARDED_HEADERS
    if tracing.ENABLED and tracing.inject(headers):
        forwarded = FORWARDED_WHEN_TRACED
    provider = worker.provider
    if provider is not None:  # its own key only: never the gateway's, never the client's
        mine: dict[bytes, bytes] = dict(auth_headers(provider, worker.api_key)) if worker.api_key else {}
        if provider == ANTHROPIC and route.target == anthropic.MESSAGES_PATH:
            # the client's own Messages request, relayed: the API version and betas it wrote for.
            # Nothing else of the client's goes to a third party (routing keys, correlation ids).
            for name, value in ex.scope["headers"]:
                if name in ANTHROPIC_HEADERS:
                    mine[name] = value
        headers += mine.items()
        return headers
    key = worker.api_key or ctx.config.api_key
    pass_authorization = key is None and ctx.forward_client_authorization
    for name, value in ex.scope["headers"]:
        if name in forwarded or (pass_authorization and name == b"authorization"):
            headers.append((name, value))
    if key:
        headers.append((b"authorization", b"Bearer " + key.encode()))
    return headers


def body_for(worker: Worker, request: dict[str, Any], body: bytes) -> bytes:
    """The body for a worker discovered under a pod's model id (`--model-id-from`): a request for
    that id names the model the worker itself reports, whatever other workers of the id report
    (during a rolling upgrade two versions may serve one id); any other request goes as it is."""
    model = request.get("model")
    if model != worker.model_id or model in worker.models or not worker.models:
        return body
    return dump_json({**request, "model": worker.models[0]})


async def proxy(ctx: GatewayContext, ex: Exchange, route: InferenceRoute, request: dict[str, Any], body: bytes) -> None:
    """Answer `ex` from the workers, retrying failed attempts within the request deadline; a
    client that leaves cancels them (the server's `smg.client_gone` callback, or a task
    watching for ASGI's `http.disconnect` where the server has none)."""
    info = request_info(ctx, ex, request)
    if ctx.policy.needs_text and info.pool and all(w.is_grpc for w in info.pool):
        tokens = await engine.routing_tokens(ctx, ex, route, request, len(body))
        if tokens is not None:  # else routed on the text; the attempt answers the pipeline's error
            info.tokens = tokens
    outcome: Answer | Failed | Refused | None = None
    connection = ex.scope["extensions"].get(CLIENT_GONE) if "extensions" in ex.scope else None
    with trio.move_on_after(ctx.config.request_timeout_secs) as deadline:
        if connection is not None:  # the server calls back when the client leaves: no watcher task
            if connection.on_client_gone(partial(_client_gone, ex, deadline)):
                try:
                    outcome = await _answer(ctx, ex, route, info, request, body)
                finally:
                    connection.on_client_gone(None)
            else:
                ex.client_gone = True
        else:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_disconnect, ex, nursery.cancel_scope)
                outcome = await _answer(ctx, ex, route, info, request, body)
                nursery.cancel_scope.cancel()
    if ex.client_gone:
        ex.status = 499
        return
    if deadline.cancelled_caught:
        outcome = Failed(GatewayError(504, "upstream_timeout", f"no answer within {ctx.config.request_timeout_secs:g}s"))
    if isinstance(outcome, Failed) and outcome.answer is not None:
        outcome = outcome.answer  # retries exhausted: pass the worker's last answer through
    if isinstance(outcome, (Failed, Refused)):
        await ex.fail(outcome.error)
    elif isinstance(outcome, Answer):
        await _send_answer(ex, route, request, outcome)


async def _answer(
    ctx: GatewayContext, ex: Exchange, route: InferenceRoute, info: RequestInfo, request: dict[str, Any], body: bytes
) -> Answer | Failed | Refused | None:
    """The model's pool first, then its `--model-fallback` pools in order, each with its own
    attempts, while the previous one failed (`Failed`: no worker available, every breaker open,
    overloaded, cooling down, or every attempt failed). A final answer, a refusal, or a stream
    that started (even one that broke) ends it: a fallback never starts after a stream began."""
    outcome = await _attempts(ctx, ex, route, info, request, body)
    if not _falls_back(outcome) or not ctx.config.model_fallback or ex.client_gone:
        return outcome
    primary = info.model
    kept, kept_step, kept_model = outcome, 0, ""  # the failure the client gets if every step fails
    step = 0
    for step, model in enumerate(fallback_table(ctx.config.model_fallback).get(primary, ()), start=1):
        model = ctx.canonical_model(model) or model
        ctx.metrics.fallbacks(primary, model, outcome.error.code).inc()
        log.info("request %s: model %s failed (%s); falling back to %s", ex.request_id, primary, outcome.error.code, model)
        request = {**request, "model": model}
        body = dump_json(request)
        info = dataclasses.replace(info, model=model, pool=ctx.registry.serving(model), tokens=None)
        _name_step(ex, step, model)  # before the attempts: a stream's head goes out during them
        outcome = await _attempts(ctx, ex, route, info, request, body)
        if not _falls_back(outcome) or ex.client_gone:
            return outcome
        if _found_no_worker(kept) or not _found_no_worker(outcome):
            kept, kept_step, kept_model = outcome, step, model
    if kept_step != step:  # an earlier step's answer (a 429 and its Retry-After) says more than "no worker"
        _name_step(ex, kept_step, kept_model)
    return kept


def _name_step(ex: Exchange, step: int, model: str) -> None:
    """The headers naming the fallback step that answered (none for the model's own pool)."""
    headers = [h for h in ex.extra_headers if h[0] not in FALLBACK_HEADERS]
    if step:
        headers += [(FALLBACK_HEADERS[0], str(step).encode()), (FALLBACK_HEADERS[1], model.encode())]
    ex.extra_headers = headers


def _found_no_worker(outcome: Failed) -> bool:
    """The pool had no worker to ask (none serves the model, none is available): a failure that
    says less than one a worker answered."""
    return (
        outcome.answer is None
        and outcome.error.code in ("model_not_found", "no_available_workers")
        and not any(name == b"retry-after" for name, _ in outcome.error.headers)
    )


def _falls_back(outcome: Answer | Failed | Refused | None) -> TypeGuard[Failed]:
    """The pool could not answer: no worker (404 `model_not_found` included), or its attempts
    failed (429, 5xx, unreachable). A request the pool refused as malformed (400) is not one a
    fallback would take better."""
    return isinstance(outcome, Failed) and (outcome.error.status >= 500 or outcome.error.status in (404, 408, 429))


async def _attempts(
    ctx: GatewayContext, ex: Exchange, route: InferenceRoute, info: RequestInfo, request: dict[str, Any], body: bytes
) -> Answer | Failed | Refused | None:
    """The attempt loop: a worker per attempt, backoff between them, until one answers (or
    streams), answers finally, or the attempts or the workers run out."""
    retry = ctx.retry
    outcome: Answer | Failed | Refused | None = None
    tried: list[str] = []
    messages_body, unfit = _for_anthropic(ctx, route, info, request)
    for attempt in range(1, retry.max_attempts + 1):
        if attempt > 1:
            await trio.sleep(retry.delay(attempt - 1, random.random()))
        try:
            if tracing.ENABLED:
                worker = _choose_traced(ctx, info, tried, attempt, unfit)
            else:
                worker = choose_worker(ctx, info, tried, unfit)
        except GatewayError as error:
            if outcome is None:  # nothing tried yet: this is the answer
                outcome = Failed(error)
            break
        tried.append(worker.id)
        ex.worker = worker
        sent = body if worker.model_id is None else body_for(worker, request, body)
        if messages_body is not None and worker.provider == ANTHROPIC:
            sent = messages_body
        if tracing.ENABLED:
            outcome = await _attempt_traced(ctx, ex, route, worker, sent, request, attempt, outcome)
        else:
            outcome = await attempt_once(ctx, ex, route, worker, sent, request)
        if outcome is None or isinstance(outcome, (Answer, Refused)):
            break  # answered (or streamed) to the client, or a final worker answer
        if attempt < retry.max_attempts:
            ctx.metrics.retries(worker.url).inc()
            log.info(
                "request %s: attempt %d on %s failed (%s); retrying",
                ex.request_id,
                attempt,
                worker.url,
                outcome.error.code,
            )
    else:
        ctx.metrics.retries_exhausted(route.name).inc()
    return outcome


def _for_anthropic(
    ctx: GatewayContext, route: InferenceRoute, info: RequestInfo, request: dict[str, Any]
) -> tuple[bytes | None, GatewayError | None]:
    """When an Anthropic provider may be chosen for an OpenAI-shaped request: the Messages
    request it gets (made once, for every attempt), or why it cannot take it (an API it has
    not, a field with no Messages counterpart)."""
    if route.target == anthropic.MESSAGES_PATH or not any(w.provider == ANTHROPIC for w in info.pool or ctx.registry):
        return None, None
    if route.name not in anthropic.TRANSLATED:
        message = f"model '{info.model}' is served by an Anthropic provider, which has no {route.name} API"
        return None, GatewayError(400, "unsupported_by_provider", message, param="model")
    try:
        return dump_json(anthropic.messages_request(route.name, request)), None
    except GatewayError as error:
        return None, error


def _client_gone(ex: Exchange, scope: trio.CancelScope) -> None:
    """The server saw the client leave while `ex` was answered: the attempts stop."""
    if not ex.finished:
        ex.client_gone = True
        scope.cancel()


def _choose_traced(
    ctx: GatewayContext, info: RequestInfo, tried: Sequence[str], attempt: int, unfit: GatewayError | None
) -> Worker:
    """`choose_worker` in an `smg.route` span: the policy, the candidates it chose among and,
    from cache_aware, the matched share of the prompt are noted on it from inside."""
    with tracing.span("smg.route", {"smg.policy": ctx.policy.name, "smg.attempt": attempt}) as span:
        worker = choose_worker(ctx, info, tried, unfit)
        span.set_attribute("smg.worker", worker.url)
        return worker


async def _attempt_traced(
    ctx: GatewayContext,
    ex: Exchange,
    route: InferenceRoute,
    worker: Worker,
    body: bytes,
    request: dict[str, Any],
    attempt: int,
    previous: Answer | Failed | Refused | None,
) -> Answer | Failed | Refused | None:
    """`attempt_once` in an `smg.attempt` CLIENT span, current while it runs, so the worker's
    `traceparent` names it (`upstream_headers`). A stream's attempt ends with the stream."""
    attributes: dict[str, str | int] = {"smg.worker": worker.url, "smg.attempt": attempt}
    if isinstance(previous, Failed):
        attributes["smg.retry_reason"] = previous.error.code
    with tracing.span("smg.attempt", attributes, tracing.CLIENT) as span:
        outcome = await attempt_once(ctx, ex, route, worker, body, request)
        if isinstance(outcome, (Failed, Refused)):
            if isinstance(outcome, Failed) and outcome.answer is not None:
                span.set_attribute("http.response.status_code", outcome.answer.status)
            tracing.failed(span, outcome.error.code, outcome.error.message)
        elif isinstance(outcome, Answer):
            span.set_attribute("http.response.status_code", outcome.status)
            if outcome.status >= 400:  # a final answer, passed through: still the worker's error
                tracing.failed(span, str(outcome.status))
        else:  # a stream, relayed: its head said 200; it may have failed after
            span.set_attribute("http.response.status_code", 200)
            if ex.error_code:
                tracing.failed(span, ex.error_code, ex.error_message)
        return outcome


async def _send_answer(ex: Exchange, route: InferenceRoute, request: dict[str, Any], answer: Answer) -> None:
    payload = answer.payload
    if route.transform is not None and answer.status == 200:
        try:
            payload = route.transform(request, payload, ex.model or "", ex.request_id)
        except (ValueError, TypeError, AttributeError) as exc:
            message = f"worker {answer.worker.url} sent an unexpected {route.name} answer: {exc}"
            await ex.fail(GatewayError(502, "upstream_invalid_response", message))
            return
    headers = [(ROUTED_WORKER_HEADER, answer.worker.url.encode()), *answer.headers]
    await send_bytes(ex.send, answer.status, payload, headers, (b"content-type", answer.content_type))


async def attempt_once(
    ctx: GatewayContext, ex: Exchange, route: InferenceRoute, worker: Worker, body: bytes, request: dict[str, Any]
) -> Answer | Failed | Refused | None:
    """One try on one worker. None: the response went to the client (a stream)."""
    now = trio.current_time()
    probe, transition = worker.breaker.begin(now)
    _publish(ctx, worker, transition)
    active = ctx.metrics.worker_active(worker.url)
    worker.in_flight += 1
    ctx.registry.on_in_flight()
    active.inc()
    ok = neutral = False
    try:
        if worker.is_grpc:
            result = await engine.exchange(ctx, ex, route, worker, request, len(body))
        else:
            result = await _exchange_with(ctx, ex, route, worker, body, request)
        # a refusal, or a worker asking for time (Retry-After), says nothing of its health
        neutral = isinstance(result, Refused) or (isinstance(result, Failed) and result.cooled)
        ok = not isinstance(result, Failed) and not ex.error_code
        return result
    finally:
        worker.in_flight -= 1
        ctx.registry.on_in_flight()
        active.dec()
        breaker = worker.breaker
        now = trio.current_time()
        if neutral or ex.client_gone:  # the client left: says nothing about the worker either
            breaker.abandon(probe)
        elif ok:
            _publish(ctx, worker, breaker.record_success(now, probe))
        else:
            _publish(ctx, worker, breaker.record_failure(now, probe))


async def _exchange_with(
    ctx: GatewayContext, ex: Exchange, route: InferenceRoute, worker: Worker, body: bytes, request: dict[str, Any]
) -> Answer | Failed | Refused | None:
    target = route.target
    translated = worker.provider == ANTHROPIC and target != anthropic.MESSAGES_PATH
    if translated:  # an OpenAI-shaped request to a provider that speaks only Messages: `body` is its
        target = anthropic.MESSAGES_PATH  # Messages request (`_for_anthropic`)
    headers = upstream_headers(ctx, ex, worker, route)
    first_byte = ctx.config.worker_first_byte_timeout_secs
    with trio.CancelScope(deadline=trio.current_time() + first_byte) as head_scope:
        try:
            async with ctx.upstream.request(worker.origin, b"POST", target, headers, body) as response:
                head_scope.deadline = math.inf
                ctx.metrics.upstream_responses(worker.url, str(response.status)).inc()
                content_type = _content_type(response)
                if response.status == 200 and content_type.startswith(b"text/event-stream"):
                    events = None
                    if translated:
                        events = anthropic.ChatEvents(route.name, int(time.time()), asks_usage(request))
                    await relay_events(ctx, ex, worker, response, content_type, events, request.get("model"))
                    return None
                passed = [(name, value) for name, value in response.headers if name in PASSED_ANSWER_HEADERS]
                answer = Answer(worker, response.status, content_type, await response.read(), passed)
        except UpstreamConnectError as exc:
            return Failed(GatewayError(502, "upstream_connect_error", f"cannot reach worker {worker.url}: {exc}"))
        except UpstreamError as exc:
            return Failed(GatewayError(502, exc.code, f"worker {worker.url} failed: {exc}"))
    if head_scope.cancelled_caught:
        return Failed(
            GatewayError(504, "upstream_timeout", f"worker {worker.url} sent no response headers within {first_byte:g}s")
        )
    if translated:
        translation = _translated_answer(route, answer)
        if isinstance(translation, Failed):
            return translation
    elif worker.provider is not None and answer.status == 200:
        problem = _provider_answer_problem(route, answer.payload)
        if problem is not None:  # a third party's answer is checked before a client gets it
            return Failed(GatewayError(502, "upstream_invalid_response", f"the provider at {worker.url} sent {problem}"))
    model = str(request.get("model") or "")  # a fallback step's, not necessarily the client's
    if answer.status == 200:
        count_usage(ctx, ex, worker, model or ex.model or "", usage_in(answer.payload))
    if worker.provider is not None and answer.status == 401:  # the gateway's key, not the client's: final
        return Refused(
            GatewayError(
                502,
                "upstream_auth_error",
                f"the provider at {worker.url} refused the gateway's API key (401); check the key the gateway was started with",
            )
        )
    status = anthropic.error_status(answer.status) if worker.provider == ANTHROPIC else answer.status  # 529: 503
    cooled = status in (429, 503) and cool_down(worker, model, status, answer.headers, trio.current_time())
    if is_retryable(status):
        return Failed(GatewayError(status, "upstream_error", f"worker answered {answer.status}"), answer, cooled)
    return answer


_ANSWER_LISTS = {"chat": "choices", "completions": "choices", "embeddings": "data"}


def _provider_answer_problem(route: InferenceRoute, payload: bytes) -> str | None:
    """What makes a provider's 200 answer unusable, else None: not a JSON object, or without
    the list its API answers with (`choices`, `data`)."""
    try:
        answer = json.loads(payload)
    except ValueError:
        return "an answer that is not JSON"
    if not isinstance(answer, dict):
        return "an answer that is not a JSON object"
    key = _ANSWER_LISTS.get(route.name)
    if key is not None and not isinstance(answer.get(key), list):
        return f"a {route.name} answer without its '{key}' list"
    return None


def asks_usage(request: dict[str, Any]) -> bool:
    """The client asked for a stream's usage chunk (`stream_options.include_usage: true`)."""
    options = request.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _translated_answer(route: InferenceRoute, answer: Answer) -> Failed | None:
    """A Messages answer (or Anthropic error) made OpenAI's, in place; `Failed` when the
    provider's 200 is not a message object."""
    if answer.status != 200:
        answer.status, answer.payload = anthropic.error_answer(answer.status, answer.payload)
    else:
        try:
            payload = json.loads(answer.payload)
            answer.payload = dump_json(anthropic.chat_answer(route.name, payload, int(time.time())))
        except ValueError:
            return Failed(
                GatewayError(502, "upstream_invalid_response", f"worker {answer.worker.url} sent an answer that is not JSON")
            )
        except GatewayError as error:
            return Failed(error)
    answer.content_type = JSON_TYPE
    return None


async def relay_events(
    ctx: GatewayContext,
    ex: Exchange,
    worker: Worker,
    response: UpstreamResponse,
    content_type: bytes,
    translate: anthropic.ChatEvents | None = None,
    model: str | None = None,
) -> None:
    """Relay an SSE body as raw bytes, as it arrives, whole events only; end with an error event
    if the worker breaks, stalls or sends an event over `--max-sse-event-size`.

    Every complete event that arrived goes out at once (a chunk of many events in one send);
    only a trailing incomplete event waits for its end, so a worker dying mid-event never
    leaves the client a fragment for the error event to be glued onto.

    After each `--sse-keepalive-secs` in which the client got no event, a keep-alive frame goes
    out (`KeepAlive`), so a proxy with an idle timeout does not cut a stream waiting on a
    long prefill. It starts once the response head went out: before the worker's head the
    client gets nothing, since committing to a 200 early would rule out retrying elsewhere
    (`--worker-first-byte-timeout-secs` bounds that wait; vLLM and SGLang send a stream's head
    before its prefill). Keep-alives do not move the stall deadline, which measures the
    worker's silence.

    `translate`: the worker speaks Anthropic's Messages events and the client reads OpenAI
    chunks; each run of whole events is translated before it goes out, and the stream ends
    with the translator's verdict (an error event in the provider's stream, or no end)."""
    ex.event_stream = True
    send = ex.send
    if translate is not None:
        content_type = b"text/event-stream"
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [
                (b"content-type", content_type),
                (b"cache-control", b"no-cache"),
                (ROUTED_WORKER_HEADER, worker.url.encode()),
            ],
        }
    )
    every = ctx.config.sse_keepalive_secs
    keepalive: KeepAlive | None = None
    if every > 0:
        keepalive = KeepAlive(send, MESSAGES_PING if ex.route == MESSAGES_ROUTE else KEEPALIVE_COMMENT, every)
        send = keepalive.send  # the relay's events go out through it: the two take turns
    stall = ctx.config.stream_stall_timeout_secs
    framer = EventFramer(ctx.config.max_sse_event_size)
    first = True
    # where usage is reported: the last two runs of events (OpenAI's usage chunk and [DONE], or
    # Anthropic's message_delta and message_stop), and the first (Anthropic's message_start)
    head: bytes | None = None
    previous = last = b""
    error: GatewayError | None = None
    # The stall deadline moves at most every `slack` seconds (moving it costs more than the
    # relay of a chunk): a silent worker is cut between `stall - slack` and `stall` after its last byte.
    slack = min(stall / 16, 1.0)
    moved = trio.current_time()
    with trio.CancelScope(deadline=moved + stall) as stall_scope:
        chunks = response.aiter_body()
        try:
            async with keeping_alive(keepalive):
                async for chunk in chunks:
                    if first:
                        ttft = time.perf_counter() - ex.started_at
                        ctx.metrics.ttft(ex.model or "").observe(ttft)
                        if tracing.ENABLED:
                            tracing.first_token(ttft)
                        first = False
                    now = trio.current_time()
                    if now - moved >= slack:
                        stall_scope.deadline = now + stall
                        moved = now
                    events = framer.feed(chunk)
                    if translate is not None and events:
                        events = translate.feed(events)
                    if events:
                        if head is None:
                            head = events
                        previous, last = last, events
                        await send({"type": "http.response.body", "body": events, "more_body": True})
                    if translate is not None and (translate.failure is not None or translate.done):
                        break  # after message_stop (or an error) the provider has nothing more to say
                rest = framer.rest()  # the worker ended cleanly without closing its last event: as it sent it
                if translate is not None:
                    live = translate.failure is None and not translate.done
                    rest = (translate.feed(rest) if rest and live else b"") + translate.finish()
                    error = translate.failure
                elif rest:
                    previous, last = last, rest
                if rest:
                    await send({"type": "http.response.body", "body": rest, "more_body": True})
        except UpstreamError as exc:  # a broken connection, or bytes that break HTTP/1.1 framing
            code = "upstream_protocol_error" if exc.code == "upstream_protocol_error" else "upstream_stream_error"
            error = GatewayError(502, code, f"worker {worker.url} failed mid-stream: {exc}")
        except EventTooLarge as exc:
            error = GatewayError(
                502,
                "upstream_protocol_error",
                f"worker {worker.url} sent {exc} (--max-sse-event-size {exc.limit})",
            )
        finally:
            aclose = getattr(chunks, "aclose", None)  # an async generator: finish it here, not in the GC
            if aclose is not None:
                with trio.CancelScope(shield=True):
                    await aclose()
    if stall_scope.cancelled_caught:
        error = GatewayError(504, "upstream_stream_stalled", f"worker {worker.url} sent nothing for {stall:g}s")
    if translate is not None:  # the provider's own count, even when it broke off or the client asked for none
        usage = usage_of(translate.usage)
    else:
        usage = usage_in(previous + last)
        opening = usage_in(head, first=True) if head is not None else None  # Anthropic's message_start
        if opening is not None:
            usage = opening.merged(usage)
    count_usage(ctx, ex, worker, model or ex.model or "", usage)
    if error is not None:
        await end_stream_with(ex, error)
        return
    await ex.send({"type": "http.response.body", "body": b"", "more_body": False})


async def _cancel_on_disconnect(ex: Exchange, scope: trio.CancelScope) -> None:
    while (await ex.receive())["type"] != "http.disconnect":
        pass
    if not ex.finished:  # the server also reports a disconnect once the response is complete
        ex.client_gone = True
        scope.cancel()


def _content_type(response: UpstreamResponse) -> bytes:
    for name, value in response.headers:
        if name == b"content-type":
            return value
    return JSON_TYPE


def _publish(ctx: GatewayContext, worker: Worker, transition: Transition | None) -> None:
    if transition is None:
        return
    metrics = ctx.metrics
    metrics.cb_state(worker.url).set(STATE_GAUGE[transition.new])
    metrics.cb_transitions(worker.url, transition.old.value, transition.new.value).inc()
    log.warning("worker %s circuit breaker %s -> %s", worker.url, transition.old.value, transition.new.value)
    severity = "info" if transition.new.value == "closed" else "warning"
    ctx.events.record(
        time.time(), "breaker", worker.url, f"circuit breaker {transition.old.value} -> {transition.new.value}", severity
    )
