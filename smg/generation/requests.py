"""OpenAI-shaped requests (and SGLang's native `/generate`) turned into engine requests.

With gRPC workers the gateway is the full server: it checks the request's fields, renders the
chat template and tokenizes, maps the sampling parameters to what the engine takes, and keeps
what the answer's construction needs (stop strings, parsers, echo, usage options) in `Prepared`,
which `smg.generation.outputs` reads. Everything follows the reference gateway (SMG 1.13) as its
gRPC contract describes it (`temperature` absent stays absent, `max_tokens` absent stays the
engine's default, stop strings matched by the gateway on text while the one-token ones also go
to the engine as `stop_token_ids`, `response_format` and `tool_choice` turned into a JSON schema),
and OpenAI's API where the reference says nothing.

Every client mistake is a `GatewayError` 400 whose message and `param` name the field
(`invalid_value`, `missing_required_parameter`, and the template's own codes:
`chat_template_error`, `process_messages_failed`). Sans-IO: no clock is read here; the caller
passes the monotonic clock that bounds a template's render.

Decisions on points the reference leaves open or where smg differs on purpose:

* `tool_choice: "none"`: the tools still go to the template (the reference does not filter them
  out either; the model sees the same prompt with or without the choice), but the output is not
  parsed for calls: everything is content.
* `tool_choice: {"type": "function", ...}`: only that tool goes to the template (as the
  reference filters it), the engine is constrained to its parameters' schema, and the whole
  output (after any reasoning) is the arguments of one call to it.
* `tool_choice: "required"`: the engine is constrained to a JSON array of
  `{"name": <an offered name>, "parameters": <its schema>}` and the output is read by the `json`
  parser (not the model's own format) into calls.
* Calls to tools the request did not offer (possible without a constraint) are kept as calls: a
  client can see and refuse them, while dropping them (the reference) loses what the model did.
* Several prompts or inputs in one request (batches) are refused with a 400 saying so: the gRPC
  path serves one sequence of prompt ids per request.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from smg.generation.types import EngineRequest, Sampling
from smg.http.errors import GatewayError, missing_parameter
from smg.parsers.reasoning import REASONING_CONFIGS
from smg.parsers.registry import TOOL_PARSERS, default_reasoning_parser, default_tool_parser
from smg.parsers.types import IdFactory
from smg.tokenization.chat_template import (
    DEFAULT_LIMITS,
    ChatTemplateError,
    MultimodalContentError,
    RenderLimits,
    tokenize_chat,
)
from smg.tokenization.loader import ModelTokenizer
from smg.tokenization.stop import split_stop

#: How many stop strings a request may give. OpenAI allows 4; SGLang and vLLM take any number.
#: Each one costs a scan of every text delta, so there is a cap, well above OpenAI's.
MAX_STOPS = 16
#: The largest `n`: every choice is a sequence the engine runs side by side.
MAX_N = 128
# Integers go to the engine in 32-bit protobuf fields: larger values are the client's 400 here,
# not a conversion error when the message is built.
WIRE_INT_MAX = 2**31 - 1
MAX_TEMPERATURE = 100.0  # float32 on the wire; engines accept a few, OpenAI up to 2
#: The most alternatives a position's logprobs may list (OpenAI's chat limit; completions' is 5).
MAX_TOP_LOGPROBS = 20

_MEDIA_KEYS = ("image_data", "audio_data", "video_data", "input_embeds")


@dataclass(frozen=True)
class PipelineOptions:
    """The gateway's flags that shape every request to gRPC workers."""

    tool_call_parser: str | None = None  # --tool-call-parser (None: default from model id via registry)
    reasoning_parser: str | None = None  # --reasoning-parser (None: default from model id)
    chat_template: str | None = None  # --chat-template source text (already read from file), overrides the tokenizer's


