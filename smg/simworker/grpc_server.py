"""`smg sim-worker --grpc`: the simulated worker speaking SGLang's gRPC scheduler protocol.

What a gateway calls on a gRPC worker, RPC by RPC, is `../shared/reference/smg-grpc-contract.md`;
the protocol is the `smg-grpc-proto` stubs'. Two halves, bridged by `smg.aiothread`:

- `GrpcSimWorker` (trio): the engine side. It owns `SimEngine` (queueing, KV-cache model keyed
  on the prompt's token ids, TTFT/TPOT timing, injected faults) and `SimModel` (what to answer),
  and yields protobuf responses; running generations are cancel scopes that Abort cancels.
- `SchedulerServicer` (grpc.aio, on the node's one asyncio loop thread): the thin RPC shell.
  It answers the immutable RPCs itself (HealthCheck, GetModelInfo, GetServerInfo,
  GetTokenizer) and asks the trio side for the rest through a `TrioPortal`. A cancelled RPC
  (the client left) cancels the trio task; a `RpcFailure` from the trio side is the RPC's status.

Registration needs nothing else: grpcio answers UNIMPLEMENTED for the other engines' services
the reference probes (vLLM, TRT-LLM, MLX, TokenSpeed). GetModelInfo reports model_path and
tokenizer_path empty so a gateway takes the tokenizer from its own --model-path or from
GetTokenizer (the shipped tokenizer, zipped once at start). SubscribeKvEvents is UNIMPLEMENTED
for now: the reference then polls GetLoads, which is what it does with an idle KV stream too.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import trio
from google.protobuf import struct_pb2
from smg_grpc_proto.generated import common_pb2, sglang_scheduler_pb2_grpc
from smg_grpc_proto.generated import sglang_scheduler_pb2 as pb

from smg.aiothread import AioThread, TrioPortal
from smg.http.server import BindError
from smg.simworker.engine import SimConfig, SimEngine
from smg.simworker.grpc_model import Sampling, Sequence, SimModel, load_shipped_tokenizer, model_directory
from smg.simworker.slots import running_slot
from smg.tokenization.archive import CHUNK_SIZE, archive_chunks, build_archive

log = logging.getLogger("smg.sim")

T = TypeVar("T")

CONTEXT_LENGTH = 32768
MAX_N = 64  # sequences per request: more is a client error, not a reason to run out of memory
MAX_NEW_TOKENS = CONTEXT_LENGTH
VERSION = "smg-sim"

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
    """A validated GenerateRequest: what the trio side needs of it."""

    request_id: str
    prompt_ids: list[int]
    sampling: Sampling
    stream: bool


def parse_generate(request: pb.GenerateRequest, vocab_size: int) -> Request:
    """Check a GenerateRequest; RpcFailure(INVALID_ARGUMENT) names what is wrong."""
    ids = list(request.tokenized.input_ids)
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
    params = request.sampling_params
    n = params.n or 1
    if n > MAX_N:
        raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, f"n={n} is more than {MAX_N}")
    max_new = params.max_new_tokens if params.HasField("max_new_tokens") else None
    if max_new is not None and max_new > MAX_NEW_TOKENS:
        raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, f"max_new_tokens={max_new} is more than {MAX_NEW_TOKENS}")
    sampling = Sampling(max_new, frozenset(params.stop_token_ids), n, params.ignore_eos)
    return Request(request.request_id or f"sim-{uuid.uuid4().hex}", ids, sampling, request.stream)


class GrpcSimWorker:
    """The trio side of one simulated gRPC worker (its engine state is only touched here)."""

    def __init__(self, config: SimConfig, model: SimModel) -> None:
        self.config = config
        self.model = model
        self.engine = SimEngine(config)
        self._slots = trio.Semaphore(config.max_running)
        self._running: dict[str, trio.CancelScope] = {}
        self._aborted: set[str] = set()

    async def generate(self, emit: Callable[[pb.GenerateResponse], None], request: Request) -> None:
        """Queue, prefill (TTFT from the uncached prompt tokens), then decode step by step,
        emitting the responses. Abort ends the unfinished sequences with finish "abort"."""
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
        progress = _Progress(rid, sequences, prompt_tokens, request.stream)
        held = prompt_tokens + sum(len(s.output_ids) for s in sequences)
        with trio.CancelScope() as scope:  # Abort cancels it
            self._running[rid] = scope
            try:
                if outcome.hang:
                    await trio.sleep_forever()  # a stall: no message until the client leaves
                async with running_slot(engine, self._slots, held):
                    await self._decode(emit, request, progress, outcome.die_after_tokens)
            finally:
                self._running.pop(rid, None)
        if scope.cancelled_caught:
            progress.abort(emit)

    async def _decode(
        self, emit: Callable[[pb.GenerateResponse], None], request: Request, progress: _Progress, die_after: int | None
    ) -> None:
        engine = self.engine
        progress.cached = engine.cache.admit([str(i) for i in request.prompt_ids])
        await trio.sleep(engine.ttft_secs(progress.prompt_tokens - progress.cached))
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

    async def abort(self, request_id: str) -> pb.AbortResponse:
        scope = self._running.get(request_id)
        if scope is None:
            return pb.AbortResponse(success=False, message=f"no running request {request_id!r}")
        scope.cancel()
        return pb.AbortResponse(success=True, message="aborted")

    async def loads(self, request: pb.GetLoadsRequest) -> pb.GetLoadsResponse:
        report = self.engine.load_report()
        load = pb.SchedulerLoad(
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
        )
        include = set(request.include)
        if "queues" in include or "all" in include:
            load.queues.CopyFrom(pb.QueueMetrics(waiting=report["num_waiting_reqs"]))
        if "memory" in include or "all" in include:
            load.memory.CopyFrom(pb.MemoryMetrics(token_capacity=report["max_total_num_tokens"]))
        loads = [load] if not request.HasField("dp_rank") or request.dp_rank == 0 else []
        return pb.GetLoadsResponse(
            timestamp=datetime.datetime.now(datetime.UTC).isoformat(),
            version=VERSION,
            dp_rank_count=1,
            loads=loads,
            aggregate=pb.AggregateMetrics(
                total_running_reqs=report["num_running_reqs"],
                total_waiting_reqs=report["num_waiting_reqs"],
                total_reqs=report["num_total_reqs"],
                avg_token_usage=report["token_usage"],
                avg_utilization=load.utilization,
            ),
        )

    async def flush(self) -> common_pb2.FlushCacheResponse:
        self.engine.cache.flush()
        return common_pb2.FlushCacheResponse(success=True, message="Cache flushed.")

    async def embed(self, ids: list[int]) -> pb.EmbedResponse:
        self.engine.requests += 1
        vector = self.engine.embedding(" ".join(map(str, ids)))
        return pb.EmbedResponse(embedding_dim=len(vector), embedding=vector, prompt_tokens=len(ids))


class _Progress:
    """How far each sequence of one request got, and the messages that reports (sans-IO)."""

    def __init__(self, rid: str, sequences: list[Sequence], prompt_tokens: int, stream: bool) -> None:
        self.rid, self.sequences, self.prompt_tokens, self.stream = rid, sequences, prompt_tokens, stream
        self.cached = 0
        self.produced = [0] * len(sequences)
        self.finished = [False] * len(sequences)

    @property
    def done(self) -> bool:
        return all(self.finished)

    def step(self, emit: Callable[[pb.GenerateResponse], None]) -> int:
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
                    emit(_chunk(self.rid, seq, position, self.prompt_tokens, self.cached))
            if self.produced[i] >= len(seq.output_ids):
                self.finished[i] = True
                emit(_complete(self.rid, seq, seq.output_ids, seq.finish_reason, self.prompt_tokens, self.cached))
        return tokens

    def abort(self, emit: Callable[[pb.GenerateResponse], None]) -> None:
        for seq in self.sequences:
            if not self.finished[seq.index]:
                done = seq.output_ids[: self.produced[seq.index]]
                emit(_complete(self.rid, seq, done, "abort", self.prompt_tokens, self.cached))


def _chunk(rid: str, seq: Sequence, step: int, prompt_tokens: int, cached: int) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        request_id=rid,
        chunk=pb.GenerateStreamChunk(
            token_ids=[seq.output_ids[step]],
            prompt_tokens=prompt_tokens,
            completion_tokens=step + 1,
            cached_tokens=cached,
            index=seq.index,
        ),
    )


def _complete(
    rid: str, seq: Sequence, output_ids: list[int], finish: str, prompt_tokens: int, cached: int
) -> pb.GenerateResponse:
    complete = pb.GenerateComplete(
        output_ids=output_ids,
        finish_reason=finish,
        prompt_tokens=prompt_tokens,
        completion_tokens=len(output_ids),
        cached_tokens=cached,
        index=seq.index,
    )
    if finish == "stop" and seq.matched_token_id is not None:
        complete.matched_token_id = seq.matched_token_id
    return pb.GenerateResponse(request_id=rid, complete=complete)


# -- the RPC shell, on the asyncio loop thread ------------------------------------------------


class SchedulerServicer(sglang_scheduler_pb2_grpc.SglangSchedulerServicer):
    """SGLang's SglangScheduler service over one `GrpcSimWorker` (runs on the loop thread)."""

    def __init__(self, worker: GrpcSimWorker, portal: TrioPortal, archive: tuple[bytes, str]) -> None:
        self.worker = worker
        self.portal = portal
        self.archive = archive
        self.config = worker.config
        self.vocab_size = worker.model.tokenizer.total_vocab_size
        self.started = time.time()

    async def _call(self, context: grpc.aio.ServicerContext, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return await self.portal.run(fn, *args)
        except RpcFailure as failure:
            await context.abort(failure.code, failure.details)
            raise  # pragma: no cover - abort raises

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        try:
            parsed = parse_generate(request, self.vocab_size)
            async with contextlib.aclosing(self.portal.stream(self.worker.generate, parsed)) as responses:
                async for response in responses:
                    yield response
        except RpcFailure as failure:
            await context.abort(failure.code, failure.details)

    async def HealthCheck(self, request: pb.HealthCheckRequest, context: grpc.aio.ServicerContext) -> pb.HealthCheckResponse:
        if self.config.unhealthy:
            return pb.HealthCheckResponse(healthy=False, message="unhealthy (--unhealthy)")
        return pb.HealthCheckResponse(healthy=True, message="OK")

    async def Abort(self, request: pb.AbortRequest, context: grpc.aio.ServicerContext) -> pb.AbortResponse:
        return await self._call(context, self.worker.abort, request.request_id)

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext) -> pb.GetModelInfoResponse:
        tokenizer = self.worker.model.tokenizer
        return pb.GetModelInfoResponse(
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
        )

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
        return await self._call(context, self.worker.loads, request)

    async def FlushCache(
        self, request: common_pb2.FlushCacheRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.FlushCacheResponse:
        return await self._call(context, self.worker.flush)

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        ids = list(request.tokenized.input_ids)
        if not ids:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tokenized.input_ids is empty")
        return await self._call(context, self.worker.embed, ids)

    async def GetTokenizer(
        self, request: common_pb2.GetTokenizerRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.GetTokenizerChunk]:
        data, sha256 = self.archive
        for chunk, digest in archive_chunks(data, sha256, CHUNK_SIZE):
            yield common_pb2.GetTokenizerChunk(data=chunk, sha256=digest)

    async def SubscribeKvEvents(
        self, request: common_pb2.SubscribeKvEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.KvEventBatch]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "KV events are not simulated yet")
        yield common_pb2.KvEventBatch()  # pragma: no cover - abort raises


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
    archive = build_archive(model_directory())
    aio = AioThread("smg-sim-grpc")
    aio.start()
    servers: list[grpc.aio.Server] = []
    try:
        async with TrioPortal.open() as portal:
            urls = []
            for i, config in enumerate(configs):
                model = SimModel(tokenizer, seed=config.seed, reasoning=config.reasoning, answer_words=config.output_tokens)
                servicer = SchedulerServicer(GrpcSimWorker(config, model), portal, archive)
                wanted = port + i if port else 0
                server, bound = await aio.call(_start_server, servicer, host, wanted)
                if server is None:
                    raise BindError("--port", wanted, "address already in use or not available", flag_value=port or None)
                servers.append(server)
                urls.append(grpc_url(host, bound))
            for url in urls:
                log.info("simulated gRPC worker for model %s listening on %s", configs[0].model, url)
            task_status.started(urls)
            await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(3):
            for server in servers:
                await aio.call(server.stop, 0.5)
        aio.stop()


async def _start_server(servicer: SchedulerServicer, host: str, port: int) -> tuple[grpc.aio.Server | None, int]:
    """(On the loop.) A started server and its port, or (None, 0) when the port cannot be bound.
    SO_REUSEPORT is off: grpcio's default would let a second worker share a taken port."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    sglang_scheduler_pb2_grpc.add_SglangSchedulerServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    except RuntimeError:
        return None, 0
    if bound == 0:
        return None, 0
    await server.start()
    return server, bound
