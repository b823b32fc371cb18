"""One request/response exchange as the handlers see it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from smg.http.asgi import Message, Receive, Scope, Send
from smg.http.errors import GatewayError
from smg.workers.registry import Worker

REQUEST_ID_HEADER = b"x-request-id"


class Exchange:
    """Wraps ASGI `send` to record what the access log and metrics need.

    Every response gets the `x-request-id` header here, so no handler can
    forget it.
    """

    __slots__ = (
        "_send",
        "client_gone",
        "completion_tokens",
        "error_code",
        "error_message",
        "error_shape",
        "event_stream",
        "extra_headers",
        "finished",
        "lineage",
        "model",
        "prepared",
        "receive",
        "request_id",
        "route",
        "routing_text",
        "scope",
        "started",
        "started_at",
        "status",
        "tenant",
        "want_usage",
        "worker",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send, request_id: str, route: str) -> None:
        self.scope = scope
        self.receive = receive
        self._send = send
        self.request_id = request_id
        self.route = route
        self.started_at = time.perf_counter()
        self.status = 0
        self.started = False
        self.finished = False
        self.client_gone = False
        self.worker: Worker | None = None
        self.model: str | None = None
        self.error_code: str | None = None
        self.error_message: str | None = None
        self.error_shape: Callable[[GatewayError], dict[str, Any]] | None = None  # another API's error body
        self.event_stream = False
        self.tenant: str | None = None
        self.extra_headers: list[tuple[bytes, bytes]] = []
        self.routing_text: str | None = None  # computed once, by whoever needs it first
        self.want_usage = False  # per-tenant token limits: read the answer's usage
        self.prepared: Any = None  # gRPC workers: the request as the engine pipeline prepared it, reused by retries
        self.completion_tokens = 0
        self.lineage: str | None = None  # the conversation this request continues (sticky sessions' key)

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            self.started = True
            message["headers"] = [*message["headers"], (REQUEST_ID_HEADER, self.request_id.encode()), *self.extra_headers]
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)

    async def fail(self, error: GatewayError) -> None:
        """Answer with `error`, or end a response already under way with it."""
        self.error_code = error.code
        self.error_message = error.message
        if not self.started:
            await error.send(self.send, shape=self.error_shape)
        elif not self.finished:
            body = error.sse_event() if self.event_stream else b""
            await self.send({"type": "http.response.body", "body": body, "more_body": False})
