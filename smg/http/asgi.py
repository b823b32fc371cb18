"""Minimal ASGI plumbing shared by the gateway and the simulated worker.

Both speak plain ASGI to `smg.http.server`; a framework would cost more per request
than the whole proxy path is allowed to spend.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

CLIENT_GONE = "smg.client_gone"  # the ASGI extension `smg.http.server` offers in `scope["extensions"]`


class ClientGone(Protocol):
    """`scope["extensions"][CLIENT_GONE]`: `on_client_gone(callback)` has the server call
    `callback` (once, synchronously) if the client leaves before the request under way is
    answered, `on_client_gone(None)` stops that; it returns False, registering nothing, when
    the client is gone already. ASGI's own way, a task per request waiting in `receive()` for
    `http.disconnect`, costs a nursery and a task spawn per request."""

    def on_client_gone(self, callback: Callable[[], None] | None) -> bool: ...


JSON_CONTENT = (b"content-type", b"application/json")
TEXT_CONTENT = (b"content-type", b"text/plain; charset=utf-8")
SSE_CONTENT = (b"content-type", b"text/event-stream")


class BodyTooLarge(Exception):
    """The request body exceeds the configured limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds the limit of {limit} bytes")
        self.limit = limit


class ClientDisconnected(Exception):
    """The client went away before the request body was complete."""


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header `name` (lower-case bytes), or None."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for key, value in headers:
        if key == name:
            return value
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """Read the whole request body, refusing early when it is over `limit`."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body  # the common case: one message
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    headers: Headers | None = None,
    content_type: tuple[bytes, bytes] = JSON_CONTENT,
) -> None:
    """Send a complete response with a content length."""
    out = [content_type, (b"content-length", str(len(body)).encode())]
    if headers:
        out.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # built once: json.dumps with options builds one per call


def dump_json(obj: Any) -> bytes:
    return _COMPACT.encode(obj).encode()


async def send_json(send: Send, status: int, obj: Any, headers: Headers | None = None) -> None:
    await send_bytes(send, status, dump_json(obj), headers)


async def send_text(send: Send, status: int, text: str, headers: Headers | None = None) -> None:
    await send_bytes(send, status, text.encode(), headers, TEXT_CONTENT)


async def serve_lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge lifespan events; the node owns start-up and shutdown itself."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
