"""Anthropic's Messages API as the upstream of a chat completion or a completion, without I/O.

A hosted Anthropic provider answers only `/v1/messages`. A client that asks it for an OpenAI
chat completion (or a completion, or a Responses or Conversations turn, which the gateway
builds as chat completions) gets one all the same: the request goes out as a Messages request
(`messages_request`), and the answer (`chat_answer`), its stream (`ChatEvents`) or its error
(`error_answer`) comes back in OpenAI's shape. It is the reverse of
`smg.apis.anthropic.messages_format`, which serves the Messages API from OpenAI-only workers;
the two share the stop-reason table.

What translates: system and developer messages (Anthropic has one top-level `system`),
text, image and refusal parts, assistant tool calls and tool messages (as `tool_use` and
`tool_result` blocks, consecutive turns of one role merged as Anthropic requires; a call's
arguments that are not a JSON object go as `{"_raw": ...}`, as `messages_format` reads them
back), `tools`, `tool_choice` and `parallel_tool_calls`, `max_completion_tokens`/`max_tokens`
(Anthropic requires one: `DEFAULT_MAX_TOKENS` otherwise, as LiteLLM does; a completion's
default is OpenAI's, 16), `stop`, `temperature` (Anthropic's range is 0 to 1), `top_p`,
`top_k`, `user`, and usage with cached prompt tokens. Thinking comes back as
`reasoning_content`. What cannot, is refused with a 400 naming the field rather than
dropped: several choices (`n`), `logprobs` and `top_logprobs`, `logit_bias`, audio output,
`reasoning_effort`, a `response_format` other than text, tools that are not functions, a
`tool_choice` other than auto, required, none or a function, audio and file parts, and
several prompts at once. Penalties, `seed` and a function's `strict` have no Anthropic
counterpart and change no answer's shape: dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from smg.http.errors import GatewayError, error_body
from smg.http.sse import SseReader

MESSAGES_PATH = b"/v1/messages"
DEFAULT_MAX_TOKENS = 4096
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions
TRANSLATED = ("chat", "completions")  # the routes a Messages API can answer (route names)

# A Messages stop reason as a chat finish reason; `messages_format.STOP_REASONS` is the reverse.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Anthropic's error types with no OpenAI-client status of their own: 529 `overloaded_error`
# is answered as 503, which OpenAI clients (and the gateway's retries) know as "try again".
STATUSES = {529: 503}
ERROR_STATUSES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 502,
    "overloaded_error": 503,
}


def _refuse(param: str, message: str) -> GatewayError:
    return GatewayError(400, "unsupported_by_provider", f"{message} (the model is served by an Anthropic provider)", param=param)


def messages_request(route: str, request: dict[str, Any]) -> dict[str, Any]:
    """The Messages request for a chat completion (`route` "chat") or completion ("completions");
    `GatewayError` 400 for what has no Messages counterpart."""
    if route == "chat":
        system, turns = _turns(request.get("messages"))
    else:
        system, turns = "", [{"role": "user", "content": _prompt(request.get("prompt"))}]
        best_of = request.get("best_of")
        for name, given in (
            ("echo", request.get("echo")),
            ("suffix", request.get("suffix")),
            ("best_of", best_of not in (None, 1)),
        ):
            if given:  # (a bool is no `best_of`: True == 1)
                raise _refuse(name, f"'{name}' has no Messages counterpart")
    out: dict[str, Any] = {"model": request.get("model"), "messages": turns}
    if system:
        out["system"] = system
    limit = request.get("max_completion_tokens")
    if limit is None:
        limit = request.get("max_tokens")
    if limit is None:
        limit = DEFAULT_MAX_TOKENS if route == "chat" else DEFAULT_COMPLETION_TOKENS
    out["max_tokens"] = limit
    stop = request.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = stop
    for name in ("temperature", "top_p", "top_k"):
        if request.get(name) is not None:
            out[name] = request[name]
    temperature = out.get("temperature")
    if isinstance(temperature, (int, float)) and temperature > 1:
        raise _refuse("temperature", "'temperature' above 1 is not offered (Anthropic's range is 0 to 1)")
    if isinstance(request.get("user"), str) and request["user"]:
        out["metadata"] = {"user_id": request["user"]}
    if request.get("stream") is True:
        out["stream"] = True
    if request.get("n") not in (None, 1):
        raise _refuse("n", "only one choice per request ('n': 1)")
    if request.get("logprobs") not in (None, False, 0):
        raise _refuse("logprobs", "'logprobs' are not offered")
    for name in ("top_logprobs", "reasoning_effort", "audio"):
        if request.get(name) is not None:
            raise _refuse(name, f"'{name}' is not offered")
    if request.get("logit_bias"):
        raise _refuse("logit_bias", "'logit_bias' is not offered")
    modalities = request.get("modalities")
    if isinstance(modalities, list) and any(m != "text" for m in modalities):
        raise _refuse("modalities", "only text output is offered")
    response_format = request.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        raise _refuse("response_format", f"'response_format' {response_format.get('type')!r} is not offered")
    tools = request.get("tools")
    if tools:
        out["tools"] = [_tool(tool, i) for i, tool in enumerate(tools if isinstance(tools, list) else [])]
    choice = _tool_choice(request.get("tool_choice"), request.get("parallel_tool_calls"))
    if choice is not None and out.get("tools"):
        out["tool_choice"] = choice
    return out


def _prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        raise _refuse("prompt", "one prompt per request")
    raise _refuse("prompt", "'prompt' must be text (token ids are not offered)")


def _turns(messages: Any) -> tuple[str, list[dict[str, Any]]]:
    """The system text and the Messages turns of chat `messages` (consecutive turns of one
    role merged: tool results follow their call as one user turn)."""
    if not isinstance(messages, list) or not messages:
        raise GatewayError(400, "invalid_value", "'messages' must be a non-empty list", param="messages")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise GatewayError(400, "invalid_value", f"{where} must be an object", param=where)
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.append(_text(content, where))
            continue
        if role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": str(message.get("tool_call_id") or ""),
                "content": content or "" if isinstance(content, str) or content is None else _blocks(content, where),
            }
            _append(turns, "user", [block])
            continue
        if role not in ("user", "assistant"):
            raise GatewayError(
                400, "invalid_value", f"{where}.role must be system, developer, user, assistant or tool", param=where
            )
        blocks = _blocks(content, where)
        if role == "assistant":
            for j, call in enumerate(message.get("tool_calls") or []):
                blocks.append(_tool_use(call, f"{where}.tool_calls[{j}]"))
        if blocks:
            _append(turns, role, blocks)
    if not turns:
        raise GatewayError(400, "invalid_value", "'messages' has no user or assistant message", param="messages")
    last = turns[-1]["content"][-1]
    if turns[-1]["role"] == "assistant" and last["type"] == "text":  # a prefill: Anthropic refuses one ending in space
        last["text"] = last["text"].rstrip()
    return "\n\n".join(s for s in system if s), turns


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"] += blocks
    else:
        turns.append({"role": role, "content": blocks})


def _text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise GatewayError(400, "invalid_value", f"{where}.content must be a string or a list of parts", param=where)


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise GatewayError(400, "invalid_value", f"{where}.content must be a string or a list of parts", param=where)
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            if part.get(kind):
                blocks.append({"type": "text", "text": str(part[kind])})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), f"{where}.content[{j}]"))
        else:
            raise _refuse(f"{where}.content[{j}]", f"a {kind!r} part is not offered (text and image_url are)")
    return blocks


def _image(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise GatewayError(400, "invalid_value", f"{where}.image_url must carry a url", param=where)
    if url.startswith("data:"):
        head, _, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if encoding != "base64" or not data:
            raise GatewayError(400, "invalid_value", f"{where}: a data URL image must be base64", param=where)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise GatewayError(400, "invalid_value", f"{where} must be a function call", param=where)
    raw = function.get("arguments")
    try:
        arguments = json.loads(raw) if isinstance(raw, str) and raw.strip() else {}
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):  # a model's malformed arguments, kept rather than lost
        arguments = {"_raw": raw}
    return {"type": "tool_use", "id": str(call.get("id") or ""), "name": str(function.get("name") or ""), "input": arguments}


def _tool(tool: Any, index: int) -> dict[str, Any]:
    where = f"tools[{index}]"
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise _refuse(where, "only function tools are offered")
    out: dict[str, Any] = {"name": function["name"], "input_schema": function.get("parameters") or {"type": "object"}}
    if isinstance(function.get("description"), str):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None:
        out: dict[str, Any] | None = {"type": "auto"} if parallel is False else None
    elif isinstance(choice, dict):
        function = _obj(choice.get("function"))
        if choice.get("type") != "function" or not isinstance(function.get("name"), str):
            raise _refuse("tool_choice", "a 'tool_choice' other than auto, required, none or a function is not offered")
        out = {"type": "tool", "name": function["name"]}
    else:
        kind = {"auto": "auto", "required": "any", "none": "none"}.get(str(choice))
        if kind is None:
            raise GatewayError(
                400, "invalid_value", "'tool_choice' must be auto, required, none or a function", param="tool_choice"
            )
        out = {"type": kind}
    if out is not None and parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


# -- answers ------------------------------------------------------------------------------


def chat_usage(usage: Any) -> dict[str, Any]:
    """Messages usage as OpenAI's: Anthropic counts cached prompt tokens apart from
    `input_tokens`, OpenAI counts them in `prompt_tokens` and says how many were cached."""
    usage = usage if isinstance(usage, dict) else {}
    read = _count(usage.get("cache_read_input_tokens"))
    prompt = _count(usage.get("input_tokens")) + read + _count(usage.get("cache_creation_input_tokens"))
    completion = _count(usage.get("output_tokens"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read},
    }


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _malformed(what: str) -> GatewayError:
    return GatewayError(502, "upstream_invalid_response", f"the Anthropic provider's {what}")


def chat_answer(route: str, answer: Any, created: int) -> dict[str, Any]:
    """A message object as a chat completion (or a completion); 502 when it is not one."""
    if not isinstance(answer, dict) or not isinstance(answer.get("content"), list):
        raise _malformed("answer is not a message object")
    text: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in answer["content"]:
        if not isinstance(block, dict):
            raise _malformed("answer has a content block that is not an object")
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            text.append(block["text"])
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thinking.append(block["thinking"])
        elif kind == "tool_use":
            arguments = json.dumps(_obj(block.get("input")))
            call = {
                "id": str(block.get("id") or ""),
                "type": "function",
                "function": {"name": str(block.get("name") or ""), "arguments": arguments},
            }
            calls.append(call)
    finish = FINISH_REASONS.get(str(answer.get("stop_reason")), "stop")
    model = str(answer.get("model") or "")
    ident = str(answer.get("id") or "")
    usage = chat_usage(answer.get("usage"))
    if route != "chat":
        choice: dict[str, Any] = {"index": 0, "text": "".join(text), "finish_reason": finish, "logprobs": None}
        return {
            "id": f"cmpl-{ident}",
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": usage,
        }
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
    return {
        "id": f"chatcmpl-{ident}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage,
    }


def error_status(status: int) -> int:
    return STATUSES.get(status, status)


def error_answer(status: int, payload: bytes) -> tuple[int, bytes]:
    """An Anthropic error answer as OpenAI's error body, with the status OpenAI clients know."""
    status = error_status(status)
    kind, message = "api_error", f"the Anthropic provider answered {status}"
    try:
        error = json.loads(payload).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        kind = str(error.get("type") or kind)
        message = str(error.get("message") or message)
    body = error_body(status, kind, message, type=_openai_type(status, kind))
    return status, json.dumps(body, separators=(",", ":")).encode()


