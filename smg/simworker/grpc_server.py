"""`smg sim-worker --grpc`: the simulated worker speaking an engine's gRPC protocol, SGLang's
scheduler service (`sglang.grpc.scheduler.SglangScheduler`, the default) or, with
`--grpc-engine vllm`, vLLM's engine service (`vllm.grpc.engine.VllmEngine`), never both: a
gateway's detection must find exactly the engine asked for.

What a gateway calls on a gRPC worker, RPC by RPC, is `../shared/reference/smg-grpc-contract.md`;
the protocols are the `smg-grpc-proto` stubs'. Two halves, bridged by `smg.aiothread`:

- `GrpcSimWorker` (trio): the engine side, protocol-neutral. It owns `SimEngine` (queueing,
  KV-cache model keyed on the prompt's token ids, TTFT/TPOT timing, injected faults) and
  `SimModel` (what to answer), and emits `smg.generation.types` outputs; running generations
  are cancel scopes that Abort cancels.
- `SchedulerServicer` (SGLang) and `VllmEngineServicer` (grpc.aio, on the node's one asyncio
  loop thread): the thin RPC shells, which convert requests and outputs to and from their
  protocol's messages at the edge. They answer the immutable RPCs themselves (HealthCheck,
  GetModelInfo, GetServerInfo, GetTokenizer) and ask the trio side for the rest through a
  `TrioPortal`. A cancelled RPC (the client left) cancels the trio task; a `RpcFailure` from
  the trio side is the RPC's status.

Registration needs nothing else: grpcio answers UNIMPLEMENTED for the other engines' services
the reference probes. GetModelInfo reports model_path and tokenizer_path empty so a gateway
takes the tokenizer from its own --model-path or from GetTokenizer (the shipped tokenizer,
zipped once at start). SubscribeKvEvents streams the cache model's stores, evictions and flushes
(`smg.simworker.kvevents`: numbered batches, a snapshot to resync, load records attached to every
batch and sent alone when the load changes or once a second while idle). The vLLM service differs where
vLLM's protocol does: the prompt may come as `text` (encoded with the shipped tokenizer),
`max_tokens` for `max_new_tokens`, Abort takes a list of ids and answers nothing, GetServerInfo
has vLLM's fields (`max_num_seqs`, `block_size`, ...) instead of a server-args Struct.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import grpc
import trio
from google.protobuf import struct_pb2
from smg_grpc_proto.generated import common_pb2, sglang_scheduler_pb2_grpc, vllm_engine_pb2, vllm_engine_pb2_grpc
from smg_grpc_proto.generated import sglang_scheduler_pb2 as pb

from smg.aiothread import AioThread, TrioPortal
from smg.generation.types import EngineChunk, EngineComplete, EngineOutput, TokenLogprob
from smg.http.server import BindError
from smg.simworker.engine import SimConfig, SimEngine
from smg.simworker.grpc_model import Sampling, Sequence, SimModel, load_shipped_tokenizer, model_directory
from smg.simworker.kvcache import KvEvent, KvRemoved, KvStored
from smg.simworker.kvevents import KvBatch, KvEventLog
from smg.simworker.slots import PrefillSlots, prefill, running_slot
from smg.tokenization.archive import CHUNK_SIZE, archive_chunks, build_archive

log = logging.getLogger("smg.sim")

T = TypeVar("T")

CONTEXT_LENGTH = 32768
KV_HEARTBEAT_SECS = 1.0  # a load record on an idle KV-event stream, this often
MAX_N = 64  # sequences per request: more is a client error, not a reason to run out of memory
MAX_NEW_TOKENS = CONTEXT_LENGTH
MAX_TOP_LOGPROBS = 20
VERSION = "smg-sim"
ENGINE_LABELS = {"sglang": "SGLang scheduler", "vllm": "vLLM engine"}

# injected failures (--fail-status, an HTTP status) as the gRPC status a failing engine gives
_FAIL_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class RpcFailure(Exception):
    """The RPC ends with this gRPC status (raised on the trio side, applied by the servicer)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


