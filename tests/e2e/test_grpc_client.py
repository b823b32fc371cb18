"""The gateway's gRPC engine client (`smg.upstream.grpc.client`) against the simulated gRPC worker
served in-process, in both engine protocols (SGLang's scheduler, vLLM's engine), over real
sockets on 127.0.0.1: detection, registration RPCs, Generate streamed and not, cancellation,
Abort, Embed, GetTokenizer; and the failures a gateway meets (no server, no engine service,
an engine smg does not serve, an injected status)."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
import trio

from smg.aiothread import AioThread
from smg.generation.types import EngineChunk, EngineComplete, EngineOutput, EngineRequest, Sampling
from smg.simworker.engine import SimConfig
from smg.simworker.grpc_model import SimModel, load_shipped_tokenizer, model_directory
from smg.simworker.grpc_server import GrpcSimWorker, serve_grpc_workers
from smg.tokenization.archive import ArchiveAssembler, build_archive
from smg.tokenization.chat_template import tokenize_chat
from smg.tokenization.loader import ModelTokenizer
from smg.upstream.grpc.client import ENGINE_SERVICES, EngineClient, EngineClients, UnsupportedEngine
from smg.upstream.grpc.status import EngineStatusError
from smg.workers.overload import LoadReport

DEADLINE = 10.0
EOS = 3986


@dataclass
class Sim:
    worker: GrpcSimWorker
    url: str


@pytest.fixture(scope="module")
def tokenizer() -> ModelTokenizer:
    return load_shipped_tokenizer()


@pytest.fixture(scope="module")
def aio() -> Iterator[AioThread]:
    """The client side's loop thread (the simulated worker runs its own)."""
    thread = AioThread("test-grpc-client")
    thread.start()
    yield thread
    thread.stop()


async def start_sim(nursery: trio.Nursery, tokenizer: ModelTokenizer, engine: str, **knobs: object) -> Sim:
    config = SimConfig(grpc=True, grpc_engine=engine, ttft_ms=0.0, tpot_ms=1.0, **knobs)  # type: ignore[arg-type]
    worker = GrpcSimWorker(config, SimModel(tokenizer, seed=config.seed, answer_words=config.output_tokens))
    urls = await nursery.start(serve_grpc_workers, [worker], "127.0.0.1", 0)
    return Sim(worker, urls[0])


@pytest.fixture(params=["sglang", "vllm"])
async def sim(request: pytest.FixtureRequest, nursery: trio.Nursery, tokenizer: ModelTokenizer) -> Sim:
    return await start_sim(nursery, tokenizer, request.param)


@pytest.fixture
async def client(sim: Sim, aio: AioThread, nursery: trio.Nursery) -> AsyncIterator[EngineClient]:
    client = EngineClient(aio, sim.url, nursery=nursery)
    yield client
    await client.aclose()


def runtime_of(sim: Sim) -> str:
    return sim.worker.config.grpc_engine


def prompt(tokenizer: ModelTokenizer, text: str) -> list[int]:
    return tokenize_chat(tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)[1]


def generation(ids: list[int], *, stream: bool, rid: str = "r1", **sampling: object) -> EngineRequest:
    return EngineRequest(rid, ids, Sampling(**sampling), stream)  # type: ignore[arg-type]