def _openai_type(status: int, kind: str) -> str:
    if kind in ("invalid_request_error", "authentication_error", "permission_error", "rate_limit_error"):
        return kind
    return "server_error" if status >= 500 else "invalid_request_error"


class ChatEvents:
    """A Messages event stream in, OpenAI chat (or completion) chunks out, as SSE bytes.

    `feed` takes runs of whole events (the relay's framer cuts them) and returns the chunks
    they make; `finish` ends the stream. A stream that sends an `error` event, an event that is
    not JSON, or ends before `message_stop`, leaves its reason in `failure`, and the relay ends
    the client's stream with that error instead of `[DONE]`."""

    def __init__(self, route: str, created: int, include_usage: bool) -> None:
        self.route = route
        self.created = created
        self.include_usage = include_usage
        self.id = ""
        self.model = ""
        self.usage: dict[str, Any] = {}
        self.tools: dict[int, int] = {}  # content block index -> tool call index
        self.done = False
        self.failure: GatewayError | None = None
        self._reader = SseReader()

    def feed(self, events: bytes) -> bytes:
        out: list[bytes] = []
        for data in self._reader.feed(events):
            if self.failure is not None or self.done:
                break
            try:
                event = json.loads(data)
            except ValueError:
                self.failure = _malformed("stream sent an event that is not JSON")
                break
            if isinstance(event, dict):
                out += self._event(event)
        return b"".join(out)

    def finish(self) -> bytes:
        if not self.done and self.failure is None:
            self.failure = GatewayError(
                502, "upstream_stream_incomplete", "the Anthropic provider's stream ended before message_stop"
            )
        return b""

    def _event(self, event: dict[str, Any]) -> Iterable[bytes]:
        kind = event.get("type")
        if kind == "message_start":
            message = _obj(event.get("message"))
            self.id, self.model = str(message.get("id") or ""), str(message.get("model") or "")
            self.usage.update(_usage_fields(message.get("usage")))
            if self.route == "chat":
                yield self._chunk({"role": "assistant", "content": ""})
        elif kind == "content_block_start":
            block = _obj(event.get("content_block"))
            if block.get("type") == "tool_use" and self.route == "chat":
                index = self.tools[_count(event.get("index"))] = len(self.tools)
                call = {
                    "index": index,
                    "id": str(block.get("id") or ""),
                    "type": "function",
                    "function": {"name": str(block.get("name") or ""), "arguments": ""},
                }
                yield self._chunk({"tool_calls": [call]})
            elif block.get("type") == "text" and block.get("text"):
                yield self._text(str(block["text"]))
        elif kind == "content_block_delta":
            delta = _obj(event.get("delta"))
            what = delta.get("type")
            if what == "text_delta" and isinstance(delta.get("text"), str):
                yield self._text(delta["text"])
            elif what == "input_json_delta" and self.route == "chat":
                call_index = self.tools.get(_count(event.get("index")))
                if call_index is not None and isinstance(delta.get("partial_json"), str):
                    arguments = {"arguments": delta["partial_json"]}
                    yield self._chunk({"tool_calls": [{"index": call_index, "function": arguments}]})
            elif what == "thinking_delta" and self.route == "chat" and isinstance(delta.get("thinking"), str):
                yield self._chunk({"reasoning_content": delta["thinking"]})
        elif kind == "message_delta":
            self.usage.update(_usage_fields(event.get("usage")))
            delta = _obj(event.get("delta"))
            if delta.get("stop_reason"):
                yield self._chunk({}, FINISH_REASONS.get(str(delta["stop_reason"]), "stop"))
        elif kind == "message_stop":
            self.done = True
            if self.include_usage:
                yield self._sse({**self._head(), "choices": [], "usage": chat_usage(self.usage)})
            yield b"data: [DONE]\n\n"
        elif kind == "error":
            error = _obj(event.get("error"))
            kind = str(error.get("type") or "api_error")
            status = ERROR_STATUSES.get(kind, 502)
            said = f"the Anthropic provider failed mid-stream: {error.get('message') or kind}"
            self.failure = GatewayError(status, kind, said, type=_openai_type(status, kind))
        # ping, content_block_stop and kinds added later carry nothing a chat stream shows

    @property
    def output_tokens(self) -> int:
        """The tokens the provider generated so far (its count, whatever the client saw)."""
        return _count(self.usage.get("output_tokens"))

    def _head(self) -> dict[str, Any]:
        if self.route == "chat":
            return {"id": f"chatcmpl-{self.id}", "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        return {"id": f"cmpl-{self.id}", "object": "text_completion", "created": self.created, "model": self.model}

    def _text(self, text: str) -> bytes:
        return self._chunk({"content": text}) if self.route == "chat" else self._choice({"text": text})

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        if self.route != "chat":
            return self._choice({"text": ""}, finish)
        return self._choice({"delta": delta}, finish)

    def _choice(self, body: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, **body, "finish_reason": finish, "logprobs": None}
        return self._sse({**self._head(), "choices": [choice]})

    @staticmethod
    def _sse(chunk: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _usage_fields(usage: Any) -> dict[str, Any]:
    """The counts a Messages usage object gives (message_start's, then message_delta's totals)."""
    if not isinstance(usage, dict):
        return {}
    names = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    return {name: usage[name] for name in names if isinstance(usage.get(name), int)}
