"""`--sse-keepalive-secs`: a stream the worker leaves silent carries keep-alive frames.

On trio's mock clock with the scripted upstream of `tests/fakes.py`: every frame the client
gets is stamped with the trio time it was sent, so a test asserts the exact instants (a
worker silent 40 s with keep-alive 15 gets frames at 15 and 30, none at 40 since the answer
came then). The OpenAI-shaped routes get an SSE comment, `/v1/messages` Anthropic's `ping`
event, whether the worker speaks the Messages API (relayed) or not (translated from the chat
stream, whose comments become pings).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from smg.apis.anthropic.messages import create_message
from smg.context import GatewayContext
from smg.dataplane.attempts import proxy
from smg.dataplane.relay import KEEPALIVE_COMMENT, MESSAGES_PING
from smg.dataplane.routes import ROUTES
from smg.http.asgi import Message
from tests.fakes import (
    MODEL,
    FakeClient,
    FakeUpstream,
    Step,
    add_ready_worker,
    exchange,
    gateway,
    sse_reply,
    worker_url,
)

CHAT = ROUTES["/v1/chat/completions"]
REQUEST: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
DONE = b"data: [DONE]\n\n"


class TimedClient(FakeClient):
    """Records the trio time of each body frame, and fails if two sends ever overlap (the
    keep-alive task and the relay must take turns)."""

    def __init__(self, body: bytes = b"", **kwargs: Any) -> None:
        super().__init__(body, **kwargs)
        self.frames: list[tuple[float, bytes]] = []
        self._sending = False

    async def send(self, message: Message) -> None:
        assert not self._sending, "two sends at once"
        self._sending = True
        try:
            if message["type"] == "http.response.body":
                self.frames.append((trio.current_time(), message.get("body", b"")))
            await super().send(message)
        finally:
            self._sending = False

    def at(self, frame: bytes, since: float) -> list[float]:
        """When (after `since`) each copy of `frame` was sent."""
        return [when - since for when, body in self.frames if body == frame]


async def relay(ctx: GatewayContext, client: TimedClient | None = None) -> tuple[TimedClient, float]:
    """A streamed chat completion through `proxy`; the client and the trio time it started."""
    client = client or TimedClient()
    start = trio.current_time()
    await proxy(ctx, exchange(client), CHAT, REQUEST, json.dumps(REQUEST).encode())
    return client, start


def chunk(text: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if text is None else {"content": text}
    event = {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


async def test_a_silent_worker_gets_a_comment_after_each_keepalive_interval(autojump_clock: MockClock) -> None:
    ctx = gateway(FakeUpstream(lambda call: sse_reply(40.0, b"data: 1\n\n", DONE)), 1, sse_keepalive_secs=15)

    client, start = await relay(ctx)

    assert client.at(KEEPALIVE_COMMENT, start) == [15.0, 30.0]  # none at 40: the answer came then
    assert [body for _, body in client.frames] == [KEEPALIVE_COMMENT, KEEPALIVE_COMMENT, b"data: 1\n\n", DONE, b""]
    assert client.complete and client.status == 200


async def test_silence_counts_from_the_last_event(autojump_clock: MockClock) -> None:
    ctx = gateway(FakeUpstream(lambda call: sse_reply(b"data: 1\n\n", 20.0, b"data: 2\n\n", 40.0, DONE)), 1)

    client, start = await relay(ctx)  # the default: 15 s

    assert client.at(KEEPALIVE_COMMENT, start) == [15.0, 35.0, 50.0]


async def test_nothing_is_sent_while_frames_flow(autojump_clock: MockClock) -> None:
    steps = [step for i in range(8) for step in (14.0, b"data: %d\n\n" % i)]
    ctx = gateway(FakeUpstream(lambda call: sse_reply(*steps, DONE)), 1, sse_keepalive_secs=15)

    client, _ = await relay(ctx)

    assert KEEPALIVE_COMMENT not in client.chunks and len(client.chunks) == 10  # 8 events, [DONE], the end


async def test_zero_sends_no_keepalive(autojump_clock: MockClock) -> None:
    ctx = gateway(FakeUpstream(lambda call: sse_reply(100.0, b"data: 1\n\n", DONE)), 1, sse_keepalive_secs=0)

    client, start = await relay(ctx)

    assert client.chunks == [b"data: 1\n\n", DONE, b""]
    assert client.frames[0][0] - start == 100.0


async def test_keepalives_do_not_hold_off_the_stall_timeout(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(lambda call: sse_reply(b"data: 1\n\n", math.inf))
    ctx = gateway(upstream, 1, sse_keepalive_secs=15, stream_stall_timeout_secs=40)

    client, start = await relay(ctx)

    assert client.at(KEEPALIVE_COMMENT, start) == [15.0, 30.0]
    when, last = client.frames[-1]
    assert when - start == 40.0 and client.complete  # the worker's silence, not the client's
    assert json.loads(last.removeprefix(b"data: "))["error"]["code"] == "upstream_stream_stalled"
    assert upstream.calls[0].ended_at == start + 40.0


async def test_a_keepalive_and_an_event_take_turns_on_a_slow_client(autojump_clock: MockClock) -> None:
    """A keep-alive that is still being sent when the worker speaks again delays the event; the
    two never go out at once (`TimedClient` would fail) and the event is not lost."""
    ctx = gateway(FakeUpstream(lambda call: sse_reply(16.0, b"data: 1\n\n", DONE)), 1, sse_keepalive_secs=15)

    client, start = await relay(ctx, TimedClient(send_delay=3.0))

    assert [(when - start, body) for when, body in client.frames] == [
        (15.0, KEEPALIVE_COMMENT),  # stamped as its send began; it took until 18
        (18.0, b"data: 1\n\n"),  # arrived at 16, sent after the keep-alive
        (21.0, DONE),
        (24.0, b""),
    ]


async def test_a_client_leaving_mid_stream_still_stops_the_relay(autojump_clock: MockClock) -> None:
    upstream = FakeUpstream(lambda call: sse_reply(b"data: 1\n\n", math.inf))
    ctx = gateway(upstream, 1)
    start = trio.current_time()

    client, _ = await relay(ctx, TimedClient(disconnect_at=start + 20))

    assert upstream.calls[0].cancelled and trio.current_time() == start + 20
    assert client.chunks == [b"data: 1\n\n", KEEPALIVE_COMMENT] and not client.complete


# -- /v1/messages ------------------------------------------------------------------------------

MESSAGES_REQUEST = {"model": MODEL, "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "hi"}]}


async def messages(ctx: GatewayContext) -> tuple[TimedClient, float]:
    client = TimedClient(json.dumps(MESSAGES_REQUEST).encode())
    ex = exchange(client, "/v1/messages")
    start = trio.current_time()
    await create_message(ctx, ex)
    return client, start


def events(client: TimedClient) -> list[str]:
    return [line[7:] for line in client.body_bytes.decode().split("\n") if line.startswith("event: ")]


async def test_a_relayed_messages_stream_gets_ping_events(autojump_clock: MockClock) -> None:
    native: list[Step] = [
        b'event: message_start\ndata: {"type":"message_start"}\n\n',
        40.0,
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    ]
    upstream = FakeUpstream(lambda call: sse_reply(*native))
    ctx = gateway(upstream, 0, sse_keepalive_secs=15)
    add_ready_worker(ctx, worker_url(0), models=[MODEL], runtime_type="anthropic")

    client, start = await messages(ctx)

    assert upstream.calls[0].target == b"/v1/messages"  # passed through, not translated
    assert client.at(MESSAGES_PING, start) == [15.0, 30.0]
    assert events(client) == ["message_start", "ping", "ping", "message_stop"]
    assert KEEPALIVE_COMMENT not in client.body_bytes


async def test_a_translated_messages_stream_gets_ping_events(autojump_clock: MockClock) -> None:
    steps: list[Step] = [chunk(), 40.0, chunk("Hello"), 20.0, chunk(finish="stop"), DONE]
    ctx = gateway(FakeUpstream(lambda call: sse_reply(*steps)), 1, sse_keepalive_secs=15)

    client, start = await messages(ctx)

    assert client.at(MESSAGES_PING, start) == [15.0, 30.0, 55.0]
    assert KEEPALIVE_COMMENT not in client.body_bytes
    assert events(client) == [
        "message_start",
        "ping",  # the one after message_start, as Anthropic's API sends it
        "ping",
        "ping",
        "content_block_start",
        "content_block_delta",
        "ping",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert client.complete and client.status == 200


@pytest.mark.parametrize("native", [False, True])
async def test_no_ping_events_with_zero(autojump_clock: MockClock, native: bool) -> None:
    if native:
        steps: list[Step] = [
            b'event: message_start\ndata: {"type":"message_start"}\n\n',
            40.0,
            b"event: message_stop\ndata: {}\n\n",
        ]
    else:
        steps = [chunk(), 40.0, chunk("Hi", finish="stop"), DONE]
    ctx = gateway(FakeUpstream(lambda call: sse_reply(*steps)), 0, sse_keepalive_secs=0)
    add_ready_worker(ctx, worker_url(0), models=[MODEL], runtime_type="anthropic" if native else "sglang")

    client, _ = await messages(ctx)

    assert events(client).count("ping") == (0 if native else 1)  # the translation's own, after message_start
    assert client.complete