@dataclass(frozen=True)
class Request:
    """A validated GenerateRequest of either protocol: what the trio side needs of it."""

    request_id: str
    prompt_ids: list[int]
    sampling: Sampling
    stream: bool
    logprobs: int | None = None  # None: not asked; else how many alternatives per position


def parse_generate(request: pb.GenerateRequest, vocab_size: int) -> Request:
    """Check an SGLang GenerateRequest; RpcFailure(INVALID_ARGUMENT) names what is wrong."""
    params = request.sampling_params
    max_new = params.max_new_tokens if params.HasField("max_new_tokens") else None
    checked = _checked(
        request.request_id,
        list(request.tokenized.input_ids),
        params,
        max_new,
        "max_new_tokens",
        request.stream,
        vocab_size,
    )
    if not request.return_logprob:
        return checked
    return dataclasses.replace(checked, logprobs=_top_count(request.top_logprobs_num))


def parse_vllm_generate(request: Any, vocab_size: int, encode: Callable[[str], list[int]]) -> Request:
    """Check a vLLM GenerateRequest (its prompt `tokenized`, or `text` that `encode` tokenizes)."""
    ids = encode(request.text) if request.WhichOneof("input") == "text" else list(request.tokenized.input_ids)
    params = request.sampling_params
    max_new = params.max_tokens if params.HasField("max_tokens") else None
    checked = _checked(request.request_id, ids, params, max_new, "max_tokens", request.stream, vocab_size)
    if not params.HasField("logprobs"):
        return checked
    return dataclasses.replace(checked, logprobs=_top_count(params.logprobs))


def _top_count(asked: int) -> int:
    if not 0 <= asked <= MAX_TOP_LOGPROBS:
        raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, f"top logprobs {asked} is not within 0..{MAX_TOP_LOGPROBS}")
    return asked


def simulated_logprob(token_id: int, position: int, top: int) -> TokenLogprob:
    """A deterministic log-probability for the token at `position`, with `top` alternatives (the
    token itself first, as engines rank it): enough for a gateway's logprob shapes to be checked."""
    value = -0.05 * (1 + (token_id + position) % 7)
    alternatives = [(token_id, value)] + [(token_id + k, value - k) for k in range(1, top)]
    return TokenLogprob(token_id, value, alternatives[:top])


def _checked(rid: str, ids: list[int], params: Any, max_new: int | None, max_name: str, stream: bool, vocab_size: int) -> Request:
    """The checks both protocols share (their SamplingParams agree on n, stop_token_ids, ignore_eos)."""
    if not ids:
        raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "tokenized.input_ids is empty")
    if len(ids) > CONTEXT_LENGTH:
        raise RpcFailure(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the prompt has {len(ids)} tokens, more than the context length {CONTEXT_LENGTH}",
        )
    bad = next((i for i in ids if i >= vocab_size), None)
    if bad is not None:
        raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, f"token id {bad} is outside the vocabulary ({vocab_size})")
    n = params.n or 1
    if n > MAX_N:
        raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, f"n={n} is more than {MAX_N}")
    if max_new is not None and max_new > MAX_NEW_TOKENS:
        raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, f"{max_name}={max_new} is more than {MAX_NEW_TOKENS}")
    sampling = Sampling(max_new, frozenset(params.stop_token_ids), n, params.ignore_eos)
    return Request(rid or f"sim-{uuid.uuid4().hex}", ids, sampling, stream)


