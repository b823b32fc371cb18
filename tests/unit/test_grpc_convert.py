"""The engines' messages to and from the neutral types (`smg.upstream.grpc.convert`), for SGLang
and vLLM: every sampling field through the wire and back, the defaults proto3 cannot express,
responses, model info and labels, load reports."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from google.protobuf import struct_pb2
from smg_grpc_proto.generated import sglang_scheduler_pb2 as sglang_pb
from smg_grpc_proto.generated import vllm_engine_pb2 as vllm_pb

from smg.generation.types import EngineChunk, EngineComplete, EngineOutput, EngineRequest, Sampling, TokenLogprob
from smg.upstream.grpc import convert
from smg.workers.overload import LoadReport

# every field away from its default, in values float32 carries exactly
FULL = Sampling(
    temperature=0.5,
    top_p=0.75,
    top_k=40,
    min_p=0.125,
    frequency_penalty=0.25,
    presence_penalty=-0.5,
    repetition_penalty=1.5,
    max_new_tokens=77,
    min_new_tokens=3,
    stop_token_ids=(7, 8),
    ignore_eos=True,
    no_stop_trim=True,
    skip_special_tokens=False,
    spaces_between_special_tokens=False,
    n=3,
    seed=1234,
    logit_bias={5: -2.5, 9: 1.0},
    json_schema='{"type":"object"}',
)


def request(sampling: Sampling, **fields: Any) -> EngineRequest:
    base: dict[str, Any] = {"request_id": "rid-1", "input_ids": [1, 2, 3], "sampling": sampling, "stream": True}
    return EngineRequest(**{**base, **fields})


def over_the_wire(message: Any) -> Any:
    return type(message).FromString(message.SerializeToString())


# -- decoders, the engines' side (test-only) ----------------------------------------------------


def sglang_sampling(p: Any) -> Sampling:
    constraint = p.WhichOneof("constraint")
    return Sampling(
        temperature=p.temperature or None,
        top_p=p.top_p,
        top_k=p.top_k,
        min_p=p.min_p or None,
        frequency_penalty=p.frequency_penalty or None,
        presence_penalty=p.presence_penalty or None,
        repetition_penalty=p.repetition_penalty,
        max_new_tokens=p.max_new_tokens if p.HasField("max_new_tokens") else None,
        min_new_tokens=p.min_new_tokens or None,
        stop_token_ids=tuple(p.stop_token_ids),
        ignore_eos=p.ignore_eos,
        no_stop_trim=p.no_stop_trim,
        skip_special_tokens=p.skip_special_tokens,
        spaces_between_special_tokens=p.spaces_between_special_tokens,
        n=p.n,
        seed=None,  # no field
        logit_bias={int(k): v for k, v in p.logit_bias.items()},
        json_schema=p.json_schema if constraint == "json_schema" else None,
        regex=p.regex if constraint == "regex" else None,
        ebnf=p.ebnf_grammar if constraint == "ebnf_grammar" else None,
    )


def vllm_sampling(p: Any) -> Sampling:
    constraint = p.WhichOneof("constraint")
    return Sampling(
        temperature=p.temperature if p.HasField("temperature") else None,
        top_p=p.top_p,
        top_k=p.top_k,
        min_p=p.min_p or None,
        frequency_penalty=p.frequency_penalty or None,
        presence_penalty=p.presence_penalty or None,
        repetition_penalty=p.repetition_penalty,
        max_new_tokens=p.max_tokens if p.HasField("max_tokens") else None,
        min_new_tokens=p.min_tokens or None,
        stop_token_ids=tuple(p.stop_token_ids),
        ignore_eos=p.ignore_eos,
        no_stop_trim=p.include_stop_str_in_output,
        skip_special_tokens=p.skip_special_tokens,
        spaces_between_special_tokens=p.spaces_between_special_tokens,
        n=p.n,
        seed=p.seed if p.HasField("seed") else None,
        logit_bias=dict(p.logit_bias),
        json_schema=p.json_schema if constraint == "json_schema" else None,
        regex=p.regex if constraint == "regex" else None,
        ebnf=p.grammar if constraint == "grammar" else None,
    )


def response(module: Any, output: EngineOutput) -> Any:
    """The engine's message for `output` (as a servicer writes it)."""

    def logprobs(values: list[TokenLogprob]) -> Any:
        return module.OutputLogProbs(
            token_logprobs=[v.logprob for v in values],
            token_ids=[v.token_id for v in values],
            top_logprobs=[module.TopLogProbs(values=[lp for _, lp in v.top], token_ids=[t for t, _ in v.top]) for v in values],
        )

    extra = {} if output.logprobs is None else {"output_logprobs": logprobs(output.logprobs)}
    common = {
        "index": output.index,
        "prompt_tokens": output.prompt_tokens,
        "completion_tokens": output.completion_tokens,
        "cached_tokens": output.cached_tokens,
    }
    if isinstance(output, EngineChunk):
        return module.GenerateResponse(chunk=module.GenerateStreamChunk(token_ids=output.token_ids, **common, **extra))
    if isinstance(output.matched_stop, int):
        extra["matched_token_id"] = output.matched_stop
    elif isinstance(output.matched_stop, str):
        extra["matched_stop_str"] = output.matched_stop
    complete = module.GenerateComplete(output_ids=output.output_ids, finish_reason=output.finish_reason, **common, **extra)
    return module.GenerateResponse(complete=complete)


