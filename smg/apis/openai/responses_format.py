"""Responses API shapes, without I/O: input items to chat messages, chat answers to
response objects, chat stream chunks to Responses stream events.

The gateway serves the Responses API on any OpenAI-compatible worker by
sending it a chat completion: stored history and the new input become
`messages`, and the answer becomes the response's `output` items.

The request arrives typed (`smg.http.schemas.ResponsesRequest`). Items stay JSON: stored
history and new input alike are kept and replayed as the client sent them, so
`chat_messages` reads the stored form, whichever request it came from.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from smg.http.schemas import ResponsesRequest, ResponsesTool, ResponsesToolChoice
from smg.storage.records import new_id

TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "refusal")


# -- input: items -> chat messages ---------------------------------------------------------


def chat_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a chat completion: the instructions as the system message, then every
    item in order (consecutive function calls join one assistant message). `items` are in
    their stored JSON form (`conversations.normalize_item`)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    for item in items:
        kind = item.get("type")
        if kind == "message":
            role = "system" if item.get("role") == "developer" else item.get("role")
            messages.append({"role": role, "content": _chat_content(item.get("content"))})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id") or item.get("id"),
                "type": "function",
                "function": {"name": item.get("name", ""), "arguments": item.get("arguments", "")},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") and not last.get("content"):
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output", "")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id"),
                    "content": output if isinstance(output, str) else json.dumps(output),
                }
            )
        # reasoning and other item kinds carry nothing a chat model takes back
    return messages


def _chat_content(content: Any) -> Any:
    """Text parts join into one string; with an image among them, chat content parts."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    if not any(isinstance(p, dict) and p.get("type") == "input_image" for p in parts):
        return "".join(p.get("text", "") for p in parts if isinstance(p, dict) and p.get("type") in TEXT_PARTS)
    out = []
    for part in parts:
        if not isinstance(part, dict):
            continue
        if part.get("type") in TEXT_PARTS:
            out.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "input_image" and part.get("image_url"):
            out.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
    return out


def chat_tools(tools: list[ResponsesTool] | None) -> list[dict[str, Any]] | None:
    """Responses function tools (`{"type": "function", "name", ...}`) as chat tools: the fields
    the client gave (a null one too), as the chat API spells them."""
    if not tools:
        return None
    out = []
    for tool in tools:
        if tool.type == "function":
            given = tool.model_fields_set
            function = {"name": tool.name, "description": tool.description, "parameters": tool.parameters, "strict": tool.strict}
            out.append({"type": "function", "function": {k: v for k, v in function.items() if k in given}})
    return out or None


def chat_tool_choice(choice: str | ResponsesToolChoice | None) -> str | dict[str, Any] | None:
    """A named function in the chat API's shape; any other choice goes to the worker as given
    (an object with the fields it came with, the unknown ones too)."""
    if not isinstance(choice, ResponsesToolChoice):
        return choice
    if choice.type == "function" and "name" in choice.model_fields_set:
        return {"type": "function", "function": {"name": choice.name}}
    return choice.model_dump(exclude_unset=True)


# -- output: chat answers -> response objects ------------------------------------------------


def output_items(message: dict[str, Any], status: str = "completed") -> list[dict[str, Any]]:
    """A chat answer's message as Responses output items, each `status`: its text, then its tool calls."""
    items: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, str) and text:
        items.append(message_item(text, status=status))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        item = function_call_item(call.get("id") or new_id("call"), function.get("name", ""), function.get("arguments", ""))
        items.append({**item, "status": status})
    if not items:
        items.append(message_item("", status=status))
    return items


