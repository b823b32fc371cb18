"""One attempt on a gRPC worker: the gateway as the full server.

An HTTP worker gets the client's body and its answer is relayed as bytes (`attempts`). A gRPC
engine runs raw inference only, so here the gateway does the rest, with the sans-IO pipeline of
`smg.generation`: the request is checked and turned into token ids through the model's chat
template (`prepare_*`), sent with Generate (`smg.upstream.grpc`), and the engine's token ids come
back as OpenAI answers and stream chunks (`start_stream`, `complete_response`): detokenized,
stop strings matched on text, reasoning and tool calls parsed.

What stays as for HTTP workers (`attempts.proxy` calls `exchange` in its attempt loop): the
first-byte deadline (`--worker-first-byte-timeout-secs`, until the engine's first message), the
stall deadline between messages, retries on the retryable gRPC statuses (RESOURCE_EXHAUSTED,
UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED) before anything was sent to the client, keep-alives
(`--sse-keepalive-secs`), a stream that breaks ending with an error event, and usage counted
for tenant token limits. A request the pipeline cannot serve (a bad parameter, no chat template,
the model's tokenizer not loaded) is `Refused`: the same answer from any worker of the model,
so it is not retried and says nothing about the worker's health.

When the client leaves, the attempt is cancelled, which cancels the RPC; the engine is also
sent Abort{request_id, "Stream dropped"} as the reference sends it, from the fleet's nursery so
the cancellation does not cancel the Abort too. A stream whose every choice matched a stop
string ends early the same way (the engine would otherwise generate to max_tokens).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import trio

from smg.context import GatewayContext
from smg.dataplane.relay import (
    KEEPALIVE_COMMENT,
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
from smg.generation.outputs import StreamBuilder, complete_response, embedding_response, start_stream
from smg.generation.requests import Prepared, prepare_chat, prepare_completion, prepare_embedding, prepare_generate
from smg.generation.types import EngineComplete, EngineOutput
from smg.http.asgi import dump_json
from smg.http.errors import GatewayError
from smg.http.exchange import Exchange
from smg.observability import tracing
from smg.tokenization.loader import ModelTokenizer
from smg.upstream.grpc.fleet import EngineFleet
from smg.upstream.grpc.status import EngineStatusError
from smg.workers.registry import Worker

log = logging.getLogger("smg.router")

JSON_TYPE = b"application/json"
DONE_EVENT = b"data: [DONE]\n\n"
INLINE_BODY_LIMIT = 32 * 1024  # bodies up to this are templated and tokenized on the event loop; larger in a thread
ID_PREFIX = {"chat": "chatcmpl", "completions": "cmpl", "generate": "gnt", "embeddings": "embd"}
_KINDS = {"chat": "chat", "completions": "completions", "generate": "generate"}  # route name -> Prepared.kind
STREAM_ERROR = "stream_error"  # the error event's type after a stream started, as the reference sends it


async def exchange(
    ctx: GatewayContext, ex: Exchange, route: InferenceRoute, worker: Worker, request: dict[str, Any], size: int
) -> Answer | Failed | Refused | None:
    """One attempt on the gRPC worker `worker`; None when the answer was streamed to the client."""
    fleet = ctx.engines
    if fleet is None:  # a grpc:// worker can only be registered when the fleet exists
        return Refused(GatewayError(500, "internal_error", "this gateway has no gRPC client"))
    model = worker.models[0] if worker.models else (ex.model or "")
    tokenizer = fleet.tokenizers.get(model)
    if tokenizer is None:
        fleet.tokenizers.retry(model)  # a failed load is tried again (after RETRY_SECS) when asked for
        return Refused(_no_tokenizer(fleet, model))
    try:
        if route.name == "embeddings":
            embedded = await _embed(ctx, fleet, ex, worker, request, tokenizer, model)
            if isinstance(embedded, Answer):
                count_usage(ctx, ex, worker, str(request.get("model") or model), usage_in(embedded.payload))
            return embedded
        prepared = await _prepared(ctx, ex, route, request, tokenizer, model, size)
        _check_context(worker, prepared)
    except GatewayError as error:
        return Refused(error)
    except Exception:  # a request the pipeline could not handle: the gateway's bug, not the worker's failure
        log.exception("request %s: preparing it for the engine failed", ex.request_id)
        return Refused(GatewayError(500, "internal_error", "the gateway could not prepare this request for the engine"))
    engine = prepared.engine
    request_id = engine.request_id  # the client's own id (/generate's rid), else one per attempt
    if not request_id:
        request_id = f"{ID_PREFIX.get(route.name, 'req')}-{uuid.uuid4().hex}"
        engine = dataclasses.replace(engine, request_id=request_id)
    call = fleet.client(worker).generate_batches(engine)
    engine_done = False
    result: Answer | Failed | Refused | None
    try:
        if engine.stream:
            served = str(request.get("model") or ex.model or model)  # a fallback step's, not the client's
            result, engine_done = await _stream(ctx, ex, worker, prepared, tokenizer, call, request_id, served)
        else:
            result, engine_done = await _complete(ctx, worker, prepared, tokenizer, call, request_id)
        if isinstance(result, Answer):
            ctx.metrics.upstream_responses(worker.url, "200").inc()
            count_usage(ctx, ex, worker, str(request.get("model") or ex.model or model), usage_in(result.payload))
        return result
    finally:
        if not engine_done:  # the client left, a deadline passed, or every choice stopped on a stop string
            fleet.abort(worker, request_id, "Stream dropped" if ex.client_gone else "Request ended by the gateway")


async def routing_tokens(
    ctx: GatewayContext, ex: Exchange, route: InferenceRoute, request: dict[str, Any], size: int
) -> tuple[int, ...] | None:
    """The prompt's token ids as a gRPC engine of `ex.model` would get them, for the policy to
    route on (cache_aware's tree then holds what the engines cache); None when the request cannot
    be prepared now (no tokenizer yet, a bad parameter: the attempt answers that) or is not a
    generation. The request is prepared here once; the attempt reuses it."""
    fleet = ctx.engines
    model = ex.model
    if fleet is None or model is None or route.name not in _KINDS:
        return None
    tokenizer = fleet.tokenizers.get(model)
    if tokenizer is None:
        return None
    try:
        prepared = await _prepared(ctx, ex, route, request, tokenizer, model, size)
    except Exception:  # a client error or a pipeline bug: the attempt prepares again, answers and logs it
        return None
    return tuple(prepared.engine.input_ids)


async def _prepared(
    ctx: GatewayContext,
    ex: Exchange,
    route: InferenceRoute,
    request: dict[str, Any],
    tokenizer: ModelTokenizer,
    model: str,
    size: int,
) -> Prepared:
    """The request prepared once (a retry on another worker of the model reuses it: rendering and
    tokenizing a long prompt again would cost as much as the first time)."""
    cached = ex.prepared
    if isinstance(cached, Prepared) and cached.model == model and cached.kind == _KINDS.get(route.name):
        return cached
    prepared = await _prepare(ctx, route, request, tokenizer, model, size)
    ex.prepared = prepared
    return prepared


def _check_context(worker: Worker, prepared: Prepared) -> None:
    """A prompt longer than the engine's context cannot run there: the client's 400, before it
    is sent (the engine would refuse it, or its message would pass gRPC's size limit)."""
    limit = _context_length(worker)
    prompt = len(prepared.engine.input_ids)
    if limit and prompt > limit:
        raise GatewayError(
            400,
            "context_length_exceeded",
            f"This model's maximum context length is {limit} tokens; the prompt has {prompt} tokens.",
            param="messages" if prepared.kind == "chat" else "prompt",
        )


def _context_length(worker: Worker) -> int:
    for name in ("max_context_length", "context_length"):  # GetModelInfo's, then SGLang's server_args
        value = worker.engine_labels.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def _no_tokenizer(fleet: EngineFleet, model: str) -> GatewayError:
    state, error = fleet.tokenizers.state(model)
    if state == "failed":
        return GatewayError(503, "tokenizer_load_failed", f"the tokenizer of model '{model}' failed to load: {error}")
    return GatewayError(
        503,
        "tokenizer_loading",
        f"the tokenizer of model '{model}' is still loading; try again shortly",
        headers=[(b"retry-after", b"1")],
    )


async def _prepare(
    ctx: GatewayContext, route: InferenceRoute, request: dict[str, Any], tokenizer: ModelTokenizer, model: str, size: int
) -> Prepared:
    options = ctx.pipeline_options
    if route.name == "chat":

        def prepare() -> Prepared:
            return prepare_chat(request, tokenizer, options, model_id=model, clock=time.monotonic)

    elif route.name == "completions":

        def prepare() -> Prepared:
            return prepare_completion(request, tokenizer, options, model_id=model)

    elif route.name == "generate":

        def prepare() -> Prepared:
            return prepare_generate(request, tokenizer, options, model_id=model)

    else:
        raise GatewayError(
            501, "unsupported_endpoint", f"{route.name} is not served by gRPC workers; register an HTTP worker for it"
        )
    if size <= INLINE_BODY_LIMIT:
        return prepare()
    return await trio.to_thread.run_sync(prepare)  # a long prompt: keep the event loop free while it renders


async def _embed(
    ctx: GatewayContext,
    fleet: EngineFleet,
    ex: Exchange,
    worker: Worker,
    request: dict[str, Any],
    tokenizer: ModelTokenizer,
    model: str,
) -> Answer | Failed | Refused:
    input_ids, text = prepare_embedding(request, tokenizer)
    deadline = ctx.config.worker_first_byte_timeout_secs
    try:
        with trio.fail_after(deadline):
            embedding, prompt_tokens = await fleet.client(worker).embed(f"embd-{uuid.uuid4().hex}", input_ids, text)
    except trio.TooSlowError:
        return Failed(_timeout(worker, deadline))
    except EngineStatusError as exc:
        return _status_outcome(worker, exc)
    encoding = request.get("encoding_format") or "float"  # checked by prepare_embedding
    payload = dump_json(embedding_response(ex.model or model, embedding, prompt_tokens, encoding_format=encoding))
    return Answer(worker, 200, JSON_TYPE, payload)


async def _complete(
    ctx: GatewayContext,
    worker: Worker,
    prepared: Prepared,
    tokenizer: ModelTokenizer,
    call: Any,
    request_id: str,
) -> tuple[Answer | Failed | Refused, bool]:
    """A non-streamed answer, built from the engine's Complete messages (one per choice): read
    until every asked choice has one (an engine keeping the stream open after that does not hold
    the answer back), the first-byte deadline until the first message, the stall deadline
    between messages. Also returns whether the engine finished (else it is sent Abort)."""
    n = prepared.n
    got: dict[int, EngineComplete] = {}
    limit = ctx.config.worker_first_byte_timeout_secs
    ended = False
    try:
        async with call as batches:
            iterator = batches.__aiter__()
            while len(got) < n:
                with trio.move_on_after(limit) as waited:
                    batch = await _next(iterator)
                if waited.cancelled_caught:
                    return Failed(_timeout(worker, limit)), False
                if batch is None:
                    ended = True
                    break
                limit = ctx.config.stream_stall_timeout_secs
                for output in batch:
                    if type(output) is EngineComplete and output.index < n:
                        got.setdefault(output.index, output)
    except EngineStatusError as exc:
        return _status_outcome(worker, exc), True
    if not got:  # the reference answers this 500 no_responses_from_server, retried
        error = GatewayError(500, "no_responses_from_server", f"worker {worker.url} ended Generate without a result")
        return Failed(error), ended
    answer = complete_response(prepared, tokenizer, list(got.values()), created=int(time.time()), response_id=request_id)
    return Answer(worker, 200, JSON_TYPE, dump_json(answer)), True


async def _stream(
    ctx: GatewayContext,
    ex: Exchange,
    worker: Worker,
    prepared: Prepared,
    tokenizer: ModelTokenizer,
    call: Any,
    request_id: str,
    model: str,
) -> tuple[Failed | Refused | None, bool]:
    """A streamed answer. Until the engine's first message nothing went to the client, so a
    failure may still be retried elsewhere; after it, a failure ends the stream with an error
    event (the reference's `stream_error`) and `[DONE]`. Also returns whether the engine
    finished (else it is sent Abort)."""
    first_byte = ctx.config.worker_first_byte_timeout_secs
    builder = start_stream(prepared, tokenizer, created=int(time.time()), response_id=request_id)
    error: GatewayError | None = None
    ended = False
    try:
        async with call as batches:
            iterator = batches.__aiter__()
            with trio.move_on_after(first_byte) as waited:
                first = await _next(iterator)
            if waited.cancelled_caught:
                return Failed(_timeout(worker, first_byte)), False
            if first is None:
                return Failed(GatewayError(500, "no_responses_from_server", f"worker {worker.url} ended Generate at once")), True
            error, ended = await _relay(ctx, ex, worker, builder, iterator, first)
    except EngineStatusError as exc:
        ended = True
        if not ex.started:
            return _status_outcome(worker, exc), ended
        error = GatewayError(exc.http_status, exc.code, f"Stream error: {exc.status}: {exc.details}", type=STREAM_ERROR)
    count_usage(ctx, ex, worker, model, usage_of(builder.usage))
    if error is None:
        ctx.metrics.upstream_responses(worker.url, "200").inc()
        await ex.send({"type": "http.response.body", "body": DONE_EVENT, "more_body": False})
    elif ex.error_shape is not None:  # another API's error event (none of the gateway's own APIs streams here today)
        await end_stream_with(ex, error)
    else:
        ctx.metrics.upstream_responses(worker.url, str(error.status)).inc()
        ex.error_code, ex.error_message = error.code, error.message
        await ex.send({"type": "http.response.body", "body": error.sse_event() + DONE_EVENT, "more_body": False})
    return None, ended


async def _relay(
    ctx: GatewayContext,
    ex: Exchange,
    worker: Worker,
    builder: StreamBuilder,
    iterator: AsyncIterator[list[EngineOutput]],
    first: list[EngineOutput],
) -> tuple[GatewayError | None, bool]:
    """Send the head, then the outputs as they arrive, through keep-alives: the events of all
    outputs that arrived together in one write (one socket send per batch, not per token; the
    measured cost of a stream was mostly those sends). The stall deadline restarts with each
    batch. Returns the error that cut the stream, if any, and whether the engine ended it."""
    ttft = time.perf_counter() - ex.started_at
    ctx.metrics.ttft(ex.model or "").observe(ttft)
    if tracing.ENABLED:
        tracing.first_token(ttft)
    ex.event_stream = True
    headers = [
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache"),
        (ROUTED_WORKER_HEADER, worker.url.encode()),
    ]
    await ex.send({"type": "http.response.start", "status": 200, "headers": headers})
    send = ex.send
    keepalive: KeepAlive | None = None
    every = ctx.config.sse_keepalive_secs
    if every > 0:
        keepalive = KeepAlive(send, KEEPALIVE_COMMENT, every)
        send = keepalive.send
    stall = ctx.config.stream_stall_timeout_secs
    ended = False
    async with keeping_alive(keepalive):
        await _send_events(send, _feed(builder, first))
        while not builder.stopped:
            with trio.move_on_after(stall) as waited:
                batch = await _next(iterator)
            if waited.cancelled_caught:
                error = GatewayError(
                    504, "upstream_stream_stalled", f"worker {worker.url} sent nothing for {stall:g}s", type=STREAM_ERROR
                )
                return error, False
            if batch is None:
                ended = True
                break
            await _send_events(send, _feed(builder, batch))
        await _send_events(send, builder.finish())
    return None, ended or builder.engine_finished  # finished: no Abort (it would cost a call per request)


def _feed(builder: StreamBuilder, batch: list[EngineOutput]) -> list[dict[str, Any]]:
    if len(batch) == 1:
        return builder.feed(batch[0])
    events: list[dict[str, Any]] = []
    for output in batch:
        if builder.stopped:  # every choice ended on a stop string: the rest is not the client's
            break
        events += builder.feed(output)
    return events


async def _next(iterator: AsyncIterator[list[EngineOutput]]) -> list[EngineOutput] | None:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return None


async def _send_events(send: Any, events: list[dict[str, Any]]) -> None:
    if events:
        body = b"".join(b"data: " + dump_json(event) + b"\n\n" for event in events)
        await send({"type": "http.response.body", "body": body, "more_body": True})


def _status_outcome(worker: Worker, exc: EngineStatusError) -> Failed | Refused:
    """A gRPC status before anything went to the client: retried when retryable (as the
    reference: RESOURCE_EXHAUSTED, UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED), else final."""
    error = GatewayError(exc.http_status, exc.code, f"worker {worker.url}: {exc.status}: {exc.details}")
    return Failed(error) if exc.retryable else Refused(error)


def _timeout(worker: Worker, seconds: float) -> GatewayError:
    return GatewayError(504, "upstream_timeout", f"worker {worker.url} sent nothing within {seconds:g}s")


__all__ = ["exchange"]
