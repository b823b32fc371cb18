"""Anthropic Messages API shapes, without I/O: a Messages request as a chat completion, and
the chat answer (whole, or chunk by chunk) as a message object or Messages stream events.

For workers that speak only the OpenAI API. What translates: `system`,
text and image blocks, `tool_use` / `tool_result` blocks (as tool calls and
tool messages), `tools` and `tool_choice`, `max_tokens`, `stop_sequences`,
`temperature`, `top_p`, `metadata.user_id`, and usage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from smg.http.errors import GatewayError, missing_parameter
from smg.storage.records import new_id

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completion that answers a Messages request (GatewayError names a bad field)."""
    for name in ("model", "messages", "max_tokens"):
        if name not in body:
            raise missing_parameter(name)
    if not isinstance(body["max_tokens"], int) or isinstance(body["max_tokens"], bool) or body["max_tokens"] < 1:
        raise GatewayError(400, "invalid_value", "'max_tokens' must be a positive integer", param="max_tokens")
    if not isinstance(body["messages"], list):
        raise GatewayError(400, "invalid_value", "'messages' must be a list", param="messages")
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text(system, "system")})
    for index, message in enumerate(body["messages"]):
        messages += _chat_messages(message, f"messages[{index}]")
    chat: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": body["max_tokens"]}
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    if "stop_sequences" in body:
        chat["stop"] = body["stop_sequences"]
    for name in ("temperature", "top_p"):
        if name in body:
            chat[name] = body[name]
    user = (body.get("metadata") or {}).get("user_id") if isinstance(body.get("metadata"), dict) else None
    if user:
        chat["user"] = user
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        chat["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.get("name", ""),
                    "description": tool.get("description", ""),
                    "parameters": tool.get("input_schema") or {"type": "object"},
                },
            }
            for tool in tools
            if isinstance(tool, dict)
        ]
        choice = _tool_choice(body.get("tool_choice"))
        if choice is not None:
            chat["tool_choice"] = choice
    return chat


def _tool_choice(choice: Any) -> Any:
    if not isinstance(choice, dict):
        return None
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name", "")}}
    return {"auto": "auto", "any": "required", "none": "none"}.get(kind) if isinstance(kind, str) else None


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    raise GatewayError(400, "invalid_value", f"'{where}' must be a string or a list of blocks", param=where)


def _chat_messages(message: Any, where: str) -> list[dict[str, Any]]:
    """One Messages turn as chat messages: tool results become tool messages of their own."""
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise GatewayError(400, "invalid_value", f"{where} must be an object with role 'user' or 'assistant'", param=where)
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise GatewayError(400, "invalid_value", f"{where}.content must be a string or a list of blocks", param=where)
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            source = block.get("source") or {}
            url = (
                source.get("url")
                if source.get("type") == "url"
                else f"data:{source.get('media_type')};base64,{source.get('data')}"
            )
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input") or {})
            calls.append(
                {"id": block.get("id"), "type": "function", "function": {"name": block.get("name"), "arguments": arguments}}
            )
        elif kind == "tool_result":
            result = block.get("content", "")
            text = _text(result, f"{where}.tool_result") if not isinstance(result, str) else result
            out.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
        elif kind is None:
            raise GatewayError(400, "invalid_value", f"{where}: every content block needs a 'type'", param=where)
        # thinking and other block kinds carry nothing a chat model takes back
    if parts or calls:
        only_text = all(p["type"] == "text" for p in parts)
        turn: dict[str, Any] = {"role": role, "content": "".join(p["text"] for p in parts) if only_text else parts}
        if calls:
            turn["tool_calls"] = calls
            turn["content"] = turn["content"] or None
        out.append(turn)
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