def message_item(text: str, item_id: str | None = None, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id or new_id("message"),
        "status": status,
        "role": "assistant",
        "content": [output_text(text)],
    }


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def function_call_item(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": new_id("function_call"),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }


def usage_of(chat_usage: Any) -> dict[str, Any] | None:
    if not isinstance(chat_usage, dict):
        return None
    prompt, completion = int(chat_usage.get("prompt_tokens") or 0), int(chat_usage.get("completion_tokens") or 0)
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


# a chat finish_reason that means the answer was cut short -> the response's incomplete_details.reason
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def status_of(finish_reason: str | None) -> tuple[str, dict[str, Any] | None]:
    """A finished chat answer's response status and incomplete_details: `incomplete` when a
    length or content-filter limit cut it (as OpenAI answers), else `completed`."""
    reason = INCOMPLETE_REASONS.get(finish_reason or "")
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def error_object(code: str, message: str) -> dict[str, Any]:
    """A failed response's `error`, as the Responses API shapes it."""
    return {"code": code, "message": message}


@dataclass
class ResponseShell:
    """What a response object repeats from its request; `object_with` fills in the rest.

    `tools` and `tool_choice` are repeated as the client sent them (JSON: the unknown fields of
    a tool too), so they come from the parsed body rather than the typed request."""

    id: str
    model: str
    request: ResponsesRequest
    created_at: int = field(default_factory=lambda: int(time.time()))
    previous_response_id: str | None = None
    conversation_id: str | None = None
    background: bool = False  # runs after answering (asked for, and this node runs background responses)
    tools: list[Any] = field(default_factory=list)
    tool_choice: Any = "auto"

    def object_with(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        incomplete_details: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        r = self.request
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": self.background,
            "error": error,
            "incomplete_details": incomplete_details,
            "instructions": r.instructions,
            "max_output_tokens": r.max_output_tokens,
            "metadata": r.metadata or {},
            "model": self.model,
            "output": output,
            "parallel_tool_calls": r.parallel_tool_calls,
            "previous_response_id": self.previous_response_id,
            "conversation": {"id": self.conversation_id} if self.conversation_id else None,
            "store": r.store,
            "temperature": r.temperature,
            "text": {"format": {"type": "text"}},
            "tool_choice": self.tool_choice,
            "tools": self.tools,
            "top_p": r.top_p,
            "truncation": "disabled",
            "usage": usage,
            "user": r.user,
        }


# -- streams: chat chunks -> Responses events ---------------------------------------------------


@dataclass
class StreamState:
    """Turns chat stream chunks into the Responses API's events, in order, numbered.

    The text message item opens at the first text delta; tool calls are
    gathered and emitted whole when the stream ends (their arguments arrive
    in fragments across chunks)."""

    shell: ResponseShell
    sequence: int = 0
    text: str = ""
    message_id: str | None = None
    output: list[dict[str, Any]] = field(default_factory=list)
    calls: dict[int, dict[str, str]] = field(default_factory=dict)  # index -> id, name, arguments
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None  # the chat stream's first
    _message_index: int = 0

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()

    def start(self) -> list[bytes]:
        response = self.shell.object_with("in_progress", [])
        return [self.event("response.created", response=response), self.event("response.in_progress", response=response)]

    def chunk(self, data: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        if isinstance(data.get("usage"), dict):
            self.usage = usage_of(data["usage"])
        for choice in data.get("choices") or []:
            if self.finish_reason is None and choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.message_id is None:
                    out += self._open_message()
                self.text += text
                out.append(
                    self.event(
                        "response.output_text.delta",
                        item_id=self.message_id,
                        output_index=self._message_index,
                        content_index=0,
                        delta=text,
                        logprobs=[],
                    )
                )
            for call in delta.get("tool_calls") or []:
                slot = self.calls.setdefault(int(call.get("index", 0)), {"id": "", "name": "", "arguments": ""})
                function = call.get("function") or {}
                slot["id"] = call.get("id") or slot["id"]
                slot["name"] += function.get("name") or ""
                slot["arguments"] += function.get("arguments") or ""
        return out

    def _open_message(self) -> list[bytes]:
        self.message_id = new_id("message")
        self._message_index = len(self.output)
        item = message_item("", self.message_id, status="in_progress")
        item["content"] = []
        self.output.append(item)
        return [
            self.event("response.output_item.added", output_index=self._message_index, item=item),
            self.event(
                "response.content_part.added",
                item_id=self.message_id,
                output_index=self._message_index,
                content_index=0,
                part=output_text(""),
            ),
        ]

    def finish(self, item_status: str = "completed") -> list[bytes]:
        """The closing events; `self.output` then holds the final items, each `item_status`."""
        out: list[bytes] = []
        if self.message_id is None and not self.calls:
            out += self._open_message()
        if self.message_id is not None:
            index = self._message_index
            done = message_item(self.text, self.message_id, item_status)
            self.output[index] = done
            out.append(
                self.event(
                    "response.output_text.done",
                    item_id=self.message_id,
                    output_index=index,
                    content_index=0,
                    text=self.text,
                    logprobs=[],
                )
            )
            out.append(
                self.event(
                    "response.content_part.done",
                    item_id=self.message_id,
                    output_index=index,
                    content_index=0,
                    part=output_text(self.text),
                )
            )
            out.append(self.event("response.output_item.done", output_index=index, item=done))
        for _, call in sorted(self.calls.items()):
            item = {**function_call_item(call["id"] or new_id("call"), call["name"], call["arguments"]), "status": item_status}
            index = len(self.output)
            self.output.append(item)
            added = {**item, "status": "in_progress", "arguments": ""}
            out.append(self.event("response.output_item.added", output_index=index, item=added))
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    arguments=item["arguments"],
                )
            )
            out.append(self.event("response.output_item.done", output_index=index, item=item))
        return out

    def completed(self) -> tuple[dict[str, Any], bytes]:
        response = self.shell.object_with("completed", self.output, self.usage)
        return response, self.event("response.completed", response=response)

    def end(self, error: dict[str, Any] | None) -> tuple[dict[str, Any], list[bytes]]:
        """The closing events, last `response.completed`, `response.incomplete` (a length or
        content-filter cut) or `response.failed` (`error`: the stream broke off), and the final
        response object. The items of a response that is not complete are `incomplete`."""
        status, details = ("failed", None) if error is not None else status_of(self.finish_reason)
        events = self.finish("completed" if status == "completed" else "incomplete")
        response = self.shell.object_with(status, self.output, self.usage, error=error, incomplete_details=details)
        events.append(self.event(f"response.{status}", response=response))
        return response, events
