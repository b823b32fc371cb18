"""What an attempt on a worker ends in, and the pieces every streamed answer shares.

`attempts` (HTTP workers: relayed bytes) and `engine` (gRPC workers: answers the gateway builds)
both end an attempt in an `Answer`, a `Failed` (may be retried) or a `Refused` (final, not the
worker's fault), and both stream through `KeepAlive` and end a broken stream with
`end_stream_with`, so a client sees one behaviour whatever kind of worker served it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from smg.context import GatewayContext
from smg.dataplane.usage import Usage
from smg.http.asgi import Message, Send, dump_json
from smg.http.errors import GatewayError
from smg.http.exchange import Exchange
from smg.workers.registry import Worker

ROUTED_WORKER_HEADER = b"x-smg-routed-worker-id"
# --sse-keepalive-secs: an SSE comment on the OpenAI-shaped routes (clients skip it), and on
# the Messages API the `ping` event Anthropic's own API sends (its clients skip that), in the
# compact JSON of the gateway's other Messages events (the ping after `message_start` too).
KEEPALIVE_COMMENT = b": keep-alive\n\n"
MESSAGES_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
MESSAGES_ROUTE = "/v1/messages"  # `Exchange.route` of the Messages API (relayed as-is to workers that speak it)


@dataclass(slots=True)
class Answer:
    """A complete non-streaming worker answer, sent after its connection went back to the pool."""

    worker: Worker
    status: int
    content_type: bytes
    payload: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # the worker's that the client sees (Retry-After)


@dataclass(slots=True)
class Failed:
    """An attempt that may be retried: the error to answer if it was the last one."""

    error: GatewayError
    answer: Answer | None = None  # the worker's own answer, when it sent one
    # it answered 429 or 503 with Retry-After: it is cooling down (`attempts.cool_down`), which
    # says it is busy, not broken: its breaker is left alone
    cooled: bool = False


@dataclass(slots=True)
class Refused:
    """A final error that says nothing about the worker (a request the engine pipeline cannot
    serve, a model whose tokenizer is not loaded): answered as it is, not retried, and not a
    failure for the worker's breaker."""

    error: GatewayError


class KeepAlive:
    """The keep-alive frames of one relayed stream: `run` (a task beside the relay) sends `frame`
    whenever `every` seconds passed since the client last got something, and `send` is the
    relay's way out, so the two never send at once (an ASGI server may not interleave sends
    safely) and every relayed event counts as a sign of life. While the relay is stuck sending
    to a slow client, bytes are on their way: no keep-alive then."""

    __slots__ = ("_lock", "_send", "every", "frame", "heard")

    def __init__(self, send: Send, frame: bytes, every: float) -> None:
        self._send = send
        self.frame = frame
        self.every = every
        self.heard = trio.current_time()  # when the client last got a frame (the head counts)
        self._lock = trio.Lock()

    async def send(self, message: Message) -> None:
        lock = self._lock
        if lock.locked():  # a keep-alive is going out: after it
            await lock.acquire()
        else:
            lock.acquire_nowait()  # the usual case, without a checkpoint
        try:
            self.heard = trio.current_time()
            await self._send(message)
        finally:
            lock.release()

    async def run(self) -> None:
        while True:
            due = self.heard + self.every
            if trio.current_time() < due:
                await trio.sleep_until(due)
                continue  # an event may have gone out meanwhile
            self.heard = due
            if self._lock.locked():
                continue
            async with self._lock:
                await self._send({"type": "http.response.body", "body": self.frame, "more_body": True})


@asynccontextmanager
async def keeping_alive(keepalive: KeepAlive | None) -> AsyncIterator[None]:
    """Runs `keepalive` (if any) for the duration of the block. Exceptions leave as they would
    without the task: the relay's callers (and the pool's context) expect a bare `Cancelled`
    or `UpstreamError`, not the group a nursery wraps them in."""
    if keepalive is None:
        yield
        return
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keepalive.run)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _sole(group) from None


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception that matters in a nursery's group: the one that is not `Cancelled` (the
    other task was cancelled because of it), else one `Cancelled` for the scope that was
    cancelled to catch; several real errors stay a group."""
    cancelled, rest = group.split(trio.Cancelled)
    if rest is None:
        assert cancelled is not None
        return _first_leaf(cancelled)
    leaves = list(_leaves(rest))
    return leaves[0] if len(leaves) == 1 else rest


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def _first_leaf(error: BaseException) -> BaseException:
    return next(_leaves(error))


async def end_stream_with(ex: Exchange, error: GatewayError) -> None:
    """The stream's last event: the error, in the client's API shape (Anthropic's `error` event
    for the Messages API, `data: {"error": ...}` for OpenAI's)."""
    if ex.error_shape is None:
        await ex.fail(error)
        return
    ex.error_code, ex.error_message = error.code, error.message
    event = b"event: error\ndata: " + dump_json(ex.error_shape(error)) + b"\n\n"
    await ex.send({"type": "http.response.body", "body": event, "more_body": False})


def count_usage(ctx: GatewayContext, ex: Exchange, worker: Worker, model: str, usage: Usage | None) -> None:
    """An answer's reported tokens: in `smg_router_tokens_total` (by the model that ran and the
    worker's backend: its provider's API, or its engine) and on the exchange, for the tenant's
    token limit. An answer that reports none counts nothing."""
    if usage is None:
        return
    ex.completion_tokens = usage.completion
    backend = worker.provider or worker.runtime_type
    tokens = ctx.metrics.tokens
    for kind, count in (("prompt", usage.prompt), ("completion", usage.completion), ("cached", usage.cached)):
        if count:
            tokens(model, backend, kind).inc(count)
    if usage.prompt:
        counts = worker.tokens.get(model)
        if counts is None:
            counts = worker.tokens[model] = [0, 0]
        counts[0] += usage.prompt
        counts[1] += min(usage.cached, usage.prompt)
