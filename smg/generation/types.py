"""What the gateway asks of an inference engine and what it answers, in the engine protocols'
common terms (SGLang's scheduler and vLLM's engine services carry the same facts under slightly
different field names; `smg.upstream.grpc` converts). Plain data: no I/O, no protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Sampling:
    """Sampling parameters as the engine takes them. None: the field is not sent (the engine's
    default applies), which matters because proto3 cannot tell 0 from unset."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # None: off (SGLang -1, vLLM 0)
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    max_new_tokens: int | None = None  # None: the engine's default
    min_new_tokens: int | None = None
    stop_token_ids: tuple[int, ...] = ()  # stop strings are matched by the gateway on text
    ignore_eos: bool = False
    no_stop_trim: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    n: int = 1
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    # constraints, at most one set
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None


@dataclass(slots=True)
class EngineRequest:
    """One Generate call."""

    request_id: str
    input_ids: list[int]
    sampling: Sampling
    stream: bool
    original_text: str = ""  # empty, as the reference sends it
    logprobs: bool = False  # return_logprob
    top_logprobs: int = 0
    log_metrics: bool = False  # /generate


@dataclass(slots=True)
class TokenLogprob:
    """One output position's log-probability and its top alternatives (token id, logprob)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass(slots=True)
class EngineChunk:
    """A streamed step of one choice: the new tokens; counts are cumulative."""

    index: int
    token_ids: list[int]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None  # for token_ids, when asked


@dataclass(slots=True)
class EngineComplete:
    """The end of one choice. `output_ids` holds every token (a non-streamed answer is built from
    it; a stream's text comes from its chunks only)."""

    index: int
    output_ids: list[int]
    finish_reason: str  # "stop" | "length" | "abort" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    matched_stop: int | str | None = None  # the token id or string the engine stopped on
    logprobs: list[TokenLogprob] | None = None  # for output_ids, when asked


EngineOutput = EngineChunk | EngineComplete


@dataclass(slots=True)
class EngineInfo:
    """What registration learned from GetModelInfo and GetServerInfo."""

    runtime: str  # "sglang" | "vllm"
    model_id: str  # served_model_name, else the last segment of model_path, else "unknown"
    labels: dict[str, str] = field(default_factory=dict)  # empty values dropped
    model_path: str = ""
    tokenizer_path: str = ""
    eos_token_ids: tuple[int, ...] = ()
    max_context_length: int | None = None
    is_generation: bool = True
