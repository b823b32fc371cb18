"""What a typed request model costs per body, by library: the figure that chose `smg.http.schemas`.

    python bench/request_models.py                  # 7 rounds of 2,000 bodies each
    python bench/request_models.py --rounds 11 --number 5000

Two realistic ~2 KB bodies: a Responses request (instructions, input messages with content
parts, a function call and its output, two tools with JSON-schema parameters) and a Messages
request (system blocks, text / tool_use / tool_result blocks, two tools). For each, the cost of
one body (µs, the median over `--rounds` rounds of `--number` bodies, `time.perf_counter_ns`):

  from a parsed dict (the gateway parses once with pydantic_core, then validates)
    pydantic model_validate      the project's models (`smg.http.schemas`): strict, extra="allow"
    msgspec convert              the same shapes as `msgspec.Struct`s (strict; unknown fields dropped)
    dataclasses + checks         slotted dataclasses filled by hand-written isinstance checks
  from bytes (where a library both parses and validates)
    pydantic_core from_json      the parse alone, as `load_json_object` does it today
    msgspec json.decode          the parse alone, untyped
    pydantic model_validate_json parse + validate
    msgspec json.decode(type=)   parse + validate

The Structs and dataclasses here copy the shapes of `smg.http.schemas` by hand (keep them in
step); pydantic keeps unknown fields, they drop them, which is less work. Every candidate is
first checked to take both bodies and to refuse the same few wrong types.

Benchmarks print figures; nothing here asserts on timing. msgspec is not a dependency of
the project: without it, its rows say so and are skipped. For scale, the gateway's own CPU
per request is about 500 µs (`python bench/overhead.py`), so 25 µs is 5 % of a request.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pydantic_core import from_json

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from smg.http.schemas import MessagesRequest, ResponsesRequest

try:
    import msgspec
except ImportError:
    msgspec = None  # type: ignore[assignment]

GATEWAY_CPU_US = 500.0  # per request, from bench/overhead.py

# -- the bodies -----------------------------------------------------------------------------------

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city, as its inhabitants spell it"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit"},
        "days": {"type": "integer", "minimum": 1, "maximum": 14, "description": "How many days ahead"},
    },
    "required": ["city"],
    "additionalProperties": False,
}
SEARCH_SCHEMA = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "description": "What to look for"},
        "limit": {"type": "integer", "minimum": 1, "maximum": 50},
        "filters": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["query"],
}

RESPONSES_BODY: dict[str, Any] = {
    "model": "meta-llama/Llama-3.1-8B-Instruct",
    "instructions": "You are a concise travel assistant. Answer in two sentences at most, and use the tools "
    "when the question is about the weather or needs a search.",
    "input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Prefer metric units."}]},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "I am flying to Oslo on Thursday for a long weekend. "},
                {"type": "input_text", "text": "What will the weather be like, and what should I pack?"},
            ],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Let me check the forecast for Oslo first."}],
        },
        {"type": "function_call", "call_id": "call_8f2a", "name": "weather", "arguments": '{"city":"Oslo","days":4}'},
        {
            "type": "function_call_output",
            "call_id": "call_8f2a",
            "output": '{"forecast":[{"day":"Thu","high":9,"low":3,"rain":0.7},{"day":"Fri","high":11,"low":4,"rain":0.2}]}',
        },
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "And is this a good jacket for it?"},
                {"type": "input_image", "image_url": "https://example.com/jacket.jpg", "detail": "low"},
            ],
        },
    ],
    "tools": [
        {"type": "function", "name": "weather", "description": "The forecast for a city", "parameters": WEATHER_SCHEMA},
        {"type": "function", "name": "search", "description": "Search travel guides", "parameters": SEARCH_SCHEMA},
    ],
    "tool_choice": "auto",
    "max_output_tokens": 256,
    "temperature": 0.7,
    "store": True,
    "stream": False,
    "metadata": {"session": "a1b2c3", "client": "web"},
}

MESSAGES_BODY: dict[str, Any] = {
    "model": "claude-sim",
    "max_tokens": 512,
    "system": [
        {"type": "text", "text": "You are a concise travel assistant. Answer in two sentences at most."},
        {"type": "text", "text": "Use the tools when the question is about the weather or needs a search."},
    ],
    "messages": [
        {"role": "user", "content": "I am flying to Oslo on Thursday for a long weekend. What will the weather be like?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check the forecast for Oslo first."},
                {"type": "tool_use", "id": "toolu_01A", "name": "weather", "input": {"city": "Oslo", "days": 4}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01A",
                    "content": [{"type": "text", "text": '{"forecast":[{"day":"Thu","high":9,"low":3,"rain":0.7}]}'}],
                },
                {"type": "text", "text": "And what should I pack for that?"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "A rain jacket and layers: 3 to 11 °C with showers."}]},
        {"role": "user", "content": [{"type": "text", "text": "Any museums open on Friday evening?"}]},
    ],
    "tools": [
        {"name": "weather", "description": "The forecast for a city", "input_schema": WEATHER_SCHEMA},
        {"name": "search", "description": "Search travel guides", "input_schema": SEARCH_SCHEMA},
    ],
    "tool_choice": {"type": "auto"},
    "temperature": 0.5,
    "metadata": {"user_id": "u-42"},
}


# -- (b) msgspec Structs: the shapes of smg.http.schemas -------------------------------------------


if msgspec is not None:  # module level: the annotations (postponed) resolve in the module's globals
    Struct = msgspec.Struct

    class ContentPart(Struct, kw_only=True):
        type: str
        text: str = ""
        image_url: str | None = None
        file_id: str | None = None
        detail: str | None = None

    class InputItem(Struct, kw_only=True):
        type: str | None = None
        id: str | None = None
        role: str | None = None
        status: str | None = None
        content: str | list[ContentPart] | None = None
        call_id: str | None = None
        name: str | None = None
        arguments: str | None = None
        output: str | list[ContentPart] | None = None

    class ResponsesTool(Struct, kw_only=True):
        type: str
        name: str | None = None
        description: str | None = None
        parameters: dict[str, Any] | None = None
        strict: bool | None = None

    class ResponsesToolChoice(Struct, kw_only=True):
        type: str
        name: str | None = None

    class ConversationRef(Struct, kw_only=True):
        id: str

    class Responses(Struct, kw_only=True):
        model: str | None = None
        input: str | list[InputItem] | None = None
        instructions: str | None = None
        previous_response_id: str | None = None
        conversation: str | ConversationRef | None = None
        store: bool | None = None
        stream: bool | None = None
        background: bool | None = None
        metadata: dict[str, str] | None = None
        max_output_tokens: int | None = None
        temperature: float | None = None
        top_p: float | None = None
        top_logprobs: int | None = None
        user: str | None = None
        parallel_tool_calls: bool | None = None
        seed: int | None = None
        stop: str | list[str] | None = None
        tools: list[ResponsesTool] | None = None
        tool_choice: str | ResponsesToolChoice | None = None
        text: dict[str, Any] | None = None
        reasoning: dict[str, Any] | None = None
        include: list[str] | None = None
        truncation: str | None = None
        service_tier: str | None = None

    class ImageSource(Struct, kw_only=True):
        type: str | None = None
        media_type: str | None = None
        data: str | None = None
        url: str | None = None

    class ResultBlock(Struct, kw_only=True):
        type: str
        text: str = ""
        source: ImageSource | None = None

    class ContentBlock(Struct, kw_only=True):
        type: str
        text: str = ""
        source: ImageSource | None = None
        id: str | None = None
        name: str | None = None
        input: dict[str, Any] | None = None
        tool_use_id: str | None = None
        content: str | list[ResultBlock] | None = None
        is_error: bool | None = None

    class Turn(Struct, kw_only=True):
        role: str
        content: str | list[ContentBlock]

    class SystemBlock(Struct, kw_only=True):
        type: str
        text: str = ""

    class MessagesTool(Struct, kw_only=True):
        name: str
        type: str | None = None
        description: str | None = None
        input_schema: dict[str, Any] | None = None

    class MessagesToolChoice(Struct, kw_only=True):
        type: str
        name: str | None = None
        disable_parallel_tool_use: bool | None = None

    class MessagesMetadata(Struct, kw_only=True):
        user_id: str | None = None

    class Messages(Struct, kw_only=True):
        model: str
        max_tokens: int
        messages: list[Turn]
        system: str | list[SystemBlock] | None = None
        stream: bool | None = None
        stop_sequences: list[str] | None = None
        temperature: float | None = None
        top_p: float | None = None
        top_k: int | None = None
        metadata: MessagesMetadata | None = None
        tools: list[MessagesTool] | None = None
        tool_choice: MessagesToolChoice | None = None
        thinking: dict[str, Any] | None = None
        service_tier: str | None = None


# -- (c) dataclasses filled by hand-written checks ---------------------------------------------------


class Invalid(ValueError):
    """A field of the wrong type; its argument is the field's path."""