# -- requests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("constraint", ["json_schema", "regex", "ebnf"])
def test_sglang_request_round_trips_every_field_but_the_seed(constraint: str) -> None:
    sampling = dataclasses.replace(FULL, **{"json_schema": None, constraint: "root ::= 'x'"})
    message = over_the_wire(convert.sglang_generate_request(request(sampling, original_text="hi", log_metrics=True)))
    assert message.request_id == "rid-1" and message.stream
    assert list(message.tokenized.input_ids) == [1, 2, 3] and message.tokenized.original_text == "hi"
    assert message.log_metrics and message.logprob_start_len == -1 and not message.return_logprob
    assert sglang_sampling(message.sampling_params) == dataclasses.replace(sampling, seed=None)


@pytest.mark.parametrize("constraint", ["json_schema", "regex", "ebnf"])
def test_vllm_request_round_trips_every_field(constraint: str) -> None:
    sampling = dataclasses.replace(FULL, **{"json_schema": None, constraint: "root ::= 'x'"})
    message = over_the_wire(convert.vllm_generate_request(request(sampling, original_text="hi")))
    assert message.request_id == "rid-1" and message.stream
    assert message.WhichOneof("input") == "tokenized"
    assert list(message.tokenized.input_ids) == [1, 2, 3] and message.tokenized.original_text == "hi"
    assert not message.sampling_params.HasField("logprobs")
    assert vllm_sampling(message.sampling_params) == sampling


def test_defaults_are_sent_as_each_engine_reads_them() -> None:
    sg = over_the_wire(convert.sglang_generate_request(request(Sampling(), stream=False))).sampling_params
    assert sg.temperature == 1.0  # OpenAI's default: SGLang's field is not optional and 0 would be greedy
    assert (sg.top_p, sg.top_k, sg.repetition_penalty, sg.n) == (1.0, -1, 1.0, 1)
    assert not sg.HasField("max_new_tokens") and sg.skip_special_tokens and sg.spaces_between_special_tokens
    assert sg.WhichOneof("constraint") is None and not sg.logit_bias
    vl = over_the_wire(convert.vllm_generate_request(request(Sampling(top_k=-1), stream=False))).sampling_params
    for optional in ("temperature", "max_tokens", "seed", "logprobs"):
        assert not vl.HasField(optional), optional
    assert (vl.top_p, vl.top_k, vl.repetition_penalty, vl.n) == (1.0, 0, 1.0, 1)
    assert vl.skip_special_tokens and vl.spaces_between_special_tokens


def test_a_zero_temperature_is_sent_where_the_protocol_can_tell() -> None:
    vl = convert.vllm_generate_request(request(Sampling(temperature=0.0))).sampling_params
    assert vl.HasField("temperature") and vl.temperature == 0.0


def test_logprobs_requests() -> None:
    sg = convert.sglang_generate_request(request(Sampling(), logprobs=True, top_logprobs=5))
    assert (sg.return_logprob, sg.top_logprobs_num, sg.logprob_start_len) == (True, 5, -1)
    vl = convert.vllm_generate_request(request(Sampling(), logprobs=True, top_logprobs=0))
    assert vl.sampling_params.HasField("logprobs") and vl.sampling_params.logprobs == 0