class GrpcSimWorker:
    """The trio side of one simulated gRPC worker (its engine state is only touched here)."""

    def __init__(self, config: SimConfig, model: SimModel) -> None:
        self.config = config
        self.model = model
        self.engine = SimEngine(config, record_kv_events=True)
        self._slots = trio.Semaphore(config.max_running)
        self._prefill_slots = PrefillSlots()
        self._running: dict[str, trio.CancelScope] = {}
        self.rpcs_cancelled = 0  # generations cut short by their RPC's cancellation (the client left)
        self.kv_log = KvEventLog()
        self._kv_changed = trio.Event()  # set (then replaced) when a batch is published or the load changed

    def _kv_step(self) -> None:
        """End of an engine step: publish the cache's changes, wake the subscribers."""
        self.kv_log.publish(self.engine.cache.drain_events(), time.time())
        self._kv_changed.set()
        self._kv_changed = trio.Event()

    async def generate(self, emit: Callable[[EngineOutput], None], request: Request) -> None:
        """Queue, prefill (TTFT from the uncached prompt tokens), then decode step by step,
        emitting the outputs. Abort ends the unfinished sequences with finish "abort"."""
        rid = request.request_id
        if rid in self._running:
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, f"request_id {rid!r} is already running")
        engine = self.engine
        sequences = self.model.plan(request.prompt_ids, request.sampling)
        engine.requests += 1
        outcome = engine.decide(max(len(s.output_ids) for s in sequences))
        if outcome.fail:
            code = _FAIL_CODES.get(self.config.fail_status, grpc.StatusCode.INTERNAL)
            raise RpcFailure(code, "simulated worker failure")
        prompt_tokens = len(request.prompt_ids)
        progress = _Progress(sequences, prompt_tokens, request.stream, request.logprobs)
        try:
            with trio.CancelScope() as scope:  # Abort cancels it
                self._running[rid] = scope
                try:
                    if outcome.hang:
                        await trio.sleep_forever()  # a stall: no message until the client leaves
                    async with running_slot(engine, self._slots, progress.held):
                        await self._decode(emit, request, progress, outcome.die_after_tokens)
                finally:
                    self._running.pop(rid, None)
                    self._kv_step()  # the load changed (and an unfinished prefill may have stored blocks)
        except trio.Cancelled:
            self.rpcs_cancelled += 1  # not Abort's scope: the RPC's (the portal cancels it)
            raise
        if scope.cancelled_caught:
            progress.abort(emit)

    async def _decode(
        self, emit: Callable[[EngineOutput], None], request: Request, progress: _Progress, die_after: int | None
    ) -> None:
        engine = self.engine
        slots = self._prefill_slots.current(self.config.prefill_slots)
        tokens = [str(i) for i in request.prompt_ids]
        progress.cached = await prefill(
            engine, slots, tokens, progress.prompt_tokens, request.request_id, self._kv_step, held=progress.held
        )
        step = 0
        while not progress.done:
            if step:
                await trio.sleep(engine.tpot_secs())
            if die_after is not None and step > die_after:
                raise RpcFailure(grpc.StatusCode.UNAVAILABLE, "simulated worker died mid-stream")
            engine.completion_tokens += progress.step(emit)
            step += 1
        first = progress.sequences[0].output_ids
        engine.cache.retain([str(i) for i in [*request.prompt_ids, *first]])

    async def abort(self, request_id: str) -> bool:
        """Whether `request_id` was running (it now ends with finish "abort")."""
        scope = self._running.get(request_id)
        if scope is None:
            return False
        scope.cancel()
        return True

    async def load_report(self) -> dict[str, Any]:
        return self.engine.load_report()

    async def flush(self) -> None:
        self.engine.cache.flush()
        self._kv_step()

    async def kv_events(self, emit: Callable[[KvRecord], None], start: int, records_first: bool) -> None:
        """One SubscribeKvEvents stream, until the subscriber leaves: a snapshot when `start` is 0
        or older than the history (and anything is cached), then every batch after the cursor,
        each with the load; a load record alone when the load changed without a batch, or after
        `KV_HEARTBEAT_SECS` of quiet. `records_first`: a load record numbered 0 before anything."""
        log = self.kv_log
        sample = 0
        last_load: dict[str, Any] | None = None

        def send(batch: KvBatch) -> None:
            nonlocal sample, last_load
            sample += 1
            last_load = self.engine.load_report()
            emit(KvRecord(batch, last_load, sample))

        if records_first:
            send(KvBatch(0, time.time(), load_only=True))
        cursor, resync = start, start == 0
        while True:
            changed = self._kv_changed
            batches = None if resync else log.since(cursor)
            resync = False
            if batches is None:  # start from the current state, or the history no longer reaches back
                if log.sequence:
                    send(log.snapshot(self.engine.cache, time.time()))
                cursor, batches = log.sequence, []
            for batch in batches:
                send(batch)
                cursor = batch.sequence
            if not batches and self.engine.load_report() != last_load:
                send(KvBatch(cursor, time.time(), load_only=True))
            with trio.move_on_after(KV_HEARTBEAT_SECS) as quiet:
                await changed.wait()
            if quiet.cancelled_caught:
                send(KvBatch(cursor, time.time(), load_only=True))

    async def embed(self, ids: list[int]) -> list[float]:
        self.engine.requests += 1
        return self.engine.embedding(" ".join(map(str, ids)))


