"""Anthropic Messages API shapes, without I/O: a Messages request as a chat completion, and
the chat answer (whole, or chunk by chunk) as a message object or Messages stream events.

For workers that speak only the OpenAI API. What translates: `system`,
text and image blocks, `tool_use` / `tool_result` blocks (as tool calls and
tool messages), `tools` and `tool_choice`, `max_tokens`, `stop_sequences`,
`temperature`, `top_p`, `metadata.user_id`, and usage. The request arrives typed
(`smg.http.schemas.MessagesRequest`); the chat completion it becomes is JSON for the data plane.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from smg.http.errors import GatewayError
from smg.http.schemas import ImageSource, MessagesRequest, MessagesToolChoice, ResultBlock, SystemBlock, Turn
from smg.storage.records import new_id

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def chat_request(request: MessagesRequest) -> dict[str, Any]:
    """The chat completion that answers a Messages request (GatewayError names a bad value;
    the schema checked the types). A field the client gave, even as null, goes on to the chat
    request, one left out does not: `model_fields_set` tells them apart."""
    if request.max_tokens < 1:
        raise GatewayError(400, "invalid_value", "'max_tokens' must be a positive integer", param="max_tokens")
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": _text(request.system, "system")})
    for index, turn in enumerate(request.messages):
        messages += _chat_messages(turn, f"messages[{index}]")
    chat: dict[str, Any] = {"model": request.model, "messages": messages, "max_tokens": request.max_tokens}
    if request.stream is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    given = request.model_fields_set
    if "stop_sequences" in given:
        chat["stop"] = request.stop_sequences
    if "temperature" in given:
        chat["temperature"] = request.temperature
    if "top_p" in given:
        chat["top_p"] = request.top_p
    user = request.metadata.user_id if request.metadata is not None else None
    if user:
        chat["user"] = user
    if request.tools:
        chat["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description if "description" in tool.model_fields_set else "",
                    "parameters": tool.input_schema or {"type": "object"},
                },
            }
            for tool in request.tools
        ]
        choice = _tool_choice(request.tool_choice)
        if choice is not None:
            chat["tool_choice"] = choice
    return chat


def _tool_choice(choice: MessagesToolChoice | None) -> str | dict[str, Any] | None:
    if choice is None:
        return None
    if choice.type == "tool":
        return {"type": "function", "function": {"name": choice.name if "name" in choice.model_fields_set else ""}}
    return {"auto": "auto", "any": "required", "none": "none"}.get(choice.type)


def _text(content: str | list[SystemBlock] | list[ResultBlock] | None, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.text for b in content if b.type == "text")
    raise GatewayError(400, "invalid_value", f"'{where}' must be a string or a list of blocks", param=where)


def _chat_messages(turn: Turn, where: str) -> list[dict[str, Any]]:
    """One Messages turn as chat messages: tool results become tool messages of their own."""
    if turn.role not in ("user", "assistant"):
        raise GatewayError(400, "invalid_value", f"{where} must be an object with role 'user' or 'assistant'", param=where)
    role, content = turn.role, turn.content
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.type
        if kind == "text":
            parts.append({"type": "text", "text": block.text})
        elif kind == "image":
            source = block.source or ImageSource()
            url = source.url if source.type == "url" else f"data:{source.media_type};base64,{source.data}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif kind == "tool_use":
            arguments = json.dumps(block.input or {})
            calls.append({"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}})
        elif kind == "tool_result":
            result = block.content if "content" in block.model_fields_set else ""  # given as null: refused below
            text = result if isinstance(result, str) else _text(result, f"{where}.tool_result")
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": text})
        # thinking and other block kinds carry nothing a chat model takes back
    if parts or calls:
        only_text = all(p["type"] == "text" for p in parts)
        message: dict[str, Any] = {"role": role, "content": "".join(p["text"] for p in parts) if only_text else parts}
        if calls:
            message["tool_calls"] = calls
            message["content"] = message["content"] or None
        out.append(message)
    return out


def message_from_chat(chat: Any, model: str) -> dict[str, Any]:
    """A chat completion answer as an Anthropic message object."""
    choices = chat.get("choices") if isinstance(chat, dict) else None
    if not choices or not isinstance(choices[0], dict):
        raise GatewayError(502, "upstream_invalid_response", "the worker's chat answer has no choices")
    choice = choices[0]
    answer = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if answer.get("content"):
        content.append({"type": "text", "text": answer["content"]})
    for call in answer.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or new_id("toolu"), "name": function.get("name", ""),
                        "input": _arguments(function.get("arguments"))})  # fmt: skip
    usage = chat.get("usage") or {}
    return {
        "id": new_id("message"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": {"input_tokens": usage.get("prompt_tokens", 0), "output_tokens": usage.get("completion_tokens", 0)},
    }


def _arguments(raw: Any) -> Any:
    try:
        return json.loads(raw) if isinstance(raw, str) and raw else {}
    except ValueError:
        return {"_raw": raw}  # a model's malformed JSON, kept rather than lost


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}  # fmt: skip


def error_body(error: GatewayError) -> dict[str, Any]:
    """Anthropic's error shape (the `anthropic` client reads `error.type` and `error.message`)."""
    return {"type": "error", "error": {"type": ERROR_TYPES.get(error.status, "api_error"), "message": error.message}}