async def collect(client: EngineClient, request: EngineRequest) -> list[EngineOutput]:
    with trio.fail_after(DEADLINE):
        async with client.generate(request) as outputs:
            return [output async for output in outputs]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Until `condition()` holds, within the deadline (the simulated worker runs in this trio
    run: its state is read directly, polled as it changes on the engine's own schedule)."""
    try:
        with trio.fail_after(DEADLINE):
            while not condition():
                await trio.sleep(0.005)
    except trio.TooSlowError:
        raise AssertionError(f"not within {DEADLINE}s: {what}") from None


# -- registration -------------------------------------------------------------------------------


async def test_detect_finds_the_engine_served(client: EngineClient, sim: Sim) -> None:
    with trio.fail_after(DEADLINE):
        assert await client.detect(DEADLINE) == runtime_of(sim)
    assert client.runtime == runtime_of(sim)
    assert client.url == sim.url


async def test_info_reports_the_model_and_labels(client: EngineClient, sim: Sim) -> None:
    with trio.fail_after(DEADLINE):
        info = await client.info(DEADLINE)
    assert info.runtime == runtime_of(sim) and info.model_id == "sim-model"
    assert info.model_path == "" and info.tokenizer_path == ""  # the gateway's --model-path or GetTokenizer
    assert EOS in info.eos_token_ids and info.max_context_length == 32768 and info.is_generation
    labels = info.labels
    assert labels["served_model_name"] == "sim-model" and labels["architectures"] == '["SimForCausalLM"]'
    assert "model_path" not in labels
    if runtime_of(sim) == "sglang":
        assert labels["version"] == "smg-sim"
        assert (labels["tp_size"], labels["max_running_requests"], labels["page_size"]) == ("1", "64", "16")
        assert "reasoning" not in labels  # not a server argument smg reads
    else:
        assert (labels["max_num_seqs"], labels["block_size"], labels["server_type"]) == ("64", "16", "vllm-grpc")
        assert "active_requests" not in labels and "uptime_seconds" not in labels


async def test_health_loads_and_flush(client: EngineClient) -> None:
    with trio.fail_after(DEADLINE):
        assert await client.health(DEADLINE) == (True, "OK")
        assert await client.loads(DEADLINE) == LoadReport(0, 0, 0.0)
        assert await client.flush_cache(DEADLINE) == (True, "Cache flushed.")


async def test_an_unhealthy_engine_is_still_detected_and_says_so(
    nursery: trio.Nursery, tokenizer: ModelTokenizer, aio: AioThread
) -> None:
    for engine in ("sglang", "vllm"):
        sim = await start_sim(nursery, tokenizer, engine, unhealthy=True)
        client = EngineClient(aio, sim.url, nursery=nursery)
        with trio.fail_after(DEADLINE):
            assert await client.detect(DEADLINE) == engine  # any OK reply counts
            healthy, message = await client.health(DEADLINE)
            await client.aclose()
        assert not healthy and "unhealthy" in message


# -- Generate -----------------------------------------------------------------------------------


async def test_generate_not_streamed_is_one_complete(client: EngineClient, tokenizer: ModelTokenizer) -> None:
    ids = prompt(tokenizer, "say something")
    (complete,) = await collect(client, generation(ids, stream=False))
    assert isinstance(complete, EngineComplete)
    assert complete.finish_reason == "stop" and complete.output_ids[-1] == EOS and complete.matched_stop == EOS
    assert complete.prompt_tokens == len(ids) and complete.completion_tokens == len(complete.output_ids)
    (limited,) = await collect(client, generation(ids, stream=False, rid="r2", max_new_tokens=3))
    assert isinstance(limited, EngineComplete)
    assert limited.finish_reason == "length" and limited.output_ids == complete.output_ids[:3]
    assert limited.matched_stop is None


async def test_generate_streamed_is_chunks_then_a_complete(client: EngineClient, tokenizer: ModelTokenizer) -> None:
    ids = prompt(tokenizer, "stream it")
    outputs = await collect(client, generation(ids, stream=True, max_new_tokens=8))
    *chunks, complete = outputs
    assert all(isinstance(c, EngineChunk) for c in chunks) and isinstance(complete, EngineComplete)
    assert [c.completion_tokens for c in chunks] == list(range(1, 9))  # type: ignore[union-attr]
    assert [t for c in chunks for t in c.token_ids] == complete.output_ids  # type: ignore[union-attr]
    assert complete.finish_reason == "length" and complete.completion_tokens == 8


async def test_n_2_gives_two_choices(client: EngineClient, tokenizer: ModelTokenizer) -> None:
    ids = prompt(tokenizer, "two please")
    outputs = await collect(client, generation(ids, stream=True, n=2, max_new_tokens=6))
    completes = {o.index: o for o in outputs if isinstance(o, EngineComplete)}
    assert sorted(completes) == [0, 1]
    for index, complete in completes.items():
        streamed = [t for o in outputs if isinstance(o, EngineChunk) and o.index == index for t in o.token_ids]
        assert streamed == complete.output_ids
    assert completes[0].output_ids != completes[1].output_ids
    whole = await collect(client, generation(ids, stream=False, rid="r2", n=2, max_new_tokens=6))
    assert sorted(o.index for o in whole) == [0, 1] and all(isinstance(o, EngineComplete) for o in whole)


async def test_leaving_a_stream_early_cancels_the_rpc(client: EngineClient, sim: Sim, tokenizer: ModelTokenizer) -> None:
    ids = prompt(tokenizer, "go on forever")
    request = generation(ids, stream=True, rid="long", max_new_tokens=5000, ignore_eos=True)
    got = 0
    with trio.fail_after(DEADLINE):
        async with client.generate(request) as outputs:
            async for _ in outputs:
                got += 1
                if got == 3:
                    break
    worker = sim.worker
    await wait_for(lambda: worker.rpcs_cancelled == 1 and worker.engine.running == 0, "the RPC cancelled")
    assert worker.engine.completion_tokens < 5000


async def test_a_trio_deadline_cancels_the_rpc(client: EngineClient, sim: Sim, tokenizer: ModelTokenizer) -> None:
    request = generation(prompt(tokenizer, "forever"), stream=True, rid="slow", max_new_tokens=5000, ignore_eos=True)
    with trio.move_on_after(0.2) as waited:
        await collect(client, request)
    assert waited.cancelled_caught
    await wait_for(lambda: sim.worker.rpcs_cancelled == 1 and sim.worker.engine.running == 0, "the RPC cancelled")


async def test_closing_the_client_mid_stream_ends_the_stream_retryably(
    client: EngineClient, sim: Sim, tokenizer: ModelTokenizer
) -> None:
    """The worker was removed while a request streamed from it: the stream ends with CANCELLED
    (retried elsewhere when nothing went to the client yet) and the engine stops."""
    request = generation(prompt(tokenizer, "long"), stream=True, rid="cut", max_new_tokens=5000, ignore_eos=True)
    got = 0
    with trio.fail_after(DEADLINE), pytest.raises(EngineStatusError) as failure:
        async with client.generate(request) as outputs:
            async for _ in outputs:
                got += 1
                if got == 2:
                    await client.aclose()
    assert failure.value.status == "CANCELLED" and failure.value.retryable
    await wait_for(lambda: sim.worker.engine.running == 0, "the engine stopped")


async def test_abort_ends_a_running_generation(client: EngineClient, sim: Sim, tokenizer: ModelTokenizer) -> None:
    request = generation(prompt(tokenizer, "long"), stream=True, rid="to-abort", max_new_tokens=5000, ignore_eos=True)
    outputs: list[EngineOutput] = []
    with trio.fail_after(DEADLINE):
        async with client.generate(request) as stream:
            async for output in stream:
                outputs.append(output)
                if len(outputs) == 2:
                    await client.abort(["to-abort", "unknown-id"], "test")
    last = outputs[-1]
    assert isinstance(last, EngineComplete) and last.finish_reason == "abort"
    assert 2 <= last.completion_tokens < 5000
    assert sim.worker.rpcs_cancelled == 0  # ended by Abort, not by the client leaving


async def test_an_engine_failure_is_its_status(nursery: trio.Nursery, tokenizer: ModelTokenizer, aio: AioThread) -> None:
    for engine in ("sglang", "vllm"):
        sim = await start_sim(nursery, tokenizer, engine, fail_rate=1.0, fail_status=429)
        client = EngineClient(aio, sim.url, nursery=nursery)
        with pytest.raises(EngineStatusError) as failure:
            await collect(client, generation(prompt(tokenizer, "x"), stream=True))
        assert failure.value.status == "RESOURCE_EXHAUSTED" and failure.value.retryable
        assert failure.value.http_status == 429 and failure.value.details == "simulated worker failure"
        with pytest.raises(EngineStatusError) as bad:
            await collect(client, generation([10**6], stream=False))
        assert bad.value.status == "INVALID_ARGUMENT" and not bad.value.retryable
        await client.aclose()


# -- Embed, GetTokenizer ------------------------------------------------------------------------


async def test_embed(client: EngineClient, sim: Sim) -> None:
    with trio.fail_after(DEADLINE):
        embedding, prompt_tokens = await client.embed("e1", [1, 2, 3], "some text")
    assert prompt_tokens == 3 and len(embedding) == sim.worker.config.embedding_dim
    assert abs(sum(v * v for v in embedding) - 1.0) < 1e-3


async def test_tokenizer_archive_assembles_and_its_checksum_holds(client: EngineClient) -> None:
    assembler = ArchiveAssembler()
    checksums = []
    with trio.fail_after(DEADLINE):
        async for data, sha256 in client.tokenizer_archive(DEADLINE):
            assembler.feed(data, sha256)
            checksums.append(sha256)
    files = assembler.finish()
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(files)
    archive, digest = build_archive(model_directory())
    assert all(not c for c in checksums[:-1]) and checksums[-1] == digest == hashlib.sha256(archive).hexdigest()


# -- failures before any engine -----------------------------------------------------------------


async def test_an_unreachable_worker_is_unavailable_and_retryable(aio: AioThread, nursery: trio.Nursery) -> None:
    client = EngineClient(aio, f"grpc://127.0.0.1:{free_port()}", nursery=nursery)
    try:
        with trio.fail_after(DEADLINE), pytest.raises(EngineStatusError) as failure:
            await client.detect(2.0)
        assert failure.value.status == "UNAVAILABLE" and failure.value.retryable and failure.value.http_status == 503
        with trio.fail_after(DEADLINE), pytest.raises(EngineStatusError) as health:
            await client.health(2.0)
        assert health.value.status == "UNAVAILABLE"
    finally:
        await client.aclose()


async def test_a_worker_that_comes_back_is_reached_again(
    nursery: trio.Nursery, tokenizer: ModelTokenizer, aio: AioThread
) -> None:
    """The channel reconnects by itself (within grpc's reconnect backoff, bounded by the client)."""
    port = free_port()
    client = EngineClient(aio, f"grpc://127.0.0.1:{port}", nursery=nursery)
    with trio.fail_after(DEADLINE), pytest.raises(EngineStatusError):
        await client.detect(2.0)
    config = SimConfig(grpc=True, grpc_engine="vllm")
    worker = GrpcSimWorker(config, SimModel(tokenizer))
    await nursery.start(serve_grpc_workers, [worker], "127.0.0.1", port)
    with trio.fail_after(DEADLINE):
        while True:
            try:
                assert await client.detect(2.0) == "vllm"
                break
            except EngineStatusError as exc:
                assert exc.status == "UNAVAILABLE"
                await trio.sleep(0.05)
    await client.aclose()


async def serve_raw(aio: AioThread, services: dict[str, bytes]) -> tuple[grpc.aio.Server, str]:
    """A server answering HealthCheck of the given services (full service name -> reply bytes)."""

    def handlers() -> list[grpc.GenericRpcHandler]:
        out = []
        for service, reply in services.items():

            async def health(request: bytes, context: grpc.aio.ServicerContext, reply: bytes = reply) -> bytes:
                return reply

            out.append(
                grpc.method_handlers_generic_handler(service, {"HealthCheck": grpc.unary_unary_rpc_method_handler(health)})
            )
        return out

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(handlers=handlers())
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = await aio.call(start)
    return server, f"grpc://127.0.0.1:{port}"


def service_of(runtime: str) -> str:
    return ENGINE_SERVICES[runtime].strip("/").rsplit("/", 1)[0]


@pytest.mark.parametrize(
    ("services", "preferred", "expected"),
    [
        (["sglang", "vllm"], None, "sglang"),
        (["sglang", "vllm"], "vllm", "vllm"),
        (["vllm", "trtllm"], "sglang", "vllm"),
        (["trtllm"], None, UnsupportedEngine),
        (["mlx", "tokenspeed"], "sglang", UnsupportedEngine),
        (["other.Service"], None, EngineStatusError),
    ],
)
async def test_detection_choices(
    aio: AioThread, nursery: trio.Nursery, services: list[str], preferred: str | None, expected: object
) -> None:
    names = {service_of(s) if s in ENGINE_SERVICES else s: b"" for s in services}  # b"": healthy=false
    server, url = await serve_raw(aio, names)
    client = EngineClient(aio, url, preferred=preferred, nursery=nursery)
    try:
        with trio.fail_after(DEADLINE):
            if isinstance(expected, str):
                assert await client.detect(DEADLINE) == expected
            elif expected is UnsupportedEngine:
                with pytest.raises(UnsupportedEngine, match="smg serves SGLang and vLLM") as error:
                    await client.detect(DEADLINE)
                assert "TensorRT-LLM" in str(error.value) or "MLX and TokenSpeed" in str(error.value)
            else:
                with pytest.raises(EngineStatusError, match="serves no engine service") as failure:
                    await client.detect(DEADLINE)
                assert failure.value.status == "UNIMPLEMENTED"
    finally:
        await client.aclose()
        await aio.call(server.stop, None)


# -- clients per URL ----------------------------------------------------------------------------


async def test_one_client_per_worker_and_a_closed_one_fails_fast(sim: Sim, aio: AioThread, nursery: trio.Nursery) -> None:
    clients = EngineClients(aio, preferred="vllm")
    clients.attach(nursery)
    first = clients.get(sim.url)
    assert clients.get(sim.url.replace("grpc://", "GRPC://") + "/") is first
    assert clients.urls() == [sim.url] and first.preferred == "vllm"
    with trio.fail_after(DEADLINE):
        assert await first.detect(DEADLINE) == runtime_of(sim)
        await clients.forget(sim.url)
        with pytest.raises(EngineStatusError) as closed:
            await first.health(DEADLINE)
        assert closed.value.status == "CANCELLED" and closed.value.retryable
        second = clients.get(sim.url)
        assert second is not first and await second.health(DEADLINE) == (True, "OK")
        await clients.aclose()
    assert clients.urls() == []


def test_urls_are_normalized_and_checked(aio: AioThread) -> None:
    assert EngineClient(aio, "GRPC://LocalHost:50051/").url == "grpc://localhost:50051"
    assert EngineClient(aio, "127.0.0.1:50051").target == "127.0.0.1:50051"
    with pytest.raises(ValueError, match="needs a port"):
        EngineClient(aio, "grpc://host")
    with pytest.raises(ValueError, match="not a gRPC worker URL"):
        EngineClient(aio, "http://host:80")