def test_a_seed_wider_than_int32_is_wrapped_for_vllm() -> None:
    for seed, sent in ((0, 0), (2**31 - 1, 2**31 - 1), (2**31, -(2**31)), (2**32 + 5, 5), (-1, -1)):
        assert convert.vllm_generate_request(request(Sampling(seed=seed))).sampling_params.seed == sent


def test_two_constraints_are_refused() -> None:
    for build in (convert.sglang_generate_request, convert.vllm_generate_request):
        with pytest.raises(ValueError, match="json_schema, regex"):
            build(request(Sampling(json_schema="{}", regex="a+")))


def test_abort_embed_and_loads_requests() -> None:
    sg = convert.abort_requests("sglang", ["a", "b"], "Stream dropped")
    assert [(m.request_id, m.reason) for m in sg] == [("a", "Stream dropped"), ("b", "Stream dropped")]
    (vl,) = convert.abort_requests("vllm", ["a", "b"], "Stream dropped")
    assert list(vl.request_ids) == ["a", "b"]
    for runtime, module in convert.PB.items():
        embed = convert.embed_request(runtime, "e1", [4, 5], "text")
        assert isinstance(embed, module.EmbedRequest)
        assert (embed.request_id, list(embed.tokenized.input_ids), embed.tokenized.original_text) == ("e1", [4, 5], "text")
    assert list(convert.loads_request("sglang").include) == ["core", "disagg", "queues", "memory"]
    assert list(convert.loads_request("vllm").include) == ["core"]


# -- responses ----------------------------------------------------------------------------------

LOGPROBS = [TokenLogprob(11, -0.5, [(11, -0.5), (12, -1.25)]), TokenLogprob(13, -0.25, [(13, -0.25), (14, -2.0)])]
OUTPUTS: list[EngineOutput] = [
    EngineChunk(0, [11, 13], 5, 2, 1),
    EngineChunk(1, [11, 13], 5, 2, 1, LOGPROBS),
    EngineComplete(0, [11, 13, 2], "stop", 5, 3, 1, 2),
    EngineComplete(1, [11, 13], "stop", 5, 2, 0, "</s>", LOGPROBS),
    EngineComplete(2, [11], "length", 5, 1, 0),
    EngineComplete(0, [], "abort", 5, 0, 0),
]


@pytest.mark.parametrize("runtime", convert.RUNTIMES)
@pytest.mark.parametrize("output", OUTPUTS, ids=lambda o: f"{type(o).__name__}-{o.index}")
def test_responses_round_trip(runtime: str, output: EngineOutput) -> None:
    assert convert.engine_output(runtime, over_the_wire(response(convert.PB[runtime], output))) == output


def test_a_response_of_an_unknown_kind_is_skipped() -> None:
    assert convert.engine_output("sglang", sglang_pb.GenerateResponse(request_id="r")) is None
    assert convert.engine_output("vllm", vllm_pb.GenerateResponse()) is None


def test_logprobs_with_fewer_top_rows_than_positions() -> None:
    message = sglang_pb.OutputLogProbs(
        token_logprobs=[-0.5, -0.25], token_ids=[1, 2], top_logprobs=[sglang_pb.TopLogProbs(values=[-0.5], token_ids=[1])]
    )
    assert convert.output_logprobs(message) == [TokenLogprob(1, -0.5, [(1, -0.5)]), TokenLogprob(2, -0.25, [])]


# -- model info and labels ----------------------------------------------------------------------


def sglang_model_info(**fields: Any) -> Any:
    base: dict[str, Any] = {
        "model_path": "/models/Qwen/Qwen3-8B/",
        "tokenizer_path": "",
        "is_generation": True,
        "served_model_name": "qwen3",
        "max_context_length": 40960,
        "vocab_size": 151936,
        "eos_token_ids": [151645, 151643],
        "architectures": ["Qwen3ForCausalLM"],
    }
    return sglang_pb.GetModelInfoResponse(**{**base, **fields})