class _Progress:
    """How far each sequence of one request got, and the outputs that reports (sans-IO)."""

    def __init__(self, sequences: list[Sequence], prompt_tokens: int, stream: bool, logprobs: int | None = None) -> None:
        self.sequences, self.prompt_tokens, self.stream = sequences, prompt_tokens, stream
        self.logprobs = logprobs
        self.held = prompt_tokens + sum(len(s.output_ids) for s in sequences)  # the KV its running slot counts
        self.cached = 0
        self.produced = [0] * len(sequences)
        self.finished = [False] * len(sequences)

    @property
    def done(self) -> bool:
        return all(self.finished)

    def step(self, emit: Callable[[EngineOutput], None]) -> int:
        """One decode step: a token for every unfinished sequence; returns how many."""
        tokens = 0
        for seq in self.sequences:
            i = seq.index
            if self.finished[i]:
                continue
            position = self.produced[i]
            if position < len(seq.output_ids):
                self.produced[i] = position + 1
                tokens += 1
                if self.stream:
                    token = seq.output_ids[position]
                    lp = None if self.logprobs is None else [simulated_logprob(token, position, self.logprobs)]
                    emit(EngineChunk(i, [token], self.prompt_tokens, position + 1, self.cached, lp))
            if self.produced[i] >= len(seq.output_ids):
                self.finished[i] = True
                emit(self._complete(seq, seq.output_ids, seq.finish_reason))
        return tokens

    def abort(self, emit: Callable[[EngineOutput], None]) -> None:
        for seq in self.sequences:
            if not self.finished[seq.index]:
                emit(self._complete(seq, seq.output_ids[: self.produced[seq.index]], "abort"))

    def _complete(self, seq: Sequence, output_ids: list[int], finish: str) -> EngineComplete:
        matched = seq.matched_token_id if finish == "stop" else None
        lp = None
        if self.logprobs is not None:
            lp = [simulated_logprob(token, position, self.logprobs) for position, token in enumerate(output_ids)]
        return EngineComplete(seq.index, output_ids, finish, self.prompt_tokens, len(output_ids), self.cached, matched, lp)


