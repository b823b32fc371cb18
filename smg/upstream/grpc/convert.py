"""The engines' protobuf messages to and from the gateway's neutral types (sans-IO).

SGLang's scheduler (`sglang.grpc.scheduler`) and vLLM's engine (`vllm.grpc.engine`) services say
the same things with a few differences, which all live here (the stubs are `smg-grpc-proto`'s):

| neutral                       | SGLang                                  | vLLM                                 |
| ----------------------------- | --------------------------------------- | ------------------------------------ |
| temperature None              | 1.0 (OpenAI's default; unset reads 0)  | `optional`: unset, the engine's default |
| top_p / repetition_penalty None | 1.0 (0 would be refused)              | 1.0                                  |
| top_k None                    | -1                                      | 0 (uint32; a negative value too)     |
| max_new_tokens / min_new_tokens | max_new_tokens / min_new_tokens       | max_tokens / min_tokens              |
| no_stop_trim                  | no_stop_trim                            | include_stop_str_in_output           |
| seed                          | dropped: no field (custom_params feeds custom logit processors only) | seed (int32, wrapped) |
| logit_bias {id: bias}         | map<string, float>                      | map<int32, float>                    |
| json_schema / regex / ebnf    | json_schema / regex / ebnf_grammar      | json_schema / regex / grammar        |
| logprobs, top_logprobs        | return_logprob, top_logprobs_num        | sampling_params.logprobs = top_logprobs |
| (always)                      | logprob_start_len = -1 (output only)    |                                      |
| log_metrics                   | log_metrics                             | dropped: no field                    |
| Abort of ids                  | one AbortRequest{request_id, reason} each | one AbortRequest{request_ids}      |

The response side is one shape for both (chunk: `token_ids` delta with cumulative counts;
complete: every `output_ids`, the finish reason, usage), so `engine_output` reads either.
It runs once per streamed message: it builds the neutral object in one call and converts
log-probabilities only when the message carries them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from types import ModuleType
from typing import Any

from google.protobuf import json_format
from smg_grpc_proto.generated import common_pb2
from smg_grpc_proto.generated import sglang_scheduler_pb2 as sglang_pb
from smg_grpc_proto.generated import vllm_engine_pb2 as vllm_pb

from smg.generation.types import EngineChunk, EngineComplete, EngineInfo, EngineOutput, EngineRequest, Sampling, TokenLogprob
from smg.workers.overload import LoadReport

RUNTIMES = ("sglang", "vllm")
PB: dict[str, ModuleType] = {"sglang": sglang_pb, "vllm": vllm_pb}  # each engine's messages

# GetLoads sections: SGLang's the reference asks for; vLLM reports core metrics only
LOADS_INCLUDE: dict[str, tuple[str, ...]] = {"sglang": ("core", "disagg", "queues", "memory"), "vllm": ("core",)}

# The SGLang server arguments (GetServerInfo's `server_args` Struct) that become worker labels.
# A list, not every key: SGLang sends its whole ServerArgs, api keys and TLS key files included,
# and labels are shown on `GET /workers`.
SGLANG_SERVER_ARGS = (
    "model_path",
    "tokenizer_path",
    "served_model_name",
    "tp_size",
    "dp_size",
    "pp_size",
    "ep_size",
    "context_length",
    "max_running_requests",
    "max_total_tokens",
    "max_prefill_tokens",
    "chunked_prefill_size",
    "page_size",
    "is_embedding",
    "dtype",
    "kv_cache_dtype",
    "quantization",
    "attention_backend",
    "disaggregation_mode",
    "load_balance_method",
    "speculative_algorithm",
    "reasoning_parser",
    "tool_call_parser",
    "chat_template",
)

# vLLM's GetServerInfo fields that describe the moment, not the engine: no labels
_VLLM_SERVER_STATE = frozenset({"active_requests", "is_paused", "last_receive_timestamp", "uptime_seconds"})

_INT32_SPAN = 2**32


# -- requests ---------------------------------------------------------------------------------


def sglang_generate_request(request: EngineRequest) -> Any:
    """SGLang's GenerateRequest for `request` (see the module's table)."""
    s = request.sampling
    params: dict[str, Any] = {
        # not optional in SGLang's proto: unset reads 0 (greedy), so no temperature is OpenAI's 1.0
        "temperature": 1.0,
        "top_p": 1.0 if s.top_p is None else s.top_p,
        "top_k": -1 if s.top_k is None else s.top_k,
        "repetition_penalty": 1.0 if s.repetition_penalty is None else s.repetition_penalty,
        "skip_special_tokens": s.skip_special_tokens,
        "spaces_between_special_tokens": s.spaces_between_special_tokens,
        "n": s.n,
        "stop_token_ids": s.stop_token_ids,
        "ignore_eos": s.ignore_eos,
        "no_stop_trim": s.no_stop_trim,
    }
    _optional(params, s)
    if s.max_new_tokens is not None:
        params["max_new_tokens"] = s.max_new_tokens
    if s.min_new_tokens is not None:
        params["min_new_tokens"] = s.min_new_tokens
    if s.logit_bias:
        params["logit_bias"] = {str(token): bias for token, bias in s.logit_bias.items()}
    constraint = _constraint(s)
    if constraint is not None:
        params["ebnf_grammar" if constraint[0] == "ebnf" else constraint[0]] = constraint[1]
    message = sglang_pb.GenerateRequest(
        request_id=request.request_id,
        tokenized=sglang_pb.TokenizedInput(original_text=request.original_text, input_ids=request.input_ids),
        sampling_params=sglang_pb.SamplingParams(**params),
        stream=request.stream,
        logprob_start_len=-1,
        log_metrics=request.log_metrics,
    )
    if request.logprobs:
        message.return_logprob = True
        message.top_logprobs_num = request.top_logprobs
    return message


def vllm_generate_request(request: EngineRequest) -> Any:
    """vLLM's GenerateRequest for `request`: the `tokenized` input (see the module's table)."""
    s = request.sampling
    params: dict[str, Any] = {
        "top_p": 1.0 if s.top_p is None else s.top_p,
        "top_k": 0 if s.top_k is None or s.top_k < 0 else s.top_k,
        "repetition_penalty": 1.0 if s.repetition_penalty is None else s.repetition_penalty,
        "skip_special_tokens": s.skip_special_tokens,
        "spaces_between_special_tokens": s.spaces_between_special_tokens,
        "n": s.n,
        "stop_token_ids": s.stop_token_ids,
        "ignore_eos": s.ignore_eos,
        "include_stop_str_in_output": s.no_stop_trim,
    }
    _optional(params, s)
    if s.max_new_tokens is not None:
        params["max_tokens"] = s.max_new_tokens
    if s.min_new_tokens is not None:
        params["min_tokens"] = s.min_new_tokens
    if s.seed is not None:  # int32 on the wire: a wider seed is wrapped, still one seed per value
        params["seed"] = (s.seed + 2**31) % _INT32_SPAN - 2**31
    if s.logit_bias:
        params["logit_bias"] = s.logit_bias
    if request.logprobs:
        params["logprobs"] = request.top_logprobs
    constraint = _constraint(s)
    if constraint is not None:
        params["grammar" if constraint[0] == "ebnf" else constraint[0]] = constraint[1]
    return vllm_pb.GenerateRequest(
        request_id=request.request_id,
        tokenized=vllm_pb.TokenizedInput(original_text=request.original_text, input_ids=request.input_ids),
        sampling_params=vllm_pb.SamplingParams(**params),
        stream=request.stream,
    )


GENERATE_REQUEST: dict[str, Callable[[EngineRequest], Any]] = {
    "sglang": sglang_generate_request,
    "vllm": vllm_generate_request,
}


def _optional(params: dict[str, Any], s: Sampling) -> None:
    """The fields both engines take only when given (proto3 would send a 0 otherwise)."""
    if s.temperature is not None:
        params["temperature"] = s.temperature
    if s.min_p is not None:
        params["min_p"] = s.min_p
    if s.frequency_penalty is not None:
        params["frequency_penalty"] = s.frequency_penalty
    if s.presence_penalty is not None:
        params["presence_penalty"] = s.presence_penalty


def _constraint(s: Sampling) -> tuple[str, str] | None:
    """The one constraint (a oneof on the wire: two would silently keep the last)."""
    given = [
        (name, value)
        for name, value in (("json_schema", s.json_schema), ("regex", s.regex), ("ebnf", s.ebnf))
        if value is not None
    ]
    if len(given) > 1:
        raise ValueError(f"at most one constraint per request, got {', '.join(name for name, _ in given)}")
    return given[0] if given else None


def abort_requests(runtime: str, request_ids: list[str], reason: str) -> list[Any]:
    """The Abort calls for `request_ids`: one per id for SGLang, one for all for vLLM (which has
    no reason field)."""
    if runtime == "vllm":
        return [vllm_pb.AbortRequest(request_ids=request_ids)]
    return [sglang_pb.AbortRequest(request_id=rid, reason=reason) for rid in request_ids]


def embed_request(runtime: str, request_id: str, input_ids: list[int], original_text: str) -> Any:
    pb = PB[runtime]
    return pb.EmbedRequest(request_id=request_id, tokenized=pb.TokenizedInput(original_text=original_text, input_ids=input_ids))


def loads_request(runtime: str) -> Any:
    return PB[runtime].GetLoadsRequest(include=LOADS_INCLUDE[runtime])


def flush_request() -> Any:
    return common_pb2.FlushCacheRequest()  # timeout_s 0: flush now (refused while requests run)


def tokenizer_request() -> Any:
    return common_pb2.GetTokenizerRequest()


# -- responses --------------------------------------------------------------------------------


def engine_output(runtime: str, response: Any) -> EngineOutput | None:
    """The neutral form of one GenerateResponse of either engine (their chunk and complete
    messages share field names); None for a message of a kind this gateway does not know (a
    newer engine's), which the caller skips."""
    kind = response.WhichOneof("response")
    if kind == "chunk":
        c = response.chunk
        return EngineChunk(
            c.index,
            list(c.token_ids),
            c.prompt_tokens,
            c.completion_tokens,
            c.cached_tokens,
            output_logprobs(c.output_logprobs) if c.HasField("output_logprobs") else None,
        )
    if kind == "complete":
        c = response.complete
        matched = c.WhichOneof("matched_stop")
        return EngineComplete(
            c.index,
            list(c.output_ids),
            c.finish_reason,
            c.prompt_tokens,
            c.completion_tokens,
            c.cached_tokens,
            getattr(c, matched) if matched is not None else None,
            output_logprobs(c.output_logprobs) if c.HasField("output_logprobs") else None,
        )
    return None


def output_logprobs(message: Any) -> list[TokenLogprob]:
    """An OutputLogProbs message: per position the chosen token, its logprob and the top
    alternatives as (token id, logprob)."""
    tops = message.top_logprobs
    n_top = len(tops)
    out = []
    for i, (token, logprob) in enumerate(zip(message.token_ids, message.token_logprobs, strict=False)):
        top = list(zip(tops[i].token_ids, tops[i].values, strict=False)) if i < n_top else []
        out.append(TokenLogprob(token, logprob, top))
    return out


def model_info(runtime: str, info: Any, server: Any | None) -> EngineInfo:
    """What registration learns from GetModelInfo and (when it answered) GetServerInfo.

    Labels: every GetModelInfo field the engine set, under its proto name (proto3 does not tell
    a default from unset, so a field left at 0, false or "" makes no label); then, for SGLang,
    the server arguments of `SGLANG_SERVER_ARGS` and `sglang_version` as "version"; for vLLM,
    GetServerInfo's configuration fields (not its counters), as the reference flattens them
    (`max_num_seqs`, `mm_processor`, ...). GetModelInfo wins a name both give. Values are
    strings: lists and structures as compact JSON, booleans "true"/"false", integral numbers
    without a fraction (a Struct's numbers are doubles).
    """
    labels: dict[str, str] = {}
    _set_fields(labels, info, ())
    if server is not None:
        if runtime == "sglang":
            fields = server.server_args.fields
            for name in SGLANG_SERVER_ARGS:
                if name in fields and name not in labels:
                    value = _struct_label(fields[name])
                    if value:
                        labels[name] = value
            if server.sglang_version:
                labels.setdefault("version", server.sglang_version)
        else:
            _set_fields(labels, server, _VLLM_SERVER_STATE)
    model_path = labels.get("model_path", "")
    model_id = labels.get("served_model_name") or model_path.rstrip("/").rsplit("/", 1)[-1] or "unknown"
    return EngineInfo(
        runtime=runtime,
        model_id=model_id,
        labels=labels,
        model_path=model_path,
        tokenizer_path=labels.get("tokenizer_path", ""),
        eos_token_ids=tuple(info.eos_token_ids),
        max_context_length=info.max_context_length or None,
        is_generation=info.is_generation,
    )


def _set_fields(labels: dict[str, str], message: Any, skip: frozenset[str] | tuple[str, ...]) -> None:
    for descriptor, value in message.ListFields():  # the fields set to something else than their default
        name = descriptor.name
        if name in skip or name in labels:
            continue
        if descriptor.message_type is not None:
            continue  # a nested message (none in these responses today): not a label
        text = _label(value, repeated=descriptor.is_repeated)
        if text:
            labels[name] = text


def _label(value: Any, *, repeated: bool = False) -> str:
    if repeated:
        return json.dumps(list(value), separators=(",", ":"))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def _struct_label(value: Any) -> str:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return str(value.string_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "number_value":
        return _label(float(value.number_value))
    if kind in ("list_value", "struct_value"):
        return json.dumps(json_format.MessageToDict(value), separators=(",", ":"))
    return ""  # null_value, or no value


def load_report(runtime: str, response: Any) -> LoadReport:
    """GetLoads over every data-parallel rank: running and waiting summed, token usage the mean of
    the ranks that report one in [0, 1]. A response with no rank falls back on SGLang's aggregate."""
    running = waiting = 0
    usages: list[float] = []
    for rank in response.loads:
        running += max(0, rank.num_running_reqs)
        waiting += max(0, rank.num_waiting_reqs)
        if 0.0 <= rank.token_usage <= 1.0:
            usages.append(rank.token_usage)
    if not response.loads and runtime == "sglang" and response.HasField("aggregate"):
        total = response.aggregate
        usage = total.avg_token_usage
        return LoadReport(
            max(0, total.total_running_reqs), max(0, total.total_waiting_reqs), usage if 0.0 <= usage <= 1.0 else None
        )
    return LoadReport(running, waiting, sum(usages) / len(usages) if usages else None)
