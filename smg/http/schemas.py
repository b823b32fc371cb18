"""Typed shapes of the request bodies the gateway reads itself, checked once at the edge.

`load_json_object` parses a body once; the Responses, Conversations and Messages handlers then
`validate` it here and read the model it returns (attributes, typed fields) wherever they read
the request. A known field of the wrong type used to surface deep inside a handler as a
TypeError, a 500 and a traceback; here each known field has its type, checked strictly (no `"5"`
for 5, no `true` for 1, no number overflowing to infinity), while unknown fields are allowed. A
wrong type is a 400 `invalid_value` whose `param` names the field as `input[0].content[1].text`;
a missing one is `missing_required_parameter`. Known fields may be null where the handlers check
for None; where they do not (the texts they join), a field may be absent but not null
(`text: str = ""`). Where absent and null mean different things to the API, the handlers ask
`model_fields_set`, or the field's default says the API's own (`store`, `parallel_tool_calls`).

What the gateway stores or sends on verbatim stays the JSON that was parsed, beside the model:
conversation and input items (stored, then replayed to clients and workers), the tools a
response object repeats, and a native worker's whole body (unknown fields included). Rebuilding
those from the model (`model_dump`, some 20 µs for a Responses body's input) would cost as much
as validating again, and could reorder keys or turn `1` into `1.0`; numbers the gateway forwards
or repeats keep their JSON type (`Number`) for the same reason.

pydantic rather than msgspec or dataclasses, by measurement (`python bench/request_models.py`,
2 KB Responses and Messages bodies): validating the parsed body costs about 16 µs with these
models, 3 µs with msgspec Structs of the same shapes and 16 µs with hand-written checks filling
dataclasses, next to some 500 µs of gateway CPU per request. The 13 µs msgspec would save is
under 3 % of a request (18 µs, under 4 %, if it parsed the bytes too): not worth a second JSON
library beside pydantic_core, which parses every body already, nor Structs that cannot keep
unknown fields. The pass-through inference routes get `check_inference`: a few `isinstance`
checks on the top-level fields the gateway itself reads, as the data plane's hot path should
stay near the cost of the parse.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, ValidatorFunctionWrapHandler, WrapValidator

from smg.http.errors import GatewayError, missing_parameter


class _Shape(BaseModel):
    """Strict about the fields it names, permissive about the others."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


def _as_written(value: Any, check: ValidatorFunctionWrapHandler) -> Any:
    """A number checked as a float, kept as the client wrote it: an integer stays one."""
    number = check(value)
    return value if type(value) is int else number


# A float field whose value goes back out (forwarded to the worker, repeated in a response
# object): `"temperature": 1` stays `1`, not `1.0`. Errors are the float's own.
Number = Annotated[float, WrapValidator(_as_written)]


# -- Responses and Conversations (OpenAI) -------------------------------------------------------


class ContentPart(_Shape):
    type: str
    text: str = ""
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class InputItem(_Shape):
    """Any Responses input or conversation item (message, function_call, function_call_output,
    reasoning, ...): one flat shape, since each field has the same type in every kind."""

    type: str | None = None
    id: str | None = None
    role: str | None = None
    status: str | None = None
    content: str | list[ContentPart] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[ContentPart] | None = None


class ResponsesTool(_Shape):
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ResponsesToolChoice(_Shape):
    type: str
    name: str | None = None


class ConversationRef(_Shape):
    id: str


class ResponsesRequest(_Shape):
    """`POST /v1/responses`; which fields are required, and their values, `responses._plan` checks."""

    model: str | None = None
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    conversation: str | ConversationRef | None = None
    store: bool | None = True  # null is refused (`responses._plan`), absent is the default
    stream: bool | None = None
    background: bool | None = None
    metadata: dict[str, str] | None = None
    max_output_tokens: int | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    top_logprobs: int | None = None
    user: str | None = None
    parallel_tool_calls: bool | None = True  # a response object repeats it: null as null, absent as the default
    seed: int | None = None
    stop: str | list[str] | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: str | ResponsesToolChoice | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    include: list[str] | None = None
    truncation: str | None = None
    service_tier: str | None = None


class ConversationBody(_Shape):
    """The body of creating a conversation, updating it, or adding items to it."""

    metadata: dict[str, str] | None = None
    items: list[InputItem] | None = None


# -- Messages (Anthropic) ---------------------------------------------------------------------


class ImageSource(_Shape):
    type: str | None = None
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ResultBlock(_Shape):
    """A block inside a `tool_result`'s content."""

    type: str
    text: str = ""
    source: ImageSource | None = None


