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
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from smg.asgi import Message, Receive
from smg.router.context import GatewayContext
from smg.router.dataplane import ROUTES, dispatch
from smg.router.errors import GatewayError
from smg.router.exchange import Exchange
from smg.router.responses_format import SseReader

CHAT = ROUTES["/v1/chat/completions"]


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
    failure: GatewayError | None = None  # a stream's error event: the worker broke off

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """A chat stream's chunks, parsed, as they arrive; an error event ends up in `failure`."""
        reader = SseReader()
        async for chunk in self.chunks():
            for data in reader.feed(chunk):
                try:
                    event = json.loads(data) if data != b"[DONE]" else None
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                if isinstance(event.get("error"), dict):
                    self.failure = answer_error(502, event)
                else:
                    yield event

    async def chunks(self) -> AsyncIterator[bytes]:
        async for message in self._messages:
            if message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    return

    async def json(self) -> Any:
        body = b"".join([chunk async for chunk in self.chunks()])
        try:
            return json.loads(body)
        except ValueError:
            raise GatewayError(502, "upstream_invalid_response", "the worker's chat answer is not JSON") from None


async def never_disconnects() -> Message:
    """`receive` for work that outlives its client (background responses)."""
    await trio.sleep_forever()
    raise AssertionError("unreachable")


@asynccontextmanager
async def chat_completion(
    ctx: GatewayContext, outer: Exchange, request: dict[str, Any], receive: Receive | None = None
) -> AsyncIterator[InnerAnswer]:
    """Send `request` as a chat completion for `outer`'s client (its tenant, headers and request
    id); `receive` tells of the client leaving (default: `outer`'s). Errors arrive as an
    answer with their status, as a client would see them."""
    send_channel, messages = trio.open_memory_channel[Message](math.inf)
    scope = {**outer.scope, "path": "/v1/chat/completions"}
    inner = Exchange(scope, receive or outer.receive, send_channel.send, outer.request_id, CHAT.name)
    inner.tenant, inner.model = outer.tenant, request.get("model")
    body = json.dumps(request, separators=(",", ":")).encode()

    async def run() -> None:
        async with send_channel:
            try:
                await dispatch(ctx, inner, CHAT, request, body)
            except GatewayError as error:
                await inner.fail(error)
            outer.worker = inner.worker

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        start = await messages.receive()
        content_type = dict(start.get("headers", [])).get(b"content-type", b"")
        yield InnerAnswer(start["status"], content_type.startswith(b"text/event-stream"), messages)