def sse(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **payload}, separators=(',', ':'))}\n\n".encode()


@dataclass
class MessagesStream:
    """Chat stream chunks in, Messages stream events out. Text streams as it comes; a tool call
    opens its `tool_use` block at its first fragment and streams its arguments as
    `input_json_delta`s."""

    model: str
    id: str = field(default_factory=lambda: new_id("message"))
    blocks: int = 0  # content blocks opened so far
    open_block: int | None = None
    tool_blocks: dict[int, int] = field(default_factory=dict)  # chat tool-call index -> block index
    stop_reason: str = "end_turn"
    input_tokens: int = 0
    output_tokens: int = 0

    def start(self) -> bytes:
        message: dict[str, Any] = {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}  # fmt: skip
        return sse("message_start", {"message": message}) + sse("ping", {})

    def chunk(self, data: dict[str, Any]) -> bytes:
        out = b""
        usage = data.get("usage")
        if isinstance(usage, dict):
            self.input_tokens = usage.get("prompt_tokens", self.input_tokens)
            self.output_tokens = usage.get("completion_tokens", self.output_tokens)
        for choice in data.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.open_block is None or self.open_block in self.tool_blocks.values():
                    out += self._open({"type": "text", "text": ""})
                out += sse("content_block_delta", {"index": self.open_block, "delta": {"type": "text_delta", "text": text}})
            for call in delta.get("tool_calls") or []:
                index = int(call.get("index", 0))
                function = call.get("function") or {}
                if index not in self.tool_blocks:
                    block = {
                        "type": "tool_use",
                        "id": call.get("id") or new_id("toolu"),
                        "name": function.get("name", ""),
                        "input": {},
                    }
                    out += self._open(block)
                    self.tool_blocks[index] = self.open_block  # type: ignore[assignment]
                if function.get("arguments"):
                    delta_json = {"type": "input_json_delta", "partial_json": function["arguments"]}
                    out += sse("content_block_delta", {"index": self.tool_blocks[index], "delta": delta_json})
            if choice.get("finish_reason"):
                self.stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        return out

    def _open(self, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.open_block = self.blocks
        self.blocks += 1
        return out + sse("content_block_start", {"index": self.open_block, "content_block": block})

    def _close(self) -> bytes:
        if self.open_block is None:
            return b""
        index, self.open_block = self.open_block, None
        return sse("content_block_stop", {"index": index})

    def finish(self) -> bytes:
        usage = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        delta = {"delta": {"stop_reason": self.stop_reason, "stop_sequence": None}, "usage": usage}
        return self._close() + sse("message_delta", delta) + sse("message_stop", {})

    def error(self, error: GatewayError) -> bytes:
        return self._close() + sse("error", error_body(error))