def _response(module: ModuleType, output: EngineOutput, **envelope: Any) -> Any:
    """`output` as a GenerateResponse of `module`'s protocol (both name the fields alike);
    `envelope`: SGLang's request_id."""
    if isinstance(output, EngineChunk):
        chunk = module.GenerateStreamChunk(
            token_ids=output.token_ids,
            prompt_tokens=output.prompt_tokens,
            completion_tokens=output.completion_tokens,
            cached_tokens=output.cached_tokens,
            index=output.index,
        )
        if output.logprobs:
            chunk.output_logprobs.CopyFrom(_logprobs(module, output.logprobs))
        return module.GenerateResponse(chunk=chunk, **envelope)
    complete = module.GenerateComplete(
        output_ids=output.output_ids,
        finish_reason=output.finish_reason,
        prompt_tokens=output.prompt_tokens,
        completion_tokens=output.completion_tokens,
        cached_tokens=output.cached_tokens,
        index=output.index,
    )
    if isinstance(output.matched_stop, int):
        complete.matched_token_id = output.matched_stop
    if output.logprobs:
        complete.output_logprobs.CopyFrom(_logprobs(module, output.logprobs))
    return module.GenerateResponse(complete=complete, **envelope)


def _logprobs(module: ModuleType, logprobs: list[TokenLogprob]) -> Any:
    return module.OutputLogProbs(
        token_logprobs=[lp.logprob for lp in logprobs],
        token_ids=[lp.token_id for lp in logprobs],
        top_logprobs=[
            module.TopLogProbs(values=[value for _, value in lp.top], token_ids=[tid for tid, _ in lp.top]) for lp in logprobs
        ],
    )


# -- the RPC shells, on the asyncio loop thread -----------------------------------------------