class ContentBlock(_Shape):
    type: str
    text: str = ""
    source: ImageSource | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    tool_use_id: str | None = None
    content: str | list[ResultBlock] | None = None
    is_error: bool | None = None


class Turn(_Shape):
    role: str
    content: str | list[ContentBlock]


class SystemBlock(_Shape):
    type: str
    text: str = ""


class MessagesTool(_Shape):
    name: str
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class MessagesToolChoice(_Shape):
    type: str
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class MessagesMetadata(_Shape):
    user_id: str | None = None


class MessagesRequest(_Shape):
    """`POST /v1/messages`, both ways it goes (translated, or passed to a native worker)."""

    model: str
    max_tokens: int
    messages: list[Turn]
    system: str | list[SystemBlock] | None = None
    stream: bool | None = None
    stop_sequences: list[str] | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: int | None = None
    metadata: MessagesMetadata | None = None
    tools: list[MessagesTool] | None = None
    tool_choice: MessagesToolChoice | None = None
    thinking: dict[str, Any] | None = None
    service_tier: str | None = None


Shape = TypeVar("Shape", bound=BaseModel)


def validate(shape: type[Shape], body: dict[str, Any]) -> Shape:
    """`body` as a `shape`, or the 400 that names the first bad field."""
    try:
        return shape.model_validate(body)
    except ValidationError as exc:
        raise _gateway_error(exc) from None


# pydantic's error types that mean "not of this type", and what the field should have been
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}
# the labels pydantic puts in an error's location for the branch of a union it tried: simple
# types, every model here (all subclass `_Shape` directly), and generics such as `list[Turn]`
_BRANCH_LABELS = frozenset({"str", "int", "float", "bool", "none", *(shape.__name__ for shape in _Shape.__subclasses__())})


def _path(loc: tuple[int | str, ...]) -> list[int | str]:
    """An error's location without union branch labels (nor dict-key markers like `[key]`)."""
    return [part for part in loc if isinstance(part, int) or ("[" not in part and part not in _BRANCH_LABELS)]


def _param(path: list[int | str]) -> str:
    """`['input', 0, 'content']` -> `input[0].content`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _gateway_error(exc: ValidationError) -> GatewayError:
    """The deepest error is the one to report: of a union's branches, the one that got furthest
    (a list given for `str | list[Part]` is judged as a list). Type errors of that same field
    (each branch refusing it) are named together: "expected a string or a list"."""
    errors = [(_path(e["loc"]), e) for e in exc.errors(include_url=False, include_context=False, include_input=False)]
    path, first = max(errors, key=lambda pair: len(pair[0]))  # the first of the deepest
    param = _param(path)
    if first["type"] == "missing":
        return missing_parameter(param)
    if first["type"] in _EXPECTED:
        expected = dict.fromkeys(_EXPECTED[e["type"]] for p, e in errors if p == path and e["type"] in _EXPECTED)
        return GatewayError(400, "invalid_value", f"Invalid type for '{param}': expected {' or '.join(expected)}.", param=param)
    return GatewayError(400, "invalid_value", f"Invalid value for '{param}': {first['msg']}.", param=param)


# -- pass-through inference routes ----------------------------------------------------------------

# route name -> the top-level fields the gateway reads (or that decide how it relays the answer):
# their allowed types, and how to say them. `null` is always allowed (the field's default).
_STREAMING = {"stream": ((bool,), "a boolean"), "stream_options": ((dict,), "an object")}
_INFERENCE_FIELDS: dict[str, dict[str, tuple[tuple[type, ...], str]]] = {
    "chat": {**_STREAMING, "messages": ((list,), "a list")},
    "completions": {**_STREAMING, "prompt": ((str, list), "a string or a list")},
    "embeddings": {"input": ((str, list), "a string or a list")},
    "generate": {
        **_STREAMING,
        "text": ((str, list), "a string or a list"),
        "input_ids": ((list,), "a list"),
        "sampling_params": ((dict, list), "an object or a list"),
    },
    "rerank": {"query": ((str,), "a string"), "documents": ((list,), "a list")},
}


def check_inference(route: str, request: dict[str, Any]) -> None:
    """The top-level type checks of a pass-through route's body (the worker checks the rest)."""
    for name, (types, what) in _INFERENCE_FIELDS.get(route, {}).items():
        value = request.get(name)
        if value is not None and not isinstance(value, types):
            raise GatewayError(400, "invalid_value", f"Invalid type for '{name}': expected {what}.", param=name)