@dataclass(slots=True)
class Prepared:
    """A request ready for the engine, and what building its answer needs.

    `engine.request_id` is "" unless the client chose it (`/generate`'s `rid`): the caller mints
    one per attempt (`dataclasses.replace`). The parsers are named, not built: each choice of the
    answer gets fresh ones (`smg.generation.outputs`)."""

    kind: str  # "chat" | "completions" | "generate"
    model: str  # the `model` the answer names
    engine: EngineRequest
    #: Stop strings, matched by the gateway on the detokenized text (one-token ones included).
    stops: tuple[str, ...] = ()
    no_stop_trim: bool = False
    #: Token ids that end the text where they occur, left out of it (the model's EOS ids unless
    #: `ignore_eos`, and the request's `stop_token_ids`); empty with `no_stop_trim`, which keeps
    #: them (they then show when `skip_special_tokens` is off).
    stop_ids: frozenset[int] = frozenset()
    skip_special_tokens: bool = True
    #: A streamed chat or completion ends with a usage chunk (`stream_options.include_usage`).
    include_usage: bool = False
    #: Completions' `echo`: the prompt's text, put before each choice's text.
    echo_text: str | None = None
    #: Tool-call parser name (registry name), or None: no tool-call parsing.
    tool_parser: str | None = None
    #: `tool_choice` named this function: the whole output is its arguments.
    tool_function: str | None = None
    #: Reasoning parser name, or None: no reasoning separation.
    reasoning_parser: str | None = None
    #: Whether the output starts inside the thinking block (the prompt opened it, or closed it);
    #: None: the reasoning format's own default.
    in_reasoning: bool | None = None
    #: `/generate`'s `return_text_in_logprobs`: logprob entries carry the token's text.
    return_text_in_logprobs: bool = False
    #: Makes tool-call ids (`call_<24 hex>` by default); tests inject a deterministic one.
    id_factory: IdFactory | None = None

    @property
    def n(self) -> int:
        return self.engine.sampling.n


# -- typed field access -----------------------------------------------------------------------


def _invalid(param: str, message: str) -> GatewayError:
    return GatewayError(400, "invalid_value", message, param=param)


def _type_error(param: str, expected: str) -> GatewayError:
    return _invalid(param, f"Invalid type for '{param}': expected {expected}.")


def _range_error(param: str, rule: str) -> GatewayError:
    return _invalid(param, f"Invalid value for '{param}': {rule}.")