def _opt(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """`d[key]` when absent, None or of `kind` (a bool is no int nor float), else Invalid."""
    value = d.get(key)
    if value is None or (isinstance(value, kind) and (kind is bool or not isinstance(value, bool))):
        return value
    raise Invalid(f"{where}.{key}")


def _req(d: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if d.get(key) is None:
        raise Invalid(f"{where}.{key}")
    return _opt(d, key, kind, where)


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(where)
    return value


def _str_map(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise Invalid(where)
    return value


def _str_list(value: Any, where: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid(where)
    return value


@dataclass(slots=True)
class DcPart:
    type: str
    text: str
    image_url: str | None
    file_id: str | None
    detail: str | None


def dc_parts(value: Any, where: str) -> str | list[DcPart] | None:
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise Invalid(where)
    out = []
    for i, raw in enumerate(value):
        w = f"{where}[{i}]"
        d = _obj(raw, w)
        text = d.get("text", "")
        if not isinstance(text, str):
            raise Invalid(f"{w}.text")
        out.append(DcPart(_req(d, "type", str, w), text, _opt(d, "image_url", str, w), _opt(d, "file_id", str, w), _opt(d, "detail", str, w)))  # fmt: skip
    return out


@dataclass(slots=True)
class DcItem:
    type: str | None
    id: str | None
    role: str | None
    status: str | None
    content: str | list[DcPart] | None
    call_id: str | None
    name: str | None
    arguments: str | None
    output: str | list[DcPart] | None


@dataclass(slots=True)
class DcTool:
    type: str
    name: str | None
    description: str | None
    parameters: dict[str, Any] | None
    strict: bool | None


@dataclass(slots=True)
class DcResponses:
    model: str | None
    input: str | list[DcItem] | None
    instructions: str | None
    previous_response_id: str | None
    conversation: str | None
    store: bool | None
    stream: bool | None
    background: bool | None
    metadata: dict[str, str] | None
    max_output_tokens: int | None
    temperature: float | None
    top_p: float | None
    user: str | None
    parallel_tool_calls: bool | None
    seed: int | None
    stop: str | list[str] | None
    tools: list[DcTool] | None
    tool_choice: str | dict[str, Any] | None


def dc_responses(d: dict[str, Any]) -> DcResponses:
    w = "body"
    raw_input = d.get("input")
    items: str | list[DcItem] | None = raw_input if raw_input is None or isinstance(raw_input, str) else []
    if isinstance(items, list):
        if not isinstance(raw_input, list):
            raise Invalid("input")
        for i, raw in enumerate(raw_input):
            iw = f"input[{i}]"
            it = _obj(raw, iw)
            items.append(
                DcItem(
                    _opt(it, "type", str, iw), _opt(it, "id", str, iw), _opt(it, "role", str, iw), _opt(it, "status", str, iw),
                    dc_parts(it.get("content"), f"{iw}.content"), _opt(it, "call_id", str, iw), _opt(it, "name", str, iw),
                    _opt(it, "arguments", str, iw), dc_parts(it.get("output"), f"{iw}.output"),
                )
            )  # fmt: skip
    elif raw_input is not None and not isinstance(raw_input, str):
        raise Invalid("input")
    tools = None
    if d.get("tools") is not None:
        if not isinstance(d["tools"], list):
            raise Invalid("tools")
        tools = []
        for i, raw in enumerate(d["tools"]):
            tw = f"tools[{i}]"
            t = _obj(raw, tw)
            tools.append(DcTool(_req(t, "type", str, tw), _opt(t, "name", str, tw), _opt(t, "description", str, tw),
                                _opt(t, "parameters", dict, tw), _opt(t, "strict", bool, tw)))  # fmt: skip
    choice = _opt(d, "tool_choice", (str, dict), w)
    if isinstance(choice, dict):
        _req(choice, "type", str, "tool_choice")
        _opt(choice, "name", str, "tool_choice")
    conversation = _opt(d, "conversation", (str, dict), w)
    if isinstance(conversation, dict):
        conversation = _req(conversation, "id", str, "conversation")
    stop = _opt(d, "stop", (str, list), w)
    if isinstance(stop, list):
        _str_list(stop, "stop")
    for key in ("text", "reasoning"):
        _opt(d, key, dict, w)
    _str_list(d.get("include"), "include")
    for key in ("truncation", "service_tier"):
        _opt(d, key, str, w)
    _opt(d, "top_logprobs", int, w)
    return DcResponses(
        _opt(d, "model", str, w), items, _opt(d, "instructions", str, w), _opt(d, "previous_response_id", str, w),
        conversation, _opt(d, "store", bool, w), _opt(d, "stream", bool, w), _opt(d, "background", bool, w),
        _str_map(d.get("metadata"), "metadata"), _opt(d, "max_output_tokens", int, w), _opt(d, "temperature", (int, float), w),
        _opt(d, "top_p", (int, float), w), _opt(d, "user", str, w), _opt(d, "parallel_tool_calls", bool, w),
        _opt(d, "seed", int, w), stop, tools, choice,
    )  # fmt: skip


@dataclass(slots=True)
class DcBlock:
    type: str
    text: str
    source: dict[str, Any] | None
    id: str | None
    name: str | None
    input: dict[str, Any] | None
    tool_use_id: str | None
    content: str | list[DcBlock] | None
    is_error: bool | None


def dc_source(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    s = _obj(value, where)
    for key in ("type", "media_type", "data", "url"):
        _opt(s, key, str, where)
    return s


def dc_blocks(value: Any, where: str, nested: bool = False) -> str | list[DcBlock] | None:
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise Invalid(where)
    out = []
    for i, raw in enumerate(value):
        w = f"{where}[{i}]"
        b = _obj(raw, w)
        text = b.get("text", "")
        if not isinstance(text, str):
            raise Invalid(f"{w}.text")
        source = dc_source(b.get("source"), f"{w}.source")
        if nested:
            out.append(DcBlock(_req(b, "type", str, w), text, source, None, None, None, None, None, None))
            continue
        out.append(
            DcBlock(
                _req(b, "type", str, w), text, source, _opt(b, "id", str, w), _opt(b, "name", str, w),
                _opt(b, "input", dict, w), _opt(b, "tool_use_id", str, w), dc_blocks(b.get("content"), f"{w}.content", True),
                _opt(b, "is_error", bool, w),
            )
        )  # fmt: skip
    return out


@dataclass(slots=True)
class DcTurn:
    role: str
    content: str | list[DcBlock]


@dataclass(slots=True)
class DcMessagesTool:
    name: str
    type: str | None
    description: str | None
    input_schema: dict[str, Any] | None


@dataclass(slots=True)
class DcMessages:
    model: str
    max_tokens: int
    messages: list[DcTurn]
    system: str | list[DcBlock] | None
    stream: bool | None
    stop_sequences: list[str] | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    user_id: str | None
    tools: list[DcMessagesTool] | None
    tool_choice: dict[str, Any] | None


def dc_messages(d: dict[str, Any]) -> DcMessages:
    w = "body"
    raw_turns = d.get("messages")
    if not isinstance(raw_turns, list):
        raise Invalid("messages")
    turns = []
    for i, raw in enumerate(raw_turns):
        tw = f"messages[{i}]"
        t = _obj(raw, tw)
        content = dc_blocks(t.get("content"), f"{tw}.content")
        if content is None:
            raise Invalid(f"{tw}.content")
        turns.append(DcTurn(_req(t, "role", str, tw), content))
    tools = None
    if d.get("tools") is not None:
        if not isinstance(d["tools"], list):
            raise Invalid("tools")
        tools = []
        for i, raw in enumerate(d["tools"]):
            tw = f"tools[{i}]"
            t = _obj(raw, tw)
            tools.append(DcMessagesTool(_req(t, "name", str, tw), _opt(t, "type", str, tw), _opt(t, "description", str, tw),
                                        _opt(t, "input_schema", dict, tw)))  # fmt: skip
    choice = _opt(d, "tool_choice", dict, w)
    if choice is not None:
        _req(choice, "type", str, "tool_choice")
        _opt(choice, "name", str, "tool_choice")
        _opt(choice, "disable_parallel_tool_use", bool, "tool_choice")
    metadata = _opt(d, "metadata", dict, w)
    user_id = _opt(metadata, "user_id", str, "metadata") if metadata is not None else None
    system = d.get("system")
    system_blocks = dc_blocks(system, "system", True)
    _opt(d, "thinking", dict, w)
    _opt(d, "service_tier", str, w)
    return DcMessages(
        _req(d, "model", str, w), _req(d, "max_tokens", int, w), turns, system_blocks, _opt(d, "stream", bool, w),
        _str_list(d.get("stop_sequences"), "stop_sequences"), _opt(d, "temperature", (int, float), w),
        _opt(d, "top_p", (int, float), w), _opt(d, "top_k", int, w), user_id, tools, choice,
    )  # fmt: skip


# -- the measurement ---------------------------------------------------------------------------------


def per_call_us(fn: Callable[[], object], number: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(number):
        fn()
    return (time.perf_counter_ns() - started) / number / 1000


def check_they_agree(candidates: dict[str, tuple[Callable[[Any], object], Callable[[Any], object]]]) -> None:
    """Every candidate takes both bodies and refuses the same wrong types (else the race is unfair)."""
    bad_responses = [
        {**RESPONSES_BODY, "temperature": "hot"},
        {**RESPONSES_BODY, "max_output_tokens": True},
        {**RESPONSES_BODY, "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": 5}]}]},
        {**RESPONSES_BODY, "tools": [{"type": "function", "name": 5}]},
    ]
    bad_messages = [
        {**MESSAGES_BODY, "max_tokens": "4"},
        {**MESSAGES_BODY, "messages": [{"role": "user", "content": [{"type": "tool_use", "input": 5}]}]},
        {**MESSAGES_BODY, "tools": [{"name": "t", "input_schema": "x"}]},
    ]
    for name, (responses, messages) in candidates.items():
        for validate, good, bad in ((responses, RESPONSES_BODY, bad_responses), (messages, MESSAGES_BODY, bad_messages)):
            validate(good)
            for body in bad:
                try:
                    validate(body)
                except Exception:
                    continue
                raise SystemExit(f"{name} accepted a wrong type: {json.dumps(body)[:200]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=2000, help="bodies per round")
    args = parser.parse_args()

    raw_responses, raw_messages = json.dumps(RESPONSES_BODY).encode(), json.dumps(MESSAGES_BODY).encode()
    parsed_responses, parsed_messages = from_json(raw_responses), from_json(raw_messages)

    # name -> (Responses body -> model, Messages body -> model): from the parsed dict
    from_dict: dict[str, tuple[Callable[[Any], object], Callable[[Any], object]]] = {
        "pydantic model_validate": (ResponsesRequest.model_validate, MessagesRequest.model_validate),
    }
    # name -> (Responses bytes -> value, Messages bytes -> value)
    from_bytes: dict[str, tuple[Callable[[bytes], object], Callable[[bytes], object]]] = {
        "pydantic_core from_json (parse only)": (from_json, from_json),
        "pydantic model_validate_json": (ResponsesRequest.model_validate_json, MessagesRequest.model_validate_json),
    }
    if msgspec is not None:
        responses_struct, messages_struct = Responses, Messages
        from_dict["msgspec convert"] = (
            lambda d: msgspec.convert(d, responses_struct),
            lambda d: msgspec.convert(d, messages_struct),
        )
        responses_decoder = msgspec.json.Decoder(responses_struct)
        messages_decoder = msgspec.json.Decoder(messages_struct)
        plain_decoder = msgspec.json.Decoder()
        from_bytes["msgspec json.decode (parse only)"] = (plain_decoder.decode, plain_decoder.decode)
        from_bytes["msgspec json.decode(type=)"] = (responses_decoder.decode, messages_decoder.decode)
    from_dict["dataclasses + checks"] = (dc_responses, dc_messages)
    check_they_agree(from_dict)

    jobs: list[tuple[str, str, Callable[[], object]]] = []  # (section, name, responses job), messages job alongside
    timings: dict[tuple[str, str, str], list[float]] = {}
    for name, (responses, messages) in from_dict.items():
        jobs.append(("dict", name, partial(responses, parsed_responses)))
        jobs.append(("dict", name + "|m", partial(messages, parsed_messages)))
    for name, (responses_b, messages_b) in from_bytes.items():
        jobs.append(("bytes", name, partial(responses_b, raw_responses)))
        jobs.append(("bytes", name + "|m", partial(messages_b, raw_messages)))
    for _section, _name, job in jobs:  # warm up
        per_call_us(job, max(1, args.number // 10))
    for _ in range(args.rounds):  # interleaved, so that a noisy moment hits every candidate alike
        for section, name, job in jobs:
            timings.setdefault((section, name.removesuffix("|m"), "m" if name.endswith("|m") else "r"), []).append(
                per_call_us(job, args.number)
            )

    def row(section: str, name: str) -> str:
        r = statistics.median(timings[(section, name, "r")])
        m = statistics.median(timings[(section, name, "m")])
        return f"  {name:<38} {r:>9.1f} {m:>9.1f}   {100 * r / GATEWAY_CPU_US:>5.1f} % {100 * m / GATEWAY_CPU_US:>5.1f} %"

    print(f"bodies: Responses {len(raw_responses)} B, Messages {len(raw_messages)} B; "
          f"median of {args.rounds} rounds x {args.number} bodies; Python {sys.version.split()[0]}")  # fmt: skip
    print(f"  {'µs per body':<38} {'Responses':>9} {'Messages':>9}   {'% of ' + str(int(GATEWAY_CPU_US)) + ' µs (R, M)':>17}")
    print("from the parsed dict (validate only):")
    for name in from_dict:
        print(row("dict", name))
    if msgspec is None:
        print("  msgspec convert                        msgspec not installed")
    print("from bytes:")
    for name in from_bytes:
        print(row("bytes", name))
    if msgspec is None:
        print("  msgspec json.decode                    msgspec not installed")
    if msgspec is None:
        return

    def gap(slow: list[tuple[str, str]], fast: list[tuple[str, str]]) -> str:
        out = []
        for body in ("r", "m"):
            saved = sum(statistics.median(timings[(sec, n, body)]) for sec, n in slow) - sum(
                statistics.median(timings[(sec, n, body)]) for sec, n in fast
            )
            out.append(f"{saved:.1f} µs ({100 * saved / GATEWAY_CPU_US:.1f} %)")
        return " / ".join(out)

    today = [("bytes", "pydantic_core from_json (parse only)"), ("dict", "pydantic model_validate")]
    print("what msgspec would save per request (Responses / Messages, and share of the gateway's CPU):")
    print(
        f"  keeping the parse, msgspec convert instead of model_validate:       {gap(today[1:], [('dict', 'msgspec convert')])}"
    )
    print(
        f"  msgspec json.decode(type=) instead of from_json + model_validate:   {gap(today, [('bytes', 'msgspec json.decode(type=)')])}"
    )


if __name__ == "__main__":
    main()