def test_sglang_model_info_and_server_labels() -> None:
    args = struct_pb2.Struct()
    args.update(
        {
            "tp_size": 2,
            "dp_size": 1,
            "context_length": 40960,
            "page_size": 1,
            "is_embedding": False,
            "kv_cache_dtype": "auto",
            "quantization": None,
            "dtype": "",
            "model_path": "/elsewhere",
            "api_key": "sk-secret",
            "ssl_keyfile": "/etc/key.pem",
            "reasoning_parser": "qwen3",
            "chat_template": ["a", 1],
        }
    )
    server = sglang_pb.GetServerInfoResponse(server_args=args, sglang_version="0.5.4", active_requests=3)
    info = convert.model_info("sglang", over_the_wire(sglang_model_info()), over_the_wire(server))
    assert info.runtime == "sglang" and info.model_id == "qwen3"
    assert info.model_path == "/models/Qwen/Qwen3-8B/" and info.tokenizer_path == ""
    assert info.eos_token_ids == (151645, 151643) and info.max_context_length == 40960 and info.is_generation
    assert info.labels == {
        "model_path": "/models/Qwen/Qwen3-8B/",  # GetModelInfo wins
        "is_generation": "true",
        "served_model_name": "qwen3",
        "max_context_length": "40960",
        "vocab_size": "151936",
        "eos_token_ids": "[151645,151643]",
        "architectures": '["Qwen3ForCausalLM"]',
        "tp_size": "2",
        "dp_size": "1",
        "context_length": "40960",
        "page_size": "1",
        "is_embedding": "false",
        "kv_cache_dtype": "auto",
        "reasoning_parser": "qwen3",
        "chat_template": '["a",1.0]',
        "version": "0.5.4",
    }


def test_the_model_id_falls_back_on_the_model_path_then_unknown() -> None:
    info = convert.model_info("sglang", sglang_model_info(served_model_name=""), None)
    assert info.model_id == "Qwen3-8B" and "served_model_name" not in info.labels
    bare = convert.model_info("sglang", sglang_model_info(served_model_name="", model_path=""), None)
    assert bare.model_id == "unknown" and bare.model_path == ""
    args = struct_pb2.Struct()
    args.update({"served_model_name": "from-args", "tokenizer_path": "/tok"})
    served = convert.model_info(
        "sglang", sglang_model_info(served_model_name=""), sglang_pb.GetServerInfoResponse(server_args=args)
    )
    assert served.model_id == "from-args" and served.tokenizer_path == "/tok"


def test_vllm_model_info_and_server_labels() -> None:
    model = vllm_pb.GetModelInfoResponse(
        model_path="meta-llama/Llama-3.1-8B-Instruct", is_generation=True, max_context_length=8192, eos_token_ids=[128009]
    )
    server = vllm_pb.GetServerInfoResponse(
        active_requests=4,
        uptime_seconds=12.5,
        is_paused=True,
        server_type="vllm-grpc",
        data_parallel_size=2,
        block_size=16,
        max_num_seqs=256,
        mm_device_do_normalize=False,
        engine_reasoning_parser="deepseek_r1",
    )
    info = convert.model_info("vllm", model, over_the_wire(server))
    assert info.model_id == "Llama-3.1-8B-Instruct" and info.runtime == "vllm"
    assert info.labels == {
        "model_path": "meta-llama/Llama-3.1-8B-Instruct",
        "is_generation": "true",
        "max_context_length": "8192",
        "eos_token_ids": "[128009]",
        "server_type": "vllm-grpc",
        "data_parallel_size": "2",
        "block_size": "16",
        "max_num_seqs": "256",
        "engine_reasoning_parser": "deepseek_r1",
    }


# -- loads --------------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", convert.RUNTIMES)
def test_loads_sum_ranks_and_average_token_usage(runtime: str) -> None:
    module = convert.PB[runtime]
    ranks = [
        module.SchedulerLoad(dp_rank=0, num_running_reqs=3, num_waiting_reqs=1, token_usage=0.5),
        module.SchedulerLoad(dp_rank=1, num_running_reqs=2, num_waiting_reqs=4, token_usage=0.25),
        module.SchedulerLoad(dp_rank=2, num_running_reqs=-1, num_waiting_reqs=0, token_usage=7.0),  # nonsense: ignored
    ]
    report = convert.load_report(runtime, over_the_wire(module.GetLoadsResponse(dp_rank_count=3, loads=ranks)))
    assert report == LoadReport(5, 5, 0.375)
    assert convert.load_report(runtime, module.GetLoadsResponse()) == LoadReport(0, 0, None)


def test_sglang_loads_without_ranks_read_the_aggregate() -> None:
    aggregate = sglang_pb.AggregateMetrics(total_running_reqs=6, total_waiting_reqs=2, avg_token_usage=0.5)
    assert convert.load_report("sglang", sglang_pb.GetLoadsResponse(aggregate=aggregate)) == LoadReport(6, 2, 0.5)