class _Fields:
    """Typed reads of one JSON object's fields; null counts as absent. `prefix` names the object
    in error messages (`sampling_params.`)."""

    __slots__ = ("prefix", "src")

    def __init__(self, src: Mapping[str, Any], prefix: str = "") -> None:
        self.src = src
        self.prefix = prefix

    def param(self, name: str) -> str:
        return self.prefix + name

    def get(self, name: str) -> Any:
        return self.src.get(name)

    def number(self, name: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> float | None:
        value = self.src.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(self.param(name), "a number")
        try:
            number = float(value)
        except OverflowError:  # an integer past a float's range
            number = math.inf
        if not math.isfinite(number):
            raise _range_error(self.param(name), "must be a finite number")
        if (lo is not None and (number < lo or (lo_open and number == lo))) or (hi is not None and number > hi):
            raise _range_error(self.param(name), _bounds(lo, hi, lo_open))
        return number

    def integer(self, name: str, *, lo: int | None = None, hi: int | None = None) -> int | None:
        value = self.src.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(self.param(name), "an integer")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise _range_error(self.param(name), _bounds(lo, hi, False))
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.src.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise _type_error(self.param(name), "a boolean")
        return value

    def string(self, name: str) -> str | None:
        value = self.src.get(name)
        if value is not None and not isinstance(value, str):
            raise _type_error(self.param(name), "a string")
        return value

    def obj(self, name: str) -> dict[str, Any] | None:
        value = self.src.get(name)
        if value is not None and not isinstance(value, dict):
            raise _type_error(self.param(name), "an object")
        return value


def _bounds(lo: float | None, hi: float | None, lo_open: bool) -> str:
    def show(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else str(x)

    if lo is not None and hi is not None:
        return f"must be {'greater than' if lo_open else 'at least'} {show(lo)} and at most {show(hi)}"
    if lo is not None:
        return f"must be {'greater than' if lo_open else 'at least'} {show(lo)}"
    assert hi is not None
    return f"must be at most {show(hi)}"


# -- sampling ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Stops:
    """The request's stop conditions, split between the engine and the gateway."""

    strings: tuple[str, ...] = ()
    engine_ids: tuple[int, ...] = ()  # sent as stop_token_ids
    hidden_ids: frozenset[int] = frozenset()  # end the text where they occur


def _token_ids(value: Any, param: str, tokenizer: ModelTokenizer) -> list[int]:
    """A list of token ids, each within the model's vocabulary."""
    if not isinstance(value, list):
        raise _type_error(param, "a list of integers")
    limit = tokenizer.total_vocab_size
    for i, token in enumerate(value):
        if isinstance(token, bool) or not isinstance(token, int):
            raise _type_error(f"{param}[{i}]", "an integer")
        if not 0 <= token < limit:
            raise _range_error(f"{param}[{i}]", f"token id {token} is outside the vocabulary (0 to {limit - 1})")
    return value


def _stops(fields: _Fields, tokenizer: ModelTokenizer, *, ignore_eos: bool, no_stop_trim: bool) -> _Stops:
    try:
        split = split_stop(fields.get("stop"), _encode_plain(tokenizer), limit=MAX_STOPS)
    except ValueError as exc:
        raise _invalid(fields.param("stop"), f"Invalid value for '{fields.param('stop')}': {exc}.") from None
    raw_ids = fields.get("stop_token_ids")
    explicit = [] if raw_ids is None else _token_ids(raw_ids, fields.param("stop_token_ids"), tokenizer)
    engine_ids = tuple(dict.fromkeys([*explicit, *split.token_ids]))
    hidden: frozenset[int] = frozenset()
    if not no_stop_trim:
        # The EOS ids and the client's own stop ids end the text unseen, as the reference's stop
        # decoder hides them; a one-token stop *string* is cut by the text matcher instead.
        hidden = frozenset(explicit) if ignore_eos else frozenset(explicit).union(tokenizer.eos_token_ids)
    return _Stops(split.strings, engine_ids, hidden)


def _encode_plain(tokenizer: ModelTokenizer) -> Callable[[str], list[int]]:
    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    return encode


def _logit_bias(fields: _Fields, tokenizer: ModelTokenizer) -> dict[int, float]:
    raw = fields.obj("logit_bias")
    if not raw:
        return {}
    param = fields.param("logit_bias")
    limit = tokenizer.total_vocab_size
    bias: dict[int, float] = {}
    for key, value in raw.items():
        try:
            token = int(key)
        except ValueError:
            raise _invalid(param, f"Invalid value for '{param}': key {key!r} is not a token id.") from None
        if not 0 <= token < limit:
            raise _range_error(param, f"token id {token} is outside the vocabulary (0 to {limit - 1})")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(f"{param}.{key}", "a number")
        if not -100 <= value <= 100:
            raise _range_error(f"{param}.{key}", "must be between -100 and 100")
        bias[token] = float(value)
    return bias


def _constraint(sampling: Sampling, kind: str, value: str, param: str) -> None:
    """Set one structured-output constraint; the engine takes at most one."""
    current = [name for name in ("json_schema", "regex", "ebnf") if getattr(sampling, name) is not None]
    if current:
        raise _invalid(
            param,
            f"Invalid value for '{param}': the output can be constrained in one way only, and it already is ({current[0]}).",
        )
    setattr(sampling, kind, value)


def _top_k(fields: _Fields) -> int | None:
    top_k = fields.integer("top_k", lo=-1, hi=WIRE_INT_MAX)
    return None if top_k is None or top_k <= 0 else top_k  # -1 (SGLang) and 0 (vLLM) mean off


def _sampling(
    fields: _Fields, tokenizer: ModelTokenizer, max_new: int | None, min_new: int | None, seed: int | None
) -> tuple[Sampling, _Stops]:
    """The sampling fields OpenAI's requests and SGLang's `sampling_params` name alike (the
    token limits and the seed, named differently, are read by the caller)."""
    ignore_eos = fields.boolean("ignore_eos", False)
    no_stop_trim = fields.boolean("no_stop_trim", False)
    stops = _stops(fields, tokenizer, ignore_eos=ignore_eos, no_stop_trim=no_stop_trim)
    sampling = Sampling(
        temperature=fields.number("temperature", lo=0, hi=MAX_TEMPERATURE),
        top_p=fields.number("top_p", lo=0, hi=1, lo_open=True),
        top_k=_top_k(fields),
        min_p=fields.number("min_p", lo=0, hi=1),
        frequency_penalty=fields.number("frequency_penalty", lo=-2, hi=2),
        presence_penalty=fields.number("presence_penalty", lo=-2, hi=2),
        repetition_penalty=fields.number("repetition_penalty", lo=0, hi=2, lo_open=True),
        max_new_tokens=max_new,
        min_new_tokens=min_new,
        stop_token_ids=stops.engine_ids,
        ignore_eos=ignore_eos,
        no_stop_trim=no_stop_trim,
        skip_special_tokens=fields.boolean("skip_special_tokens", True),
        spaces_between_special_tokens=fields.boolean("spaces_between_special_tokens", True),
        n=fields.integer("n", lo=1, hi=MAX_N) or 1,
        seed=seed,
        logit_bias=_logit_bias(fields, tokenizer),
    )
    return sampling, stops


def _openai_sampling(fields: _Fields, tokenizer: ModelTokenizer, *, max_tokens_names: tuple[str, ...]) -> tuple[Sampling, _Stops]:
    """The sampling fields of a chat or completion request (OpenAI's names plus SGLang's
    extensions, as SGLang's OpenAI server takes them)."""
    max_new: int | None = None
    for name in max_tokens_names:  # the first named wins (max_completion_tokens over max_tokens)
        value = fields.integer(name, lo=1, hi=WIRE_INT_MAX)
        if value is not None and max_new is None:
            max_new = value
    min_new = fields.integer("min_tokens", lo=0, hi=WIRE_INT_MAX)
    if min_new is not None and max_new is not None and min_new > max_new:
        raise _range_error(fields.param("min_tokens"), f"must not exceed the maximum number of tokens ({max_new})")
    seed = fields.integer("seed", lo=-WIRE_INT_MAX - 1, hi=WIRE_INT_MAX)
    sampling, stops = _sampling(fields, tokenizer, max_new, min_new, seed)
    for name in ("regex", "ebnf"):  # SGLang's extensions, passed through
        constraint = fields.string(name)
        if constraint is not None:
            _constraint(sampling, name, constraint, fields.param(name))
    _response_format(fields, sampling)
    return sampling, stops


def _response_format(fields: _Fields, sampling: Sampling) -> None:
    param = fields.param("response_format")
    spec = fields.obj("response_format")
    if spec is None:
        return
    kind = spec.get("type")
    if kind == "text":
        return
    if kind == "json_object":
        _constraint(sampling, "json_schema", '{"type":"object"}', param)
    elif kind == "json_schema":
        holder = spec.get("json_schema")
        if not isinstance(holder, dict):
            raise _type_error(f"{param}.json_schema", "an object")
        schema = holder.get("schema")
        if schema is None:
            raise missing_parameter(f"{param}.json_schema.schema")
        if not isinstance(schema, dict | bool):
            raise _type_error(f"{param}.json_schema.schema", "an object")
        _constraint(sampling, "json_schema", json.dumps(schema, ensure_ascii=False, separators=(",", ":")), param)
    elif isinstance(kind, str):
        raise _invalid(
            f"{param}.type",
            f"Invalid value for '{param}.type': {kind!r} is not supported with gRPC workers "
            "(supported: 'text', 'json_object', 'json_schema').",
        )
    else:
        raise missing_parameter(f"{param}.type") if kind is None else _type_error(f"{param}.type", "a string")


def _stream_options(fields: _Fields, stream: bool) -> bool:
    options = fields.obj("stream_options")
    if options is None or not stream:
        return False
    return _Fields(options, fields.param("stream_options.")).boolean("include_usage", False)


def _no_media(request: Mapping[str, Any]) -> None:
    for key in _MEDIA_KEYS:
        if request.get(key) is not None:
            raise GatewayError(
                400, "invalid_value", f"'{key}': multi-modal input is not supported with gRPC workers yet", param=key
            )


def _model(request: Mapping[str, Any], model_id: str) -> str:
    model = request.get("model")
    return model if isinstance(model, str) and model else model_id


def _check_prompt_ids(ids: list[int], param: str) -> list[int]:
    if not ids:
        raise _invalid(param, f"Invalid value for '{param}': the prompt is empty (no tokens).")
    return ids


# -- chat -------------------------------------------------------------------------------------


def _tools(fields: _Fields) -> tuple[list[dict[str, Any]] | None, dict[str, dict[str, Any]]]:
    """The request's tools (as given, for the template) and their functions by name."""
    raw = fields.get("tools")
    if raw is None:
        return None, {}
    if not isinstance(raw, list):
        raise _type_error("tools", "a list")
    functions: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise _type_error(f"tools[{i}]", "an object")
        if tool.get("type", "function") != "function":
            raise _invalid(f"tools[{i}].type", f"Invalid value for 'tools[{i}].type': only 'function' tools are supported.")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise (
                missing_parameter(f"tools[{i}].function")
                if function is None
                else _type_error(f"tools[{i}].function", "an object")
            )
        name = function.get("name")
        if not isinstance(name, str) or not name:
            if name is None:
                raise missing_parameter(f"tools[{i}].function.name")
            raise _type_error(f"tools[{i}].function.name", "a non-empty string")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise _type_error(f"tools[{i}].function.parameters", "an object")
        functions[name] = function
    return (raw or None), functions


def _tool_choice(fields: _Fields, functions: Mapping[str, dict[str, Any]]) -> tuple[str, str | None]:
    """("auto" | "none" | "required" | "function", the named function)."""
    raw = fields.get("tool_choice")
    if raw is None:
        return "auto", None
    if isinstance(raw, str):
        if raw not in ("auto", "none", "required"):
            raise _invalid(
                "tool_choice", f"Invalid value for 'tool_choice': {raw!r} (expected 'none', 'auto', 'required' or a function)."
            )
        if raw == "required" and not functions:
            raise _invalid("tool_choice", "Invalid value for 'tool_choice': 'required' needs 'tools'.")
        return raw, None
    if not isinstance(raw, dict):
        raise _type_error("tool_choice", "a string or an object")
    if raw.get("type") != "function":
        raise _invalid(
            "tool_choice.type", "Invalid value for 'tool_choice.type': only 'function' is supported with gRPC workers."
        )
    function = raw.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise missing_parameter("tool_choice.function.name")
    if name not in functions:
        raise _invalid("tool_choice", f"Invalid value for 'tool_choice': the function {name!r} is not among 'tools'.")
    return "function", name


def _required_schema(functions: Mapping[str, dict[str, Any]]) -> str:
    """The JSON schema of `tool_choice: "required"` (the reference's): a non-empty array of
    `{"name": <an offered name>, "parameters": <its schema>}`, the tools' `$defs` gathered at the
    top (a name defined differently by two tools is refused)."""
    variants: list[dict[str, Any]] = []
    defs: dict[str, Any] = {}
    for name, function in functions.items():
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        variants.append(
            {
                "properties": {"name": {"type": "string", "enum": [name]}, "parameters": parameters},
                "required": ["name", "parameters"],
            }
        )
        defined = parameters.get("$defs") if isinstance(parameters, dict) else None
        if defined is not None and not isinstance(defined, dict):
            raise _invalid("tools", f"Invalid value for 'tools': the $defs of {name!r} must be an object.")
        for key, definition in (defined or {}).items():
            if key in defs and defs[key] != definition:
                raise _invalid(
                    "tools", f"Invalid value for 'tools': the definition {key!r} has conflicting schemas in different tools."
                )
            defs[key] = definition
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": variants}}
    if defs:
        schema["$defs"] = defs
    return json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


def _reasoning(options: PipelineOptions, model_id: str, prompt: str) -> tuple[str | None, bool | None]:
    """The reasoning parser's name, and whether the output starts inside the thinking block: the
    rendered prompt may end by opening it (a template's thinking switch on) or with an empty
    block closed (switch off), which decides it whatever the format's default."""
    name = options.reasoning_parser or default_reasoning_parser(model_id)
    config = REASONING_CONFIGS.get(name) if name is not None else None
    if config is None or not config.enabled:
        return None, None
    tail = prompt.rstrip()
    if tail.endswith(config.start):
        return name, True
    if tail.endswith(config.end):
        return name, False
    return name, None


def prepare_chat(
    request: dict[str, Any],
    tokenizer: ModelTokenizer,
    options: PipelineOptions,
    *,
    model_id: str,
    clock: Callable[[], float] | None = None,
) -> Prepared:
    """A chat completion request: messages through the chat template, sampling, parsers.

    `clock` (monotonic seconds) bounds the template's render in time; without it only the step
    and size budgets do."""
    fields = _Fields(request)
    messages = request.get("messages")
    if messages is None:
        raise missing_parameter("messages")
    if not isinstance(messages, list):
        raise _type_error("messages", "a list")
    if not messages:
        raise _invalid("messages", "Invalid value for 'messages': at least one message is required.")
    tools, functions = _tools(fields)
    mode, function = _tool_choice(fields, functions)
    template_tools = tools
    if function is not None and tools is not None:  # the template shows the chosen tool only
        template_tools = [tool for tool in tools if tool.get("function", {}).get("name") == function]
    kwargs = fields.obj("chat_template_kwargs")
    effort = fields.string("reasoning_effort")
    template_kwargs = dict(kwargs) if kwargs else {}
    if effort is not None:
        template_kwargs.setdefault("reasoning_effort", effort)
    continue_final = fields.boolean("continue_final_message", False)
    limits = DEFAULT_LIMITS if clock is None else RenderLimits(clock=clock)
    try:
        prompt, input_ids = tokenize_chat(
            tokenizer,
            messages,
            tools=template_tools,
            add_generation_prompt=True,
            continue_final_message=continue_final,
            template_kwargs=template_kwargs or None,
            chat_template=options.chat_template,
            limits=limits,
        )
    except MultimodalContentError as exc:
        raise GatewayError(
            400,
            exc.code,
            f"'messages': {exc.part_type} content parts are not supported with gRPC workers yet (images and other "
            "multi-modal input); send text parts only",
            param="messages",
        ) from None
    except ChatTemplateError as exc:
        raise GatewayError(400, exc.code, str(exc), param="messages") from None
    _check_prompt_ids(input_ids, "messages")

    sampling, stops = _openai_sampling(fields, tokenizer, max_tokens_names=("max_completion_tokens", "max_tokens"))
    tool_parser: str | None = None
    if mode == "required":
        _constraint(sampling, "json_schema", _required_schema(functions), "tool_choice")
        tool_parser = "json"
    elif mode == "function":
        assert function is not None
        parameters = functions[function].get("parameters") or {"type": "object", "properties": {}}
        _constraint(sampling, "json_schema", json.dumps(parameters, ensure_ascii=False, separators=(",", ":")), "tool_choice")
    elif mode == "auto" and functions:
        name = options.tool_call_parser or default_tool_parser(model_id)
        tool_parser = name if name in TOOL_PARSERS else None

    reasoning_parser, in_reasoning = (None, None)
    if fields.boolean("separate_reasoning", True):
        reasoning_parser, in_reasoning = _reasoning(options, model_id, prompt)

    logprobs = fields.boolean("logprobs", False)
    top = fields.integer("top_logprobs", lo=0, hi=MAX_TOP_LOGPROBS)
    if top and not logprobs:
        raise _invalid("top_logprobs", "Invalid value for 'top_logprobs': it requires 'logprobs': true.")
    stream = fields.boolean("stream", False)
    return Prepared(
        kind="chat",
        model=_model(request, model_id),
        engine=EngineRequest(
            request_id="",
            input_ids=input_ids,
            sampling=sampling,
            stream=stream,
            logprobs=logprobs,
            top_logprobs=top or 0,
        ),
        stops=stops.strings,
        no_stop_trim=sampling.no_stop_trim,
        stop_ids=stops.hidden_ids,
        skip_special_tokens=sampling.skip_special_tokens,
        include_usage=_stream_options(fields, stream),
        tool_parser=tool_parser,
        tool_function=function,
        reasoning_parser=reasoning_parser,
        in_reasoning=in_reasoning,
    )


# -- completions ------------------------------------------------------------------------------


def _is_ids(value: list[Any]) -> bool:
    return bool(value) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)


def _single_prompt(value: Any, param: str, tokenizer: ModelTokenizer, what: str) -> tuple[list[int], str | None]:
    """One prompt given as a string, a list of one string, token ids, or a list of one list of
    ids: (its ids, its text when it was given as text). Several are refused."""
    if isinstance(value, str):
        return tokenizer.encode(value, add_special_tokens=True), value
    if not isinstance(value, list):
        raise _type_error(param, "a string, a list of strings or a list of token ids")
    if not value:
        raise _invalid(param, f"Invalid value for '{param}': the {what} is empty.")
    first = value[0]
    if isinstance(first, str | list):
        if len(value) > 1:
            raise _invalid(
                param,
                f"Invalid value for '{param}': {len(value)} {what}s in one request; batches are not supported with "
                f"gRPC workers yet, send one {what} per request.",
            )
        if isinstance(first, str):
            return tokenizer.encode(first, add_special_tokens=True), first
        return _token_ids(first, f"{param}[0]", tokenizer), None
    return _token_ids(value, param, tokenizer), None


def prepare_completion(
    request: dict[str, Any], tokenizer: ModelTokenizer, options: PipelineOptions, *, model_id: str
) -> Prepared:
    """A (legacy) completion request: one prompt, tokenized with the model's special tokens.

    `options` is not read (no template, no parsers: a completion is raw text), and taken for a
    uniform call."""
    del options
    fields = _Fields(request)
    prompt = request.get("prompt")
    if prompt is None:
        raise missing_parameter("prompt")
    input_ids, text = _single_prompt(prompt, "prompt", tokenizer, "prompt")
    _check_prompt_ids(input_ids, "prompt")
    if request.get("suffix") is not None:
        raise _invalid("suffix", "Invalid value for 'suffix': not supported with gRPC workers.")
    sampling, stops = _openai_sampling(fields, tokenizer, max_tokens_names=("max_tokens",))
    if request.get("best_of") not in (None, 1, sampling.n):
        raise _invalid("best_of", "Invalid value for 'best_of': only best_of equal to n is supported with gRPC workers.")
    top = fields.integer("logprobs", lo=0, hi=MAX_TOP_LOGPROBS)
    echo = fields.boolean("echo", False)
    echo_text: str | None = None
    if echo:
        echo_text = text if text is not None else tokenizer.decode(input_ids, skip_special_tokens=sampling.skip_special_tokens)
    stream = fields.boolean("stream", False)
    return Prepared(
        kind="completions",
        model=_model(request, model_id),
        engine=EngineRequest(
            request_id="",
            input_ids=input_ids,
            sampling=sampling,
            stream=stream,
            logprobs=top is not None,
            top_logprobs=top or 0,
        ),
        stops=stops.strings,
        no_stop_trim=sampling.no_stop_trim,
        stop_ids=stops.hidden_ids,
        skip_special_tokens=sampling.skip_special_tokens,
        include_usage=_stream_options(fields, stream),
        echo_text=echo_text,
    )


# -- /generate (SGLang native) ------------------------------------------------------------------


def _generate_sampling(fields: _Fields, tokenizer: ModelTokenizer) -> tuple[Sampling, _Stops]:
    """SGLang's `sampling_params` (its names; unknown keys are ignored, as the engine's own
    extensions may be there)."""
    max_new = fields.integer("max_new_tokens", lo=0, hi=WIRE_INT_MAX)
    min_new = fields.integer("min_new_tokens", lo=0, hi=WIRE_INT_MAX)
    if min_new is not None and max_new is not None and min_new > max_new:
        raise _range_error(fields.param("min_new_tokens"), f"must not exceed max_new_tokens ({max_new})")
    seed = fields.integer("sampling_seed", lo=-WIRE_INT_MAX - 1, hi=WIRE_INT_MAX)
    if seed is None:
        seed = fields.integer("seed", lo=-WIRE_INT_MAX - 1, hi=WIRE_INT_MAX)
    sampling, stops = _sampling(fields, tokenizer, max_new, min_new, seed)
    for name in ("json_schema", "regex", "ebnf"):
        value = fields.string(name)
        if value is not None:
            _constraint(sampling, name, value, fields.param(name))
    return sampling, stops


def _one(value: Any, param: str, what: str) -> Any:
    """A per-request field that SGLang also takes as a list (one per prompt of a batch)."""
    if isinstance(value, list):
        if len(value) != 1:
            raise _invalid(
                param,
                f"Invalid value for '{param}': a list of {len(value)} {what}; batches are not supported with gRPC workers yet.",
            )
        return value[0]
    return value


def prepare_generate(request: dict[str, Any], tokenizer: ModelTokenizer, options: PipelineOptions, *, model_id: str) -> Prepared:
    """SGLang's native `/generate`: `text` or `input_ids`, `sampling_params`, `stream`, `rid`,
    `return_logprob`, `top_logprobs_num`, `return_text_in_logprobs`. Prompt logprobs
    (`logprob_start_len`) are not returned: the engine is asked for output logprobs only."""
    del options
    _no_media(request)
    fields = _Fields(request)
    text, ids = request.get("text"), request.get("input_ids")
    if text is not None and ids is not None:
        raise _invalid("input_ids", "Invalid value for 'input_ids': give either 'text' or 'input_ids', not both.")
    if text is not None:
        text = _one(text, "text", "texts")
        if not isinstance(text, str):
            raise _type_error("text", "a string")
        input_ids = tokenizer.encode(text, add_special_tokens=True)
        param = "text"
    elif ids is not None:
        if not isinstance(ids, list):
            raise _type_error("input_ids", "a list of token ids")
        input_ids, _ = _single_prompt(ids, "input_ids", tokenizer, "input")
        param = "input_ids"
    else:
        raise missing_parameter("text")
    _check_prompt_ids(input_ids, param)
    params = _one(request.get("sampling_params"), "sampling_params", "sampling parameter objects")
    if params is not None and not isinstance(params, dict):
        raise _type_error("sampling_params", "an object")
    sampling, stops = _generate_sampling(_Fields(params or {}, "sampling_params."), tokenizer)
    rid = _one(request.get("rid"), "rid", "ids")
    if rid is not None and not isinstance(rid, str):
        raise _type_error("rid", "a string")
    return_logprob = fields.boolean("return_logprob", False)
    top = fields.integer("top_logprobs_num", lo=0, hi=MAX_TOP_LOGPROBS)
    return Prepared(
        kind="generate",
        model=_model(request, model_id),
        engine=EngineRequest(
            request_id=rid or "",
            input_ids=input_ids,
            sampling=sampling,
            stream=fields.boolean("stream", False),
            logprobs=return_logprob,
            top_logprobs=(top or 0) if return_logprob else 0,
            log_metrics=True,
        ),
        stops=stops.strings,
        no_stop_trim=sampling.no_stop_trim,
        stop_ids=stops.hidden_ids,
        skip_special_tokens=sampling.skip_special_tokens,
        return_text_in_logprobs=fields.boolean("return_text_in_logprobs", False),
    )


# -- embeddings -------------------------------------------------------------------------------


def prepare_embedding(request: dict[str, Any], tokenizer: ModelTokenizer) -> tuple[list[int], str]:
    """One embeddings input: (its token ids, its text; for ids given as such, their decode).

    Several inputs in one request are refused: the gRPC path embeds one sequence per call."""
    value = request.get("input")
    if value is None:
        raise missing_parameter("input")
    encoding = request.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        raise _invalid("encoding_format", "Invalid value for 'encoding_format': expected 'float' or 'base64'.")
    if request.get("dimensions") is not None:
        raise _invalid("dimensions", "Invalid value for 'dimensions': not supported with gRPC workers.")
    ids, text = _single_prompt(value, "input", tokenizer, "input")
    _check_prompt_ids(ids, "input")
    return ids, (text if text is not None else tokenizer.decode(ids, skip_special_tokens=False))


__all__ = [
    "MAX_N",
    "MAX_STOPS",
    "MAX_TOP_LOGPROBS",
    "PipelineOptions",
    "Prepared",
    "prepare_chat",
    "prepare_completion",
    "prepare_embedding",
    "prepare_generate",
]
