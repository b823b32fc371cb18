"""Requests the gateway makes of its own data plane.

The Responses and Messages APIs build a chat completion and send it through
`dispatch`, the path every client request takes: tenant limits, admission,
the policy, retries, circuit breakers and metrics all apply. The inner
exchange's `send` feeds a channel instead of a socket, so the API handler
reads the worker's answer (a JSON body, or SSE chunks as they arrive) and
turns it into its own shape.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from smg.context import GatewayContext
from smg.dataplane.attempts import FALLBACK_HEADERS
from smg.dataplane.dispatch import dispatch
from smg.dataplane.relay import KEEPALIVE_COMMENT
from smg.dataplane.routes import ROUTES
from smg.http.asgi import ClientDisconnected, Message, Receive
from smg.http.errors import GatewayError
from smg.http.exchange import Exchange
from smg.http.sse import SseReader

CHAT = ROUTES["/v1/chat/completions"]
BUFFER = 8  # messages (each a run of whole events) between the worker's stream and the reader
KEEPALIVE: dict[str, Any] = {"type": "keep-alive"}  # `InnerAnswer.events(keepalives=True)`'s marker; never changed


def answer_error(status: int, body: Any) -> GatewayError:
    """The error a failed chat answer (or a stream's error event) carries: the gateway's own,
    or the worker's."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return GatewayError(status, str(error.get("code") or "upstream_error"), str(error.get("message") or ""))
    return GatewayError(status, "upstream_error", f"the worker answered {status}")


@dataclass
class InnerAnswer:
    status: int
    event_stream: bool
    _messages: trio.MemoryReceiveChannel[Message]
    failure: GatewayError | None = None  # the stream broke off: an error event, a bad event, or no finish
    finish_reason: str | None = None  # the first choice's, once the stream (or answer) gave it
    drained: bool = False  # the last body message was read: the inner request is over
    client_left: bool = False  # the inner request ended without its last body message: its client left

    async def events(self, keepalives: bool = False) -> AsyncIterator[dict[str, Any]]:
        """A chat stream's chunks, parsed, as they arrive. A stream counts as answered only
        when it finished (a `finish_reason`, or `[DONE]`): one that ends with an error event,
        sends an event that is not JSON, or just stops, leaves its reason in `failure`.

        With `keepalives`, each keep-alive comment the relay sent after `--sse-keepalive-secs`
        of worker silence comes out as `KEEPALIVE` (compare with `is`), so a handler whose own
        stream has another shape sends its own keep-alive then; otherwise they are skipped."""
        reader = SseReader()
        finished = False
        chunks = self.chunks()
        try:
            async for chunk in chunks:
                if self.failure is not None:
                    continue  # after the error event, the stream's last: read to its end
                if chunk == KEEPALIVE_COMMENT:  # the relay sends each one as a message of its own
                    if keepalives:
                        yield KEEPALIVE
                    continue
                for data in reader.feed(chunk):
                    if data == b"[DONE]":
                        finished = True
                        continue
                    try:
                        event = json.loads(data)
                    except ValueError:
                        message = "the worker's chat stream sent an event that is not JSON"
                        self.failure = GatewayError(502, "upstream_invalid_response", message)
                        return  # the rest is not worth waiting for: the request is abandoned
                    if not isinstance(event, dict):
                        continue
                    if isinstance(event.get("error"), dict):
                        self.failure = answer_error(502, event)
                        break
                    problem = chat_shape_problem(event, "delta")
                    if problem is not None:
                        message = f"the worker's chat stream sent a malformed chunk: {problem}"
                        self.failure = GatewayError(502, "upstream_invalid_response", message)
                        return
                    reason = _finish_reason(event)
                    if reason is not None:
                        finished = True
                        self.finish_reason = self.finish_reason or reason
                    yield event
        finally:
            await chunks.aclose()
        if not finished and self.failure is None:
            if self.client_left:  # not the worker's fault: stored as failed, saying who left
                self.failure = GatewayError(499, "client_disconnected", "the client closed the connection before the end")
            else:
                message = "the worker's chat stream ended before it finished"
                self.failure = GatewayError(502, "upstream_stream_incomplete", message)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        async for message in self._messages:
            if message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    self.drained = True
                    return
        self.drained = True  # the inner request ended without a last body message (its client left)
        self.client_left = True

    async def json(self) -> Any:
        body = b"".join([chunk async for chunk in self.chunks()])
        try:
            answer = json.loads(body)
        except ValueError:
            raise GatewayError(502, "upstream_invalid_response", "the worker's chat answer is not JSON") from None
        if self.status == 200:
            problem = chat_shape_problem(answer, "message")
            if problem is not None:
                raise GatewayError(502, "upstream_invalid_response", f"the worker's chat answer is malformed: {problem}")
        self.finish_reason = _finish_reason(answer)
        return answer


def _kind(value: Any, kind: type) -> bool:
    """`value` is absent (None) or a `kind` (a bool counts as no int)."""
    return value is None or (isinstance(value, kind) and not isinstance(value, bool))


def chat_shape_problem(chat: Any, part: str) -> str | None:
    """What is wrong with the types of a worker's chat answer (`part` "message") or chunk
    ("delta") where the gateway reads it, else None. A worker is not trusted: a list where a
    string belongs would otherwise surface as a 500 (or a background response stuck in progress)."""
    if not isinstance(chat, dict):
        return "not an object"
    choices = chat.get("choices")
    if not _kind(choices, list):
        return "choices is not a list"
    if not _kind(chat.get("usage"), dict):
        return "usage is not an object"
    usage = chat.get("usage") or {}
    for name in ("prompt_tokens", "completion_tokens"):
        if not _kind(usage.get(name), int):
            return f"usage.{name} is not an integer"
    for i, choice in enumerate(choices or []):
        if not isinstance(choice, dict):
            return f"choices[{i}] is not an object"
        if not _kind(choice.get("finish_reason"), str):
            return f"choices[{i}].finish_reason is not a string"
        body = choice.get(part)
        if not _kind(body, dict):
            return f"choices[{i}].{part} is not an object"
        body = body or {}
        if not _kind(body.get("content"), str):
            return f"choices[{i}].{part}.content is not a string"
        calls = body.get("tool_calls")
        if not _kind(calls, list):
            return f"choices[{i}].{part}.tool_calls is not a list"
        for j, call in enumerate(calls or []):
            where = f"choices[{i}].{part}.tool_calls[{j}]"
            if not isinstance(call, dict):
                return f"{where} is not an object"
            if not _kind(call.get("index"), int) or not _kind(call.get("id"), str):
                return f"{where}: index or id of the wrong type"
            function = call.get("function")
            if not _kind(function, dict):
                return f"{where}.function is not an object"
            if not all(_kind((function or {}).get(name), str) for name in ("name", "arguments")):
                return f"{where}.function: name or arguments not a string"
    return None


def _finish_reason(chat: Any) -> str | None:
    """The first choice's `finish_reason` of a chat answer or chunk, if it has one."""
    choices = chat.get("choices") if isinstance(chat, dict) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        return reason if isinstance(reason, str) and reason else None
    return None


async def never_disconnects() -> Message:
    """`receive` for work that outlives its client (background responses)."""
    await trio.sleep_forever()
    raise AssertionError("unreachable")


@asynccontextmanager
async def chat_completion(
    ctx: GatewayContext, outer: Exchange, request: dict[str, Any], receive: Receive | None = None, buffer: int = BUFFER
) -> AsyncIterator[InnerAnswer]:
    """Send `request` as a chat completion for `outer`'s client (its tenant, headers and request
    id); `receive` tells of the client leaving (default: `outer`'s). Errors arrive as an
    answer with their status, as a client would see them.

    At most `buffer` messages wait between the worker's stream and the reader, so a slow
    client slows the worker's stream down instead of piling it up in memory. A reader that
    leaves before the end (an error, its client gone) cancels the inner request, as a
    client hanging up would."""
    send_channel, messages = trio.open_memory_channel[Message](buffer)
    scope = {**outer.scope, "path": "/v1/chat/completions"}
    inner = Exchange(scope, receive or outer.receive, send_channel.send, outer.request_id, CHAT.name)
    inner.tenant, inner.model, inner.lineage = outer.tenant, request.get("model"), outer.lineage
    body = json.dumps(request, separators=(",", ":")).encode()

    async def run() -> None:
        async with send_channel:
            try:
                await dispatch(ctx, inner, CHAT, request, body)
            except GatewayError as error:
                await inner.fail(error)
            outer.worker = inner.worker

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            try:
                start = await messages.receive()
            except trio.EndOfChannel:  # nothing answered: the client left first
                raise ClientDisconnected() from None
            outer.extra_headers += [h for h in inner.extra_headers if h[0] in FALLBACK_HEADERS]  # the step that answered
            content_type = dict(start.get("headers", [])).get(b"content-type", b"")
            answer = InnerAnswer(start["status"], content_type.startswith(b"text/event-stream"), messages)
            try:
                yield answer
            finally:
                if not answer.drained:
                    inner.client_gone = True  # not the worker's fault: its breaker is left alone
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise sole(group) from None


def sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception a nursery wrapped (the reader's `GatewayError`, say), so that callers
    see what they would without the nursery; a group of several stays a group."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
