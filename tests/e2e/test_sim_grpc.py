"""`smg sim-worker --grpc` as a process, driven by a grpcio client as a gateway drives it
(../shared/reference/smg-grpc-contract.md): registration RPCs, the tokenizer, Generate."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from smg_grpc_proto.generated import (
    common_pb2,
    sglang_scheduler_pb2,
    sglang_scheduler_pb2_grpc,
    vllm_engine_pb2,
    vllm_engine_pb2_grpc,
)

from smg.simworker.grpc_model import load_shipped_tokenizer
from smg.tokenization.archive import ArchiveAssembler, extract_archive
from smg.tokenization.chat_template import tokenize_chat
from smg.tokenization.loader import ModelTokenizer, load_model_tokenizer
from tests.helpers import Proc, start_sim

pb = sglang_scheduler_pb2
DEADLINE = 10.0
OTHER_ENGINES = (
    "/vllm.grpc.engine.VllmEngine/HealthCheck",
    "/trtllm.TrtllmService/HealthCheck",
    "/mlx.grpc.engine.MlxEngine/HealthCheck",
    "/tokenspeed.grpc.scheduler.TokenSpeedScheduler/HealthCheck",
)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "the weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "days", "unit"],
        },
    },
}


@pytest.fixture(scope="module")
def tokenizer() -> ModelTokenizer:
    return load_shipped_tokenizer()


def _open(proc: Proc) -> tuple[grpc.Channel, sglang_scheduler_pb2_grpc.SglangSchedulerStub]:
    channel = grpc.insecure_channel(proc.url.removeprefix("grpc://"))
    grpc.channel_ready_future(channel).result(timeout=DEADLINE)
    return channel, sglang_scheduler_pb2_grpc.SglangSchedulerStub(channel)


@pytest.fixture(scope="module")
def sim() -> Iterator[tuple[grpc.Channel, sglang_scheduler_pb2_grpc.SglangSchedulerStub]]:
    proc = start_sim(1, "--grpc", "--tpot-ms", "2")
    assert proc.url.startswith("grpc://127.0.0.1:")
    channel, stub = _open(proc)
    yield channel, stub
    channel.close()
    proc.stop()


def chat_ids(tokenizer: ModelTokenizer, messages: list[dict[str, object]], tools: list[object] | None = None) -> list[int]:
    return tokenize_chat(tokenizer, messages, tools=tools, add_generation_prompt=True)[1]  # type: ignore[arg-type]


def generate(stub, ids: list[int], *, stream: bool, rid: str = "r", **sampling: object) -> list[pb.GenerateResponse]:  # type: ignore[no-untyped-def]
    request = pb.GenerateRequest(
        request_id=rid,
        tokenized=pb.TokenizedInput(input_ids=ids),
        sampling_params=pb.SamplingParams(skip_special_tokens=True, **sampling),  # type: ignore[arg-type]
        stream=stream,
    )
    return list(stub.Generate(request, timeout=DEADLINE))


def test_registration_rpcs(sim) -> None:  # type: ignore[no-untyped-def]
    channel, stub = sim
    assert stub.HealthCheck(pb.HealthCheckRequest(), timeout=DEADLINE).healthy
    for method in OTHER_ENGINES:  # the reference probes these: grpcio's UNIMPLEMENTED is the answer
        call = channel.unary_unary(method, request_serializer=lambda _: b"", response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as error:
            call(None, timeout=DEADLINE)
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=DEADLINE)
    assert info.served_model_name == "sim-model"
    assert info.model_path == "" and info.tokenizer_path == ""
    assert 3986 in info.eos_token_ids
    server = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=DEADLINE)
    assert server.server_args["served_model_name"] == "sim-model"
    assert server.server_args["max_running_requests"] == 64
    assert "model_path" not in server.server_args
    loads = stub.GetLoads(pb.GetLoadsRequest(include=["core", "disagg", "queues", "memory"]), timeout=DEADLINE)
    assert loads.dp_rank_count == 1 and loads.loads[0].max_total_num_tokens == 8192 * 16
    assert loads.loads[0].HasField("queues")
    assert stub.FlushCache(common_pb2.FlushCacheRequest(), timeout=DEADLINE).success


def test_get_tokenizer_streams_the_shipped_tokenizer(sim, tokenizer) -> None:  # type: ignore[no-untyped-def]
    _, stub = sim
    assembler = ArchiveAssembler()
    chunks = list(stub.GetTokenizer(common_pb2.GetTokenizerRequest(), timeout=DEADLINE))
    assert all(not c.sha256 for c in chunks[:-1]) and chunks[-1].sha256
    for chunk in chunks:
        assembler.feed(chunk.data, chunk.sha256)
    files = assembler.finish()
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(files)
    with tempfile.TemporaryDirectory() as directory:
        loaded = load_model_tokenizer(extract_archive(files, directory))
        assert loaded.encode("the quick brown fox") == tokenizer.encode("the quick brown fox")
        assert "default" in loaded.chat_templates


def test_generate_non_stream_is_one_complete(sim, tokenizer) -> None:  # type: ignore[no-untyped-def]
    _, stub = sim
    ids = chat_ids(tokenizer, [{"role": "user", "content": "say something"}])
    responses = generate(stub, ids, stream=False, rid="ns")
    assert [r.WhichOneof("response") for r in responses] == ["complete"]
    complete = responses[0].complete
    assert complete.finish_reason == "stop" and complete.output_ids[-1] == 3986
    assert complete.prompt_tokens == len(ids) and complete.completion_tokens == len(complete.output_ids)
    again = generate(stub, ids, stream=False, rid="ns2")[0].complete
    assert list(again.output_ids) == list(complete.output_ids)  # deterministic
    limited = generate(stub, ids, stream=False, rid="ns3", max_new_tokens=3)[0].complete
    assert limited.finish_reason == "length" and list(limited.output_ids) == list(complete.output_ids[:3])


def test_generate_stream_chunks_then_complete_and_the_cache_grows(sim, tokenizer) -> None:  # type: ignore[no-untyped-def]
    _, stub = sim
    ids = chat_ids(tokenizer, [{"role": "user", "content": "a long enough prompt " * 12}])
    first = generate(stub, ids, stream=True, rid="s1", max_new_tokens=10)
    kinds = [r.WhichOneof("response") for r in first]
    assert kinds == ["chunk"] * 10 + ["complete"]
    streamed = [t for r in first[:-1] for t in r.chunk.token_ids]
    assert [r.chunk.completion_tokens for r in first[:-1]] == list(range(1, 11))
    complete = first[-1].complete
    assert complete.finish_reason == "length" and complete.completion_tokens == 10
    assert list(complete.output_ids) == streamed
    second = generate(stub, ids, stream=True, rid="s2", max_new_tokens=10)
    assert second[0].chunk.cached_tokens > first[0].chunk.cached_tokens
    assert second[-1].complete.cached_tokens == second[0].chunk.cached_tokens


def test_n_stop_ids_and_bad_requests(sim, tokenizer) -> None:  # type: ignore[no-untyped-def]
    _, stub = sim
    ids = chat_ids(tokenizer, [{"role": "user", "content": "n please"}])
    completes = [r.complete for r in generate(stub, ids, stream=False, rid="n", n=3, max_new_tokens=6)]
    assert sorted(c.index for c in completes) == [0, 1, 2]
    whole = completes[0].output_ids
    stopped = generate(stub, ids, stream=False, rid="stop", stop_token_ids=[whole[2]])[0].complete
    assert stopped.finish_reason == "stop" and stopped.matched_token_id == whole[2]
    for bad in ([], [10**6]):
        with pytest.raises(grpc.RpcError) as error:
            generate(stub, bad, stream=False, rid="bad")
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    unknown = stub.Abort(pb.AbortRequest(request_id="nobody"), timeout=DEADLINE)
    assert not unknown.success


def test_abort_ends_a_long_generation(sim, tokenizer) -> None:  # type: ignore[no-untyped-def]
    _, stub = sim
    ids = chat_ids(tokenizer, [{"role": "user", "content": "go on forever"}])
    got: list[pb.GenerateResponse] = []

    def run() -> None:
        got.extend(generate(stub, ids, stream=True, rid="long", max_new_tokens=5000, ignore_eos=True))

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + DEADLINE
    while not stub.Abort(pb.AbortRequest(request_id="long", reason="test"), timeout=DEADLINE).success:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    thread.join(DEADLINE)
    assert not thread.is_alive()
    assert got[-1].complete.finish_reason == "abort"
    assert got[-1].complete.completion_tokens < 5000


def test_tools_are_answered_with_a_qwen_tool_call(sim, tokenizer) -> None:  # type: ignore[no-untyped-def]
    _, stub = sim
    messages: list[dict[str, object]] = [{"role": "user", "content": "weather in Paris?"}]
    ids = chat_ids(tokenizer, messages, tools=[WEATHER_TOOL])
    complete = generate(stub, ids, stream=False, rid="tool")[0].complete
    text = tokenizer.decode(list(complete.output_ids))
    assert text.startswith("<tool_call>\n") and text.endswith("\n</tool_call>")
    call = json.loads(text.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>"))
    assert call == {"name": "get_weather", "arguments": {"city": "example", "days": 1, "unit": "celsius"}}
    followup = [
        *messages,
        {"role": "assistant", "content": "", "tool_calls": [{"function": call}]},
        {"role": "tool", "content": "sunny"},
    ]
    answer = generate(stub, chat_ids(tokenizer, followup, tools=[WEATHER_TOOL]), stream=False, rid="t2")[0].complete
    assert "<tool_call>" not in tokenizer.decode(list(answer.output_ids))


def test_reasoning_thinks_first() -> None:
    proc = start_sim(1, "--grpc", "--reasoning", "--tpot-ms", "0")
    try:
        channel, stub = _open(proc)
        with channel:
            tokenizer = load_shipped_tokenizer()
            ids = chat_ids(tokenizer, [{"role": "user", "content": "think"}])
            complete = generate(stub, ids, stream=False, rid="think")[0].complete
            text = tokenizer.decode(list(complete.output_ids))
            assert text.startswith("<think>\n") and "\n</think>\n\n" in text
            assert text.split("</think>")[1].strip()
    finally:
        proc.stop()


# -- `--grpc-engine vllm`: vLLM's VllmEngine service over the same simulated engine ----------------


@pytest.fixture(scope="module")
def vllm_sim() -> Iterator[tuple[grpc.Channel, vllm_engine_pb2_grpc.VllmEngineStub]]:
    proc = start_sim(1, "--grpc", "--grpc-engine", "vllm", "--tpot-ms", "2")
    assert "(vLLM engine)" in proc.log()
    channel = grpc.insecure_channel(proc.url.removeprefix("grpc://"))
    grpc.channel_ready_future(channel).result(timeout=DEADLINE)
    yield channel, vllm_engine_pb2_grpc.VllmEngineStub(channel)
    channel.close()
    proc.stop()


def vllm_generate(
    stub, *, stream: bool, rid: str = "v", ids: list[int] | None = None, text: str | None = None, **sampling: object
) -> list[vllm_engine_pb2.GenerateResponse]:  # type: ignore[no-untyped-def]
    prompt = {"text": text} if text is not None else {"tokenized": vllm_engine_pb2.TokenizedInput(input_ids=ids or [])}
    request = vllm_engine_pb2.GenerateRequest(
        request_id=rid,
        sampling_params=vllm_engine_pb2.SamplingParams(skip_special_tokens=True, **sampling),  # type: ignore[arg-type]
        stream=stream,
        **prompt,  # type: ignore[arg-type]
    )
    return list(stub.Generate(request, timeout=DEADLINE))


def test_vllm_mode_serves_only_the_vllm_service(vllm_sim) -> None:  # type: ignore[no-untyped-def]
    channel, stub = vllm_sim
    assert stub.HealthCheck(vllm_engine_pb2.HealthCheckRequest(), timeout=DEADLINE).healthy
    others = ("/sglang.grpc.scheduler.SglangScheduler/HealthCheck", *OTHER_ENGINES[1:])
    for method in others:
        call = channel.unary_unary(method, request_serializer=lambda _: b"", response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as error:
            call(None, timeout=DEADLINE)
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    info = stub.GetModelInfo(vllm_engine_pb2.GetModelInfoRequest(), timeout=DEADLINE)
    assert info.served_model_name == "sim-model" and info.model_path == "" and 3986 in info.eos_token_ids
    server = stub.GetServerInfo(vllm_engine_pb2.GetServerInfoRequest(), timeout=DEADLINE)
    assert (server.server_type, server.max_num_seqs, server.block_size, server.data_parallel_size) == ("vllm-grpc", 64, 16, 1)
    loads = stub.GetLoads(vllm_engine_pb2.GetLoadsRequest(include=["core"]), timeout=DEADLINE)
    assert loads.dp_rank_count == 1 and loads.loads[0].max_total_num_tokens == 8192 * 16
    assert not stub.GetLoads(vllm_engine_pb2.GetLoadsRequest(dp_rank=3), timeout=DEADLINE).loads
    assert stub.FlushCache(common_pb2.FlushCacheRequest(), timeout=DEADLINE).success
    embedded = stub.Embed(
        vllm_engine_pb2.EmbedRequest(request_id="e", tokenized=vllm_engine_pb2.TokenizedInput(input_ids=[1, 2])),
        timeout=DEADLINE,
    )
    assert embedded.prompt_tokens == 2 and embedded.embedding_dim == 16 == len(embedded.embedding)
    chunks = list(stub.GetTokenizer(common_pb2.GetTokenizerRequest(), timeout=DEADLINE))
    assert chunks[-1].sha256 and all(not c.sha256 for c in chunks[:-1])
    kv = stub.SubscribeKvEvents(common_pb2.SubscribeKvEventsRequest(load_records_before_first_batch=True), timeout=DEADLINE)
    assert next(kv).load.load_only  # vLLM's service streams KV events too
    kv.cancel()


def test_vllm_generate_tokens_or_text(vllm_sim, tokenizer) -> None:  # type: ignore[no-untyped-def]
    _, stub = vllm_sim
    ids = chat_ids(tokenizer, [{"role": "user", "content": "say something"}])
    (whole,) = vllm_generate(stub, ids=ids, stream=False)
    complete = whole.complete
    assert complete.finish_reason == "stop" and complete.output_ids[-1] == 3986 and complete.matched_token_id == 3986
    assert complete.prompt_tokens == len(ids)
    streamed = vllm_generate(stub, ids=ids, stream=True, rid="v2", max_tokens=5)
    assert [r.WhichOneof("response") for r in streamed] == ["chunk"] * 5 + ["complete"]
    assert [t for r in streamed[:-1] for t in r.chunk.token_ids] == list(complete.output_ids[:5])
    assert streamed[-1].complete.finish_reason == "length"
    text = tokenizer.decode(ids, skip_special_tokens=False)
    (from_text,) = vllm_generate(stub, text=text, stream=False, rid="v3")
    assert list(from_text.complete.output_ids) == list(complete.output_ids)  # the same prompt, tokenized there
    two = vllm_generate(stub, ids=ids, stream=False, rid="v4", n=2, max_tokens=4)
    assert sorted(r.complete.index for r in two) == [0, 1]
    for bad in ({"ids": []}, {"ids": [10**6]}, {"ids": ids, "max_tokens": 10**6}):
        with pytest.raises(grpc.RpcError) as error:
            vllm_generate(stub, stream=False, rid="bad", **bad)  # type: ignore[arg-type]
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_tokens=1000000" in error.value.details()


def test_vllm_abort_takes_a_list_of_ids(vllm_sim, tokenizer) -> None:  # type: ignore[no-untyped-def]
    _, stub = vllm_sim
    ids = chat_ids(tokenizer, [{"role": "user", "content": "go on forever"}])
    got: list[vllm_engine_pb2.GenerateResponse] = []

    def run() -> None:
        params = vllm_engine_pb2.SamplingParams(max_tokens=5000, ignore_eos=True)
        request = vllm_engine_pb2.GenerateRequest(
            request_id="vlong", tokenized=vllm_engine_pb2.TokenizedInput(input_ids=ids), sampling_params=params, stream=True
        )
        for response in stub.Generate(request, timeout=DEADLINE):  # each as it arrives
            got.append(response)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + DEADLINE
    while not got:  # the generation is running once its first chunk is out
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stub.Abort(vllm_engine_pb2.AbortRequest(request_ids=["nobody", "vlong"]), timeout=DEADLINE)
    thread.join(DEADLINE)
    assert not thread.is_alive()
    assert got[-1].complete.finish_reason == "abort" and got[-1].complete.completion_tokens < 5000


def test_kv_events_stream_the_cache_models_stores_flushes_and_load() -> None:
    """SubscribeKvEvents: load records first when asked, the prompt's blocks stored (16 ids each,
    chained by parent), a flush as a cleared event, a load record on a quiet stream; a late
    subscriber from 0 gets a snapshot of the live blocks instead of the history."""
    proc = start_sim(1, "--grpc", "--tpot-ms", "0", "--ttft-ms", "0")
    channel, stub = _open(proc)
    try:
        request = common_pb2.SubscribeKvEventsRequest(start_sequence_number=0, load_records_before_first_batch=True)
        stream = stub.SubscribeKvEvents(request, timeout=DEADLINE)
        first = next(stream)
        assert first.sequence_number == 0 and first.load.load_only and not first.events
        ids = list(range(1000, 1040))  # two full blocks of 16, and 8 ids over
        generate(stub, ids, stream=False, rid="kv1", max_new_tokens=2)
        batch = next(b for b in stream if b.events)
        assert batch.sequence_number == 1 and not batch.load.load_only
        stored = batch.events[0].stored
        assert [list(block.token_ids) for block in stored.blocks] == [ids[:16], ids[16:32]]
        assert not stored.HasField("parent_block_hash") and stored.locality == common_pb2.KV_CACHE_LOCALITY_LOCAL
        stub.FlushCache(common_pb2.FlushCacheRequest(), timeout=DEADLINE)
        cleared = next(b for b in stream if any(e.WhichOneof("data") == "cleared" for e in b.events))
        assert cleared.sequence_number > batch.sequence_number
        quiet = next(stream)  # nothing happens: a heartbeat within a second or so
        assert quiet.load.load_only and quiet.sequence_number == cleared.sequence_number
        stream.cancel()

        generate(stub, ids, stream=False, rid="kv2", max_new_tokens=2)
        late = stub.SubscribeKvEvents(common_pb2.SubscribeKvEventsRequest(), timeout=DEADLINE)
        snapshot = next(late)
        assert snapshot.snapshot.count == 1 and snapshot.snapshot.blocks >= 2
        assert snapshot.events[0].WhichOneof("data") == "cleared"
        hashes = [e.stored.blocks[0].block_hash for e in snapshot.events[1:]]
        parents = [e.stored.parent_block_hash for e in snapshot.events[1:] if e.stored.HasField("parent_block_hash")]
        assert set(parents) <= set(hashes) and all(e.event_id == 0 for e in snapshot.events)
        late.cancel()
    finally:
        channel.close()
        proc.stop()
