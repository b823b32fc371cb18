"""The gateway's gRPC client for inference engines (SGLang's scheduler, vLLM's engine): the trio
shell over `convert` (the messages) and `status` (the errors).

Generate, the data path, goes over smg's own HTTP/2 connections in trio (`channel`, `wire`: no
thread hop per streamed token: a third of grpc.aio's CPU per message with one stream, 0.7
of it with sixteen). Every other RPC runs on the
node's one grpc.aio loop thread (`smg.aiothread.AioThread`): unary calls through
`AioThread.call`, GetTokenizer's stream through `AioThread.stream`, so trio's cancellation
reaches the RPC. A client's grpcio channel, and anything else grpc.aio owns, is created and
touched on that thread only: the `_on_loop` methods run there; the rest runs in trio.

A worker's engine is found once (`detect`): HealthCheck on the five services the reference
probes, at once; any answer with status OK names the engine, even `healthy=false` (a worker
that is up but not ready is still that engine). The methods that need the engine detect it
first if nothing did. Failures are `EngineStatusError` (the gRPC status, its HTTP status, whether
to retry); a closed client fails its calls with CANCELLED (retried elsewhere).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, NoReturn

import grpc
import trio
from google.protobuf.message import DecodeError
from smg_grpc_proto.generated import sglang_scheduler_pb2_grpc, vllm_engine_pb2_grpc

from smg.aiothread import AioThread, StreamCancelled
from smg.generation.types import EngineInfo, EngineOutput, EngineRequest
from smg.upstream.grpc import convert
from smg.upstream.grpc.channel import StreamChannel
from smg.upstream.grpc.status import EngineStatusError, status_error
from smg.workers.overload import LoadReport
from smg.workers.registry import normalize_url

log = logging.getLogger("smg.upstream")

# The HealthCheck of every engine service the reference probes, by runtime name, in its order.
ENGINE_SERVICES: dict[str, str] = {
    "sglang": "/sglang.grpc.scheduler.SglangScheduler/HealthCheck",
    "vllm": "/vllm.grpc.engine.VllmEngine/HealthCheck",
    "trtllm": "/trtllm.TrtllmService/HealthCheck",
    "mlx": "/mlx.grpc.engine.MlxEngine/HealthCheck",
    "tokenspeed": "/tokenspeed.grpc.scheduler.TokenSpeedScheduler/HealthCheck",
}
ENGINE_NAMES = {"sglang": "SGLang", "vllm": "vLLM", "trtllm": "TensorRT-LLM", "mlx": "MLX", "tokenspeed": "TokenSpeed"}
SUPPORTED = convert.RUNTIMES
CLOSE_SECS = 5.0  # closing a channel cancels its calls: quick, unless the loop is stuck
DETECT_SECS = 10.0
MAX_RECONNECT_BACKOFF_MS = 5000  # detection on first use (a call before the registrar's probe found the engine)

_STUBS = {"sglang": sglang_scheduler_pb2_grpc.SglangSchedulerStub, "vllm": vllm_engine_pb2_grpc.VllmEngineStub}
GENERATE_PATHS = {runtime: ENGINE_SERVICES[runtime].replace("/HealthCheck", "/Generate") for runtime in _STUBS}


class UnsupportedEngine(ValueError):
    """The worker speaks only engine protocols smg does not serve (TensorRT-LLM, MLX, TokenSpeed)."""


class EngineClient:
    """One engine worker's channel (made on first use, reused by every call) and its RPCs."""

    def __init__(
        self,
        aio: AioThread,
        url: str,
        *,
        preferred: str | None = None,
        max_message_size: int = 256 * 1024 * 1024,
        nursery: trio.Nursery | None = None,
    ) -> None:
        """`url`: grpc://host:port; `preferred` (`--backend`): the engine to speak when a worker
        answers as both SGLang and vLLM; `max_message_size` bounds each message both ways;
        `nursery`: where the data path's connections run (the fleet's; settable later)."""
        self.aio = aio
        self.url = normalize_url(url if "://" in url else "grpc://" + url)
        if not self.url.startswith("grpc://"):
            raise ValueError(f"not a gRPC worker URL: {url!r} (grpc://host:port)")
        self.target = self.url.removeprefix("grpc://")
        self.preferred = preferred
        self.max_message_size = max_message_size
        self.runtime: str | None = None
        self.streams = StreamChannel(self.target, max_message_size=max_message_size)
        self.streams.nursery = nursery
        self._closed = False
        self._warned_server_info = False
        # on the loop thread only:
        self._channel: Any = None
        self._stubs: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"EngineClient({self.url!r}, runtime={self.runtime!r})"

    # -- the loop side ---------------------------------------------------------------------

    def _open_on_loop(self) -> Any:
        if self._closed:
            raise status_error("CANCELLED", f"the channel to {self.url} is closed (the worker was removed)")
        if self._channel is None:
            size = self.max_message_size
            options = [
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", size),
                # grpc's default backoff grows to 2 minutes, during which calls fail at once: a
                # restarted engine would look down to the health checks long after it is back
                ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
            ]
            self._channel = grpc.aio.insecure_channel(self.target, options=options)
        return self._channel

    def _stub_on_loop(self, runtime: str) -> Any:
        channel = self._open_on_loop()
        stub = self._stubs.get(runtime)
        if stub is None:
            stub = self._stubs[runtime] = _STUBS[runtime](channel)
        return stub

    async def _unary_on_loop(self, runtime: str, method: str, request: Any, timeout: float | None) -> Any:
        return await getattr(self._stub_on_loop(runtime), method)(request, timeout=timeout)

    async def _probe_on_loop(self, timeout: float) -> dict[str, BaseException | None]:
        """HealthCheck of every service at once, as raw bytes (the request is empty in every
        protocol, and only the status matters here): per runtime None (OK) or the error."""
        channel = self._open_on_loop()

        async def one(path: str) -> BaseException | None:
            try:
                await channel.unary_unary(path)(b"", timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                error: BaseException = exc
                return error
            return None

        results = await asyncio.gather(*(one(path) for path in ENGINE_SERVICES.values()))
        return dict(zip(ENGINE_SERVICES, results, strict=True))

    async def _close_on_loop(self) -> None:
        self._closed = True
        channel, self._channel = self._channel, None
        self._stubs.clear()
        if channel is not None:
            await channel.close()

    # -- the trio side ---------------------------------------------------------------------

    async def _call(self, runtime: str, method: str, request: Any, timeout: float | None) -> Any:
        try:
            return await self.aio.call(self._unary_on_loop, runtime, method, request, timeout)
        except grpc.aio.AioRpcError as exc:
            _raise_status(exc)
        except concurrent.futures.CancelledError:  # the loop cancelled it: the channel closed, or the node stops
            raise status_error("CANCELLED", f"the call to {self.url} was cancelled") from None

    async def _engine(self, timeout: float) -> str:
        return self.runtime or await self.detect(timeout)

    async def detect(self, timeout: float) -> str:
        """The worker's engine, "sglang" or "vllm" (also kept in `runtime`). `UnsupportedEngine`
        when only another engine answers; EngineStatusError when none does (UNAVAILABLE when
        the worker is unreachable, UNIMPLEMENTED when it serves no engine service)."""
        try:
            results = await self.aio.call(self._probe_on_loop, timeout)
        except concurrent.futures.CancelledError:
            raise status_error("CANCELLED", f"the probe of {self.url} was cancelled") from None
        answered = [runtime for runtime, error in results.items() if error is None]
        supported = [runtime for runtime in answered if runtime in SUPPORTED]
        if supported:
            runtime = self.preferred if self.preferred in supported else supported[0]
            self.runtime = runtime
            return runtime
        if answered:
            names = " and ".join(ENGINE_NAMES[r] for r in answered)
            raise UnsupportedEngine(
                f"the gRPC worker {self.url} is a {names} engine; smg serves SGLang and vLLM engines over gRPC"
            )
        failures = [error for error in results.values() if isinstance(error, grpc.aio.AioRpcError)]
        telling = [e for e in failures if e.code() != grpc.StatusCode.UNIMPLEMENTED]
        if telling:
            _raise_status(telling[-1])
        services = ", ".join(path.strip("/").rsplit("/", 1)[0] for path in ENGINE_SERVICES.values())
        raise status_error(
            "UNIMPLEMENTED", f"the gRPC worker {self.url} serves no engine service this gateway knows ({services})"
        )

    async def info(self, timeout: float) -> EngineInfo:
        """GetModelInfo (a failure raises), then GetServerInfo (its failure is warned about once
        per client and leaves its labels out)."""
        runtime = await self._engine(timeout)
        pb = convert.PB[runtime]
        model = await self._call(runtime, "GetModelInfo", pb.GetModelInfoRequest(), timeout)
        server = None
        try:
            server = await self._call(runtime, "GetServerInfo", pb.GetServerInfoRequest(), timeout)
        except EngineStatusError as exc:
            level = logging.DEBUG if self._warned_server_info else logging.WARNING
            self._warned_server_info = True
            log.log(level, "worker %s: GetServerInfo failed (%s), registering without the server's labels", self.url, exc)
        return convert.model_info(runtime, model, server)

    async def health(self, timeout: float) -> tuple[bool, str]:
        """The engine's HealthCheck: (healthy, its message)."""
        runtime = await self._engine(timeout)
        try:
            answer = await self._call(runtime, "HealthCheck", convert.PB[runtime].HealthCheckRequest(), timeout)
        except EngineStatusError as exc:
            if exc.status == "UNIMPLEMENTED":  # another engine answers there now: detect it again next time
                self.runtime = None
            raise
        return bool(answer.healthy), str(answer.message)

    async def loads(self, timeout: float) -> LoadReport:
        runtime = await self._engine(timeout)
        answer = await self._call(runtime, "GetLoads", convert.loads_request(runtime), timeout)
        return convert.load_report(runtime, answer)

    async def flush_cache(self, timeout: float) -> tuple[bool, str]:
        runtime = await self._engine(timeout)
        answer = await self._call(runtime, "FlushCache", convert.flush_request(), timeout)
        return bool(answer.success), str(answer.message)

    async def abort(self, request_ids: list[str], reason: str, timeout: float = 5.0) -> None:
        """Tell the engine to drop these requests. Best effort: the request may have ended, the
        worker may be gone; failures are logged at debug level only."""
        if self.runtime is None or not request_ids:
            return  # nothing was ever sent through this client
        runtime = self.runtime
        try:
            with trio.move_on_after(timeout):
                async with trio.open_nursery() as nursery:
                    for message in convert.abort_requests(runtime, request_ids, reason):
                        nursery.start_soon(self._call, runtime, "Abort", message, timeout)
        except Exception as exc:  # a group of EngineStatusErrors, most often
            log.debug("worker %s: Abort of %s failed: %s", self.url, request_ids, exc)

    def generate(self, request: EngineRequest) -> AbstractAsyncContextManager[AsyncIterator[EngineOutput]]:
        """Generate, as a block: `async with client.generate(r) as outputs: async for o in outputs`.

        Entering starts the RPC (detecting the engine first if needed) and does not wait for a
        message, so the caller's first-byte deadline covers the first `__anext__`. A non-OK status
        raises EngineStatusError from the iterator; leaving the block early cancels the RPC."""
        return self._generate(request)

    def generate_batches(self, request: EngineRequest) -> AbstractAsyncContextManager[AsyncIterator[list[EngineOutput]]]:
        """`generate`, iterating the outputs that arrived together as one list: the streaming
        relay writes once per batch instead of once per token."""
        return self._generate_batches(request)

    @asynccontextmanager
    async def _generate(self, request: EngineRequest) -> AsyncIterator[AsyncIterator[EngineOutput]]:
        async with self._generate_batches(request) as batches:
            outputs = _flat(batches)
            try:
                yield outputs
            finally:
                await outputs.aclose()

    @asynccontextmanager
    async def _generate_batches(self, request: EngineRequest) -> AsyncIterator[AsyncIterator[list[EngineOutput]]]:
        runtime = await self._engine(DETECT_SECS)
        try:
            message = convert.GENERATE_REQUEST[runtime](request)
        except (ValueError, TypeError) as exc:  # a value the engine's message cannot carry: the request's fault
            raise status_error("INVALID_ARGUMENT", f"the request cannot be sent to a {runtime} engine: {exc}") from None

        if self._closed:
            raise status_error("CANCELLED", f"the channel to {self.url} is closed (the worker was removed)")
        data = message.SerializeToString()
        if len(data) > self.max_message_size:
            raise status_error(
                "INVALID_ARGUMENT", f"the request is {len(data)} bytes, over the {self.max_message_size}-byte limit"
            )
        async with self.streams.stream(GENERATE_PATHS[runtime], data) as messages:
            outputs = _decoded_batches(runtime, messages)
            try:
                yield outputs
            finally:
                await outputs.aclose()

    async def embed(
        self, request_id: str, input_ids: list[int], original_text: str, timeout: float | None = None
    ) -> tuple[list[float], int]:
        """(the embedding, the prompt's token count)."""
        runtime = await self._engine(DETECT_SECS if timeout is None else timeout)
        answer = await self._call(runtime, "Embed", convert.embed_request(runtime, request_id, input_ids, original_text), timeout)
        return list(answer.embedding), int(answer.prompt_tokens)

    async def tokenizer_archive(self, timeout: float) -> AsyncGenerator[tuple[bytes, str], None]:
        """GetTokenizer's chunks: (data, sha256), the checksum on the last chunk only; `timeout`
        bounds the whole transfer. For `smg.tokenization.archive.ArchiveAssembler`."""
        runtime = await self._engine(timeout)

        def open_call() -> Any:  # on the loop
            return self._stub_on_loop(runtime).GetTokenizer(convert.tokenizer_request(), timeout=timeout)

        async with self.aio.stream(open_call) as chunks:
            try:
                async for chunk in chunks:
                    yield chunk.data, chunk.sha256
            except grpc.aio.AioRpcError as exc:
                _raise_status(exc)
            except StreamCancelled as exc:
                raise status_error("CANCELLED", str(exc)) from None

    async def aclose(self) -> None:
        """Close the channels (their calls end with CANCELLED); the client is not usable after."""
        self._closed = True
        with trio.CancelScope(shield=True):
            await self.streams.aclose()
        if self.aio.loop is None:
            return  # the loop stopped: its channels went with it
        # shielded: a cancelled caller (the node stopping) still closes, within a bound;
        # suppressed: the loop stopped first
        with trio.move_on_after(CLOSE_SECS, shield=True), contextlib.suppress(concurrent.futures.CancelledError):
            await self.aio.call(self._close_on_loop)


async def _decoded_batches(runtime: str, batches: AsyncIterator[list[bytes]]) -> AsyncGenerator[list[EngineOutput], None]:
    """The data path's raw messages as neutral outputs (its errors are EngineStatusError already)."""
    decode = convert.PB[runtime].GenerateResponse.FromString
    engine_output = convert.engine_output
    async for batch in batches:
        try:
            messages = [decode(data) for data in batch]
        except DecodeError as exc:
            raise status_error("INTERNAL", f"the engine sent a malformed Generate response: {exc}") from None
        outputs = [output for output in map(engine_output, itertools.repeat(runtime), messages) if output is not None]
        if outputs:
            yield outputs


async def _flat(batches: AsyncIterator[list[EngineOutput]]) -> AsyncGenerator[EngineOutput, None]:
    async for batch in batches:
        for output in batch:
            yield output


def _raise_status(exc: grpc.aio.AioRpcError) -> NoReturn:
    code = exc.code()
    raise status_error(code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN", exc.details() or "") from None


class EngineClients:
    """One client (one channel, reused) per worker URL; created on first use."""

    def __init__(self, aio: AioThread, *, preferred: str | None = None) -> None:
        self.aio = aio
        self.preferred = preferred
        self._clients: dict[str, EngineClient] = {}
        self._nursery: trio.Nursery | None = None

    def attach(self, nursery: trio.Nursery | None) -> None:
        """Where the clients' data-path connections run (the fleet's nursery; None when it stops)."""
        self._nursery = nursery
        for client in self._clients.values():
            client.streams.nursery = nursery

    def get(self, url: str) -> EngineClient:
        client = self._clients.get(url)  # the registry's URLs are normalized already: one lookup
        if client is None:
            client = EngineClient(self.aio, url, preferred=self.preferred, nursery=self._nursery)
            client = self._clients.setdefault(client.url, client)
        return client

    def urls(self) -> list[str]:
        """The (normalized) URLs that have a client."""
        return list(self._clients)

    async def forget(self, url: str) -> None:
        """The worker was removed: close its channel (a later `get` makes a new client)."""
        key = url if url in self._clients else normalize_url(url if "://" in url else "grpc://" + url)
        client = self._clients.pop(key, None)
        if client is not None:
            await client.aclose()

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(client.aclose)