class _EngineServicer:
    """What both protocols' services share over one `GrpcSimWorker` (runs on the loop thread).
    Listed first among a servicer's bases, so its methods win over the generated UNIMPLEMENTED ones."""

    messages: ModuleType  # the protocol's messages

    def __init__(self, worker: GrpcSimWorker, portal: TrioPortal, archive: tuple[bytes, str]) -> None:
        self.worker = worker
        self.portal = portal
        self.archive = archive
        self.config = worker.config
        self.vocab_size = worker.model.tokenizer.total_vocab_size
        self.started = time.time()

    @staticmethod
    def register(servicer: Any, server: grpc.aio.Server) -> None:
        raise NotImplementedError

    async def _call(self, context: grpc.aio.ServicerContext, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return await self.portal.run(fn, *args)
        except RpcFailure as failure:
            await context.abort(failure.code, failure.details)
            raise  # pragma: no cover - abort raises

    def _parse(self, request: Any) -> Request:
        raise NotImplementedError

    def _envelope(self, request: Request) -> dict[str, Any]:
        """The GenerateResponse fields beside the chunk or complete."""
        return {}

    async def Generate(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        # an async generator function, as grpc.aio needs to see for its streaming handlers
        try:
            parsed = self._parse(request)
            envelope = self._envelope(parsed)
            async with contextlib.aclosing(self.portal.stream(self.worker.generate, parsed)) as outputs:
                async for output in outputs:
                    yield _response(self.messages, output, **envelope)
        except RpcFailure as failure:
            await context.abort(failure.code, failure.details)

    async def HealthCheck(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if self.config.unhealthy:
            return self.messages.HealthCheckResponse(healthy=False, message="unhealthy (--unhealthy)")
        return self.messages.HealthCheckResponse(healthy=True, message="OK")

    def _model_info(self, **extra: Any) -> Any:
        tokenizer = self.worker.model.tokenizer
        return self.messages.GetModelInfoResponse(
            model_path="",  # empty: the gateway loads --model-path or calls GetTokenizer
            tokenizer_path="",
            is_generation=True,
            served_model_name=self.config.model,
            max_context_length=CONTEXT_LENGTH,
            vocab_size=tokenizer.total_vocab_size,
            model_type="sim",
            eos_token_ids=list(tokenizer.eos_token_ids),
            pad_token_id=tokenizer.token_to_id("<|endoftext|>") or 0,
            max_req_input_len=CONTEXT_LENGTH,
            architectures=["SimForCausalLM"],
            **extra,
        )

    async def GetModelInfo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self._model_info()

    def _rank_load(self, report: dict[str, Any], **extra: Any) -> Any:
        return self.messages.SchedulerLoad(
            dp_rank=0,
            num_running_reqs=report["num_running_reqs"],
            num_waiting_reqs=report["num_waiting_reqs"],
            num_total_reqs=report["num_total_reqs"],
            num_used_tokens=report["num_used_tokens"],
            max_total_num_tokens=report["max_total_num_tokens"],
            token_usage=report["token_usage"],
            cache_hit_rate=report["cache_hit_rate"],
            utilization=report["num_running_reqs"] / self.config.max_running,
            max_running_requests=self.config.max_running,
            **extra,
        )

    async def FlushCache(
        self, request: common_pb2.FlushCacheRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.FlushCacheResponse:
        await self._call(context, self.worker.flush)
        return common_pb2.FlushCacheResponse(success=True, message="Cache flushed.")

    async def Embed(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ids = list(request.tokenized.input_ids)
        if not ids:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tokenized.input_ids is empty")
        vector = await self._call(context, self.worker.embed, ids)
        return self.messages.EmbedResponse(embedding_dim=len(vector), embedding=vector, prompt_tokens=len(ids))

    async def GetTokenizer(
        self, request: common_pb2.GetTokenizerRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.GetTokenizerChunk]:
        data, sha256 = self.archive
        for chunk, digest in archive_chunks(data, sha256, CHUNK_SIZE):
            yield common_pb2.GetTokenizerChunk(data=chunk, sha256=digest)

    async def SubscribeKvEvents(
        self, request: common_pb2.SubscribeKvEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.KvEventBatch]:
        start, first = request.start_sequence_number, request.load_records_before_first_batch
        async with contextlib.aclosing(self.portal.stream(self.worker.kv_events, start, first)) as records:
            async for record in records:
                yield kv_batch_message(record, self.config.max_running)


class SchedulerServicer(_EngineServicer, sglang_scheduler_pb2_grpc.SglangSchedulerServicer):
    """SGLang's SglangScheduler service."""

    messages = pb

    @staticmethod
    def register(servicer: Any, server: grpc.aio.Server) -> None:
        sglang_scheduler_pb2_grpc.add_SglangSchedulerServicer_to_server(servicer, server)

    def _parse(self, request: pb.GenerateRequest) -> Request:
        return parse_generate(request, self.vocab_size)

    def _envelope(self, request: Request) -> dict[str, Any]:
        return {"request_id": request.request_id}

    async def Abort(self, request: pb.AbortRequest, context: grpc.aio.ServicerContext) -> pb.AbortResponse:
        if await self._call(context, self.worker.abort, request.request_id):
            return pb.AbortResponse(success=True, message="aborted")
        return pb.AbortResponse(success=False, message=f"no running request {request.request_id!r}")

    async def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetServerInfoResponse:
        args = struct_pb2.Struct()
        args.update(
            {
                "served_model_name": self.config.model,
                "tp_size": 1,
                "dp_size": 1,
                "pp_size": 1,
                "context_length": CONTEXT_LENGTH,
                "max_running_requests": self.config.max_running,
                "page_size": self.worker.engine.cache.block_tokens,
                "is_embedding": False,
                "reasoning": self.config.reasoning,
            }
        )
        capacity = self.config.cache_blocks * self.worker.engine.cache.block_tokens
        return pb.GetServerInfoResponse(
            server_args=args,
            active_requests=self.worker.engine.running,
            uptime_seconds=time.time() - self.started,
            sglang_version=VERSION,
            server_type="grpc",
            max_total_num_tokens=capacity,
        )

    async def GetLoads(self, request: pb.GetLoadsRequest, context: grpc.aio.ServicerContext) -> pb.GetLoadsResponse:
        report = await self._call(context, self.worker.load_report)
        load = self._rank_load(report)
        include = set(request.include)
        if "queues" in include or "all" in include:
            load.queues.CopyFrom(pb.QueueMetrics(waiting=report["num_waiting_reqs"]))
        if "memory" in include or "all" in include:
            load.memory.CopyFrom(pb.MemoryMetrics(token_capacity=report["max_total_num_tokens"]))
        return pb.GetLoadsResponse(
            timestamp=_now(),
            version=VERSION,
            dp_rank_count=1,
            loads=_rank_zero(request, load),
            aggregate=pb.AggregateMetrics(
                total_running_reqs=report["num_running_reqs"],
                total_waiting_reqs=report["num_waiting_reqs"],
                total_reqs=report["num_total_reqs"],
                avg_token_usage=report["token_usage"],
                avg_utilization=load.utilization,
            ),
        )


class VllmEngineServicer(_EngineServicer, vllm_engine_pb2_grpc.VllmEngineServicer):
    """vLLM's VllmEngine service."""

    messages = vllm_engine_pb2

    @staticmethod
    def register(servicer: Any, server: grpc.aio.Server) -> None:
        vllm_engine_pb2_grpc.add_VllmEngineServicer_to_server(servicer, server)

    def _parse(self, request: Any) -> Request:
        return parse_vllm_generate(request, self.vocab_size, self.worker.model.tokenizer.encode)

    async def Abort(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        for rid in request.request_ids:  # vLLM answers nothing: an id not running is no error
            await self._call(context, self.worker.abort, rid)
        return vllm_engine_pb2.AbortResponse()

    async def GetServerInfo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return vllm_engine_pb2.GetServerInfoResponse(
            active_requests=self.worker.engine.running,
            uptime_seconds=time.time() - self.started,
            server_type="vllm-grpc",
            data_parallel_size=1,
            kv_cache_dtype="auto",
            block_size=self.worker.engine.cache.block_tokens,
            max_num_seqs=self.config.max_running,
        )

    async def GetLoads(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        report = await self._call(context, self.worker.load_report)
        return vllm_engine_pb2.GetLoadsResponse(
            timestamp=_now(), version=VERSION, dp_rank_count=1, loads=_rank_zero(request, self._rank_load(report))
        )


SERVICERS: dict[str, type[_EngineServicer]] = {
    "sglang": SchedulerServicer,
    "vllm": VllmEngineServicer,
}


@dataclass(frozen=True, slots=True)
class KvRecord:
    """One KvEventBatch to send: the batch, the engine's load then, the stream's sample number."""

    batch: KvBatch
    load: dict[str, Any]
    sample: int


def _block_hash(chain_hash: bytes) -> int:
    """The cache model's 64-bit chain hash as the protocol's int64."""
    return int.from_bytes(chain_hash, "little", signed=True)


def _kv_event(event: KvEvent, event_id: int) -> common_pb2.KvCacheEvent:
    if isinstance(event, KvStored):
        stored = common_pb2.KvBlocksStored(
            blocks=[
                common_pb2.KvBlock(block_hash=_block_hash(h), token_ids=[int(t) for t in tokens], block_size=len(tokens))
                for h, tokens in event.blocks
            ],
            tier=common_pb2.KV_CACHE_TIER_DEVICE,
            medium="GPU",
            locality=common_pb2.KV_CACHE_LOCALITY_LOCAL,
        )
        if event.parent is not None:
            stored.parent_block_hash = _block_hash(event.parent)
        return common_pb2.KvCacheEvent(event_id=event_id, stored=stored)
    if isinstance(event, KvRemoved):
        removed = common_pb2.KvBlocksRemoved(
            block_hashes=[_block_hash(h) for h in event.hashes],
            tier=common_pb2.KV_CACHE_TIER_DEVICE,
            locality=common_pb2.KV_CACHE_LOCALITY_LOCAL,
        )
        return common_pb2.KvCacheEvent(event_id=event_id, removed=removed)
    return common_pb2.KvCacheEvent(event_id=event_id, cleared=common_pb2.KvCacheCleared())


def kv_batch_message(record: KvRecord, max_running: int) -> common_pb2.KvEventBatch:
    """A `KvRecord` as the protocol's KvEventBatch (event ids: the batch's sequence x 1000 + i;
    a snapshot's are 0, as the protocol asks of synthesized events)."""
    batch, load = record.batch, record.load
    snapshot = batch.snapshot_blocks is not None
    message = common_pb2.KvEventBatch(
        sequence_number=batch.sequence,
        timestamp=batch.timestamp,
        events=[_kv_event(e, 0 if snapshot else batch.sequence * 1000 + i) for i, e in enumerate(batch.events)],
        load=common_pb2.EngineLoad(
            running_requests=load["num_running_reqs"],
            waiting_requests=load["num_waiting_reqs"],
            token_usage=load["token_usage"],
            max_running_requests=max_running,
            sample=record.sample,
            load_only=batch.load_only,
            cache_hit_rate=load["cache_hit_rate"],
            num_used_tokens=load["num_used_tokens"],
            max_total_num_tokens=load["max_total_num_tokens"],
        ),
    )
    if snapshot:
        message.snapshot.CopyFrom(common_pb2.KvSnapshotChunk(index=0, count=1, blocks=batch.snapshot_blocks or 0))
    return message


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def _rank_zero(request: Any, load: Any) -> list[Any]:
    """The one rank's load, unless the request asked for another rank."""
    return [load] if not request.HasField("dp_rank") or request.dp_rank == 0 else []


# -- the fleet's gRPC mode --------------------------------------------------------------------


def grpc_url(host: str, port: int) -> str:
    return f"grpc://[{host}]:{port}" if ":" in host else f"grpc://{host}:{port}"


async def serve_grpc_fleet(
    configs: list[SimConfig],
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve one gRPC simulated worker per config on `port`, `port + 1`, ... (0: free ports),
    all on one grpc.aio loop thread; report their `grpc://` URLs once all listen."""
    tokenizer = load_shipped_tokenizer()
    workers = [
        GrpcSimWorker(
            config, SimModel(tokenizer, seed=config.seed, reasoning=config.reasoning, answer_words=config.output_tokens)
        )
        for config in configs
    ]
    await serve_grpc_workers(workers, host, port, task_status=task_status)


async def serve_grpc_workers(
    workers: Iterable[GrpcSimWorker],
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve these workers (each with the service of its `--grpc-engine`) as `serve_grpc_fleet`
    does; tests that look into a worker's state make their own."""
    workers = list(workers)
    archive = build_archive(model_directory())
    aio = AioThread("smg-sim-grpc")
    aio.start()
    servers: list[grpc.aio.Server] = []
    try:
        async with TrioPortal.open() as portal:
            urls = []
            for i, worker in enumerate(workers):
                servicer = SERVICERS[worker.config.grpc_engine](worker, portal, archive)
                wanted = port + i if port else 0
                server, bound = await aio.call(_start_server, servicer, host, wanted)
                if server is None:
                    raise BindError("--port", wanted, "address already in use or not available", flag_value=port or None)
                servers.append(server)
                urls.append(grpc_url(host, bound))
            for worker, url in zip(workers, urls, strict=True):
                engine = ENGINE_LABELS[worker.config.grpc_engine]
                log.info("simulated gRPC worker (%s) for model %s listening on %s", engine, worker.config.model, url)
            task_status.started(urls)
            await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(3):
            for server in servers:
                await aio.call(server.stop, 0.5)
        aio.stop()


async def _start_server(servicer: _EngineServicer, host: str, port: int) -> tuple[grpc.aio.Server | None, int]:
    """(On the loop.) A started server and its port, or (None, 0) when the port cannot be bound.
    SO_REUSEPORT is off: grpcio's default would let a second worker share a taken port."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    servicer.register(servicer, server)
    try:
        bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    except RuntimeError:
        return None, 0
    if bound == 0:
        return None, 0
    await server.start()
    return server, bound
