"""The HTTP/1.1 server shell, `smg.http.server.Connection`, over in-memory streams on trio's MockClock.

A client speaks to one `Connection` through `trio.testing.memory_stream_pair()`; requests are
written as raw bytes (or by an h11 client when it matters how they are framed) and answers are
parsed by h11. The server's end of the stream counts its writes and reads. Every timeout of the
server is set far beyond what the tests wait (`FAR`), so a connection that closes within a
mock second closed because of what it was sent, not at a deadline (those are the business of
tests/e2e/test_slow_clients.py). Each test takes no real time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import h11
import pytest
import trio
import trio.testing

from smg.http.asgi import CLIENT_GONE, Message, Receive, Scope, Send, send_bytes
from smg.http.h1 import MAX_HEAD
from smg.http.server import MAX_RECV, PIPELINE_BYTES, Connection, Server, ServerConfig, server_config
from tests.fakes import FakeSocket

FAR = 1000.0  # every server timeout: never reached here
WAIT = 10.0  # how long (mock time) a test waits for something that should happen
SOON = 1.0  # how long (mock time) a test waits for a connection that should close at once
TEXT = (b"content-type", b"text/plain")

App = Callable[[Scope, Receive, Send], Awaitable[None]]


def far_config(**settings: Any) -> ServerConfig:
    return server_config(
        "127.0.0.1",
        0,
        header_read_timeout=FAR,
        keep_alive_timeout=FAR,
        body_timeout=FAR,
        write_timeout=FAR,
        graceful_timeout=FAR,
        **settings,
    )


# -- the client side ----------------------------------------------------------------------


class _ServerSide:
    """The server end of an in-memory stream: names its peer as a socket does, and records
    each `send_all` and how many bytes the server read."""

    def __init__(self, inner: trio.StapledStream[Any, Any]) -> None:
        self.inner = inner
        self.socket = FakeSocket()
        self.closed = trio.Event()  # the server closed its end
        self.writes: list[bytes] = []
        self.read = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = bytes(await self.inner.receive_some(max_bytes))
        self.read += len(data)
        return data

    async def send_all(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        await self.inner.send_all(data)

    async def aclose(self) -> None:
        self.closed.set()
        await self.inner.aclose()


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    informational: list[int] = field(default_factory=list)


class Client:
    """A client on one in-memory connection to a `Connection` of `server`."""

    def __init__(self, nursery: trio.Nursery, server: Server) -> None:
        client, server_end = trio.testing.memory_stream_pair()
        self.stream = client
        self.server_side = _ServerSide(server_end)
        self.h11 = h11.Connection(h11.CLIENT)
        self.connection = Connection(server, cast(trio.abc.Stream, self.server_side))
        self.ended = trio.Event()  # Connection.run returned (an exception would fail the test's nursery)
        nursery.start_soon(self._run)

    async def _run(self) -> None:
        await self.connection.run()
        self.ended.set()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def close_send(self) -> None:
        """The client closes its side (the server reads the end of the stream)."""
        await self.stream.send_stream.aclose()

    async def response(self, method: str = "GET") -> Answer:
        """Read one whole answer. Requests written as raw bytes are shown to h11 as a bodiless
        `method` request, so that it knows how the answer is framed."""
        conn = self.h11
        if conn.our_state is h11.IDLE:
            conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
            conn.send(h11.EndOfMessage())
        status, headers, body, informational = 0, {}, b"", []
        with trio.fail_after(WAIT):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await self.stream.receive_some()))
                elif isinstance(event, h11.InformationalResponse):
                    informational.append(event.status_code)
                elif isinstance(event, h11.Response):
                    status, headers = event.status_code, dict(event.headers)
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                        conn.start_next_cycle()
                    return Answer(status, headers, body, informational)
                else:
                    raise AssertionError(f"the server closed the connection before answering: {event!r}")

    async def read_until_closed(self, within: float = SOON) -> bytes:
        """Every byte until the server closes the connection, which must happen within `within`."""
        out = b""
        with trio.fail_after(within):
            while data := await self.stream.receive_some():
                out += data
        return out

    async def wait_closed(self) -> None:
        """The server closes the connection at once, sending nothing more."""
        assert await self.read_until_closed() == b""


@asynccontextmanager
async def connected(app: App, config: ServerConfig | None = None) -> AsyncIterator[Client]:
    async with trio.open_nursery() as nursery:
        yield Client(nursery, Server(app, config or far_config(), "http"))
        nursery.cancel_scope.cancel()


def get(path: str = "/", extra: str = "", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nhost: x\r\n{extra}\r\n".encode()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return get(path, f"content-length: {len(body)}\r\n{extra}", "POST") + body


async def read_all(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers the request's path, then its body, with a content-length."""
    body = await read_all(receive)
    await send_bytes(send, 200, scope["path"].encode() + body, content_type=TEXT)


# -- writes --------------------------------------------------------------------------------


async def test_a_whole_answer_is_one_write(autojump_clock: trio.testing.MockClock) -> None:
    async with connected(echo_app) as client:
        await client.send(post("/p", b"hello"))
        answer = await client.response()
        assert (answer.status, answer.body) == (200, b"/phello")
        assert len(client.server_side.writes) == 1
        write = client.server_side.writes[0]
        assert write.startswith(b"HTTP/1.1 200 OK\r\n") and write.endswith(b"\r\n\r\n/phello")


async def test_a_streamed_answer_goes_out_with_its_head_in_the_first_piece(autojump_clock: trio.testing.MockClock) -> None:
    started = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_all(receive)
        await send({"type": "http.response.start", "status": 200, "headers": [TEXT]})
        started.set()
        await trio.sleep(1)
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        await trio.sleep(1)
        await send({"type": "http.response.body", "body": b"two", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async with connected(app) as client:
        await client.send(get())
        with trio.fail_after(WAIT):
            await started.wait()
        await trio.sleep(0.5)
        assert client.server_side.writes == []  # the head waits for the first piece of body
        answer = await client.response()
        assert answer.body == b"onetwo" and answer.headers[b"transfer-encoding"] == b"chunked"
        first, *rest = client.server_side.writes
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\n3\r\none\r\n")
        assert rest == [b"3\r\ntwo\r\n", b"0\r\n\r\n"]


# -- pipelining ----------------------------------------------------------------------------


async def test_pipelined_requests_in_one_write_are_answered_in_order(autojump_clock: trio.testing.MockClock) -> None:
    delays = {"/a": 2.0, "/b": 0.0, "/c": 1.0}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_all(receive)
        await trio.sleep(delays[scope["path"]])
        await send_bytes(send, 200, scope["path"].encode() + body, content_type=TEXT)

    async with connected(app) as client:
        await client.send(get("/a") + post("/b", b"xyz") + get("/c"))
        answers = [await client.response() for _ in range(3)]
        assert [(a.status, a.body) for a in answers] == [(200, b"/a"), (200, b"/bxyz"), (200, b"/c")]
        assert not client.server_side.closed.is_set()
        await client.send(get("/b"))  # and the connection is still usable
        assert (await client.response()).body == b"/b"


async def test_pipelined_read_ahead_pauses_during_a_slow_answer_and_resumes(autojump_clock: trio.testing.MockClock) -> None:
    release = trio.Event()
    busy = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_all(receive)
        if scope["path"] == "/slow":
            busy.set()
            await release.wait()
        await send_bytes(send, 200, scope["path"].encode(), content_type=TEXT)

    count = 250
    pad = "x-pad: " + "p" * 1000 + "\r\n"
    pipelined = b"".join(get(f"/{i}", pad) for i in range(count))
    assert len(pipelined) > 3 * PIPELINE_BYTES
    async with connected(app) as client:
        first = get("/slow")
        await client.send(first)
        with trio.fail_after(WAIT):
            await busy.wait()
        await client.send(pipelined)
        await trio.sleep(5)
        # the reader stopped after PIPELINE_BYTES (give or take one read) while /slow is answered
        assert len(first) + PIPELINE_BYTES <= client.server_side.read <= len(first) + PIPELINE_BYTES + MAX_RECV
        release.set()
        assert (await client.response()).body == b"/slow"
        for i in range(count):
            answer = await client.response()
            assert (answer.status, answer.body) == (200, f"/{i}".encode())
        assert client.server_side.read == len(first) + len(pipelined)
        assert not client.server_side.closed.is_set()


# -- Expect: 100-continue ------------------------------------------------------------------


async def test_expect_100_continue_is_answered_when_the_app_waits_for_the_body(autojump_clock: trio.testing.MockClock) -> None:
    got_body_at: list[float] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_all(receive)
        got_body_at.append(trio.current_time())
        await send_bytes(send, 200, body, content_type=TEXT)

    async with connected(app) as client:
        headers = [("host", "x"), ("content-length", "5"), ("expect", "100-continue")]
        await client.send(client.h11.send(h11.Request(method="POST", target="/", headers=headers)))
        with trio.fail_after(WAIT):
            data = bytes(await client.stream.receive_some())
        assert data == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.h11.receive_data(data)
        assert isinstance(client.h11.next_event(), h11.InformationalResponse)
        await trio.sleep(1)
        sent = trio.current_time()
        await client.send(client.h11.send(h11.Data(data=b"hello")) + client.h11.send(h11.EndOfMessage()))
        answer = await client.response()
        assert (answer.status, answer.body) == (200, b"hello")
        assert got_body_at == [sent]


async def test_no_100_continue_when_the_body_came_with_the_head(autojump_clock: trio.testing.MockClock) -> None:
    async with connected(echo_app) as client:
        await client.send(post("/", b"hello", "expect: 100-continue\r\n"))
        answer = await client.response()
        assert (answer.status, answer.body, answer.informational) == (200, b"/hello", [])
        assert not any(b"100 Continue" in w for w in client.server_side.writes)


# -- refused requests ----------------------------------------------------------------------

MALFORMED = [
    pytest.param(b"GARBAGE\r\n\r\n", 400, "bad_request", "invalid_request_error", id="garbage-request-line"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, "bad_request", "invalid_request_error", id="no-host"),
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n", 501, "not_implemented", "server_error", id="gzip"
    ),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "http_version_not_supported", "server_error", id="h2-preface"),
    pytest.param(
        b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (MAX_HEAD + 10),
        431,
        "request_header_fields_too_large",
        "invalid_request_error",
        id="head-too-large",
    ),
]


@pytest.mark.parametrize(("raw", "status", "code", "kind"), MALFORMED)
async def test_malformed_input_gets_an_openai_error_then_the_connection_closes(
    autojump_clock: trio.testing.MockClock, raw: bytes, status: int, code: str, kind: str
) -> None:
    refused: list[tuple[int, str]] = []
    called: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope)
        await send_bytes(send, 200, b"")

    async with connected(app, far_config(on_refused=lambda s, c: refused.append((s, c)))) as client:
        await client.send(raw)
        answer = await client.response()
        await client.wait_closed()
        with trio.fail_after(SOON):
            await client.ended.wait()
    assert answer.status == status
    assert answer.headers[b"x-smg-error-code"] == code.encode()
    assert answer.headers[b"content-type"] == b"application/json"
    assert answer.headers[b"connection"] == b"close"
    error = json.loads(answer.body)
    assert set(error) == {"error"} and set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"]["code"] == code and error["error"]["type"] == kind and error["error"]["param"] is None
    assert isinstance(error["error"]["message"], str) and error["error"]["message"]
    assert refused == [(status, code)]
    assert called == []


# -- HEAD and HTTP/1.0 ---------------------------------------------------------------------


async def test_head_gets_the_headers_without_the_body_and_the_connection_stays_usable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected(echo_app) as client:
        await client.send(get("/head", method="HEAD"))
        answer = await client.response("HEAD")
        assert (answer.status, answer.body) == (200, b"")
        assert answer.headers[b"content-length"] == b"5"  # the app's: what a GET would get
        head = client.server_side.writes[-1]
        assert head.endswith(b"\r\n\r\n") and b"/head" not in head  # the head, and not one byte after it
        await client.send(get("/next"))
        assert (await client.response()).body == b"/next"


async def test_http10_without_content_length_is_not_chunked_and_closes(autojump_clock: trio.testing.MockClock) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_all(receive)
        await send({"type": "http.response.start", "status": 200, "headers": [TEXT]})
        await send({"type": "http.response.body", "body": b"ab", "more_body": True})
        await send({"type": "http.response.body", "body": b"cd"})

    async with connected(app) as client:
        await client.send(b"GET / HTTP/1.0\r\n\r\n")
        raw = await client.read_until_closed()  # the end of the body is the end of the connection
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        assert lines[0] == b"http/1.1 200 ok" and b"connection: close" in lines
        assert not any(line.startswith((b"transfer-encoding", b"content-length")) for line in lines)
        assert body == b"abcd"
        with trio.fail_after(SOON):
            await client.ended.wait()


async def test_http10_keep_alive_with_content_length_stays_open(autojump_clock: trio.testing.MockClock) -> None:
    async with connected(echo_app) as client:
        await client.send(b"GET /one HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        answer = await client.response()
        assert answer.body == b"/one" and answer.headers[b"connection"] == b"keep-alive"
        assert answer.headers[b"content-length"] == b"4"
        await client.send(b"GET /two HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert (await client.response()).body == b"/two"
        assert not client.server_side.closed.is_set()


# -- request bodies --------------------------------------------------------------------------


async def test_a_chunked_body_reaches_the_app_whole(autojump_clock: trio.testing.MockClock) -> None:
    messages: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            messages.append(message)
            if not message.get("more_body"):
                break
        body = b"".join(m["body"] for m in messages)
        await send_bytes(send, 200, body, content_type=TEXT)

    async with connected(app) as client:
        request = h11.Request(method="POST", target="/", headers=[("host", "x"), ("transfer-encoding", "chunked")])
        await client.send(client.h11.send(request) + client.h11.send(h11.Data(data=b"hello ")))
        await trio.sleep(1)
        await client.send(client.h11.send(h11.Data(data=b"chunked ")))
        await trio.sleep(1)
        await client.send(client.h11.send(h11.Data(data=b"world")) + client.h11.send(h11.EndOfMessage()))
        answer = await client.response()
    assert (answer.status, answer.body) == (200, b"hello chunked world")
    assert len(messages) >= 3 and all(m["type"] == "http.request" for m in messages)
    assert [m.get("more_body", False) for m in messages][-1] is False


async def test_an_unread_body_that_has_arrived_is_skipped_and_the_connection_stays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, scope["path"].encode(), content_type=TEXT)  # the body is never read

    async with connected(app) as client:
        await client.send(post("/first", b"0123456789"))
        assert (await client.response()).body == b"/first"
        await client.send(get("/second"))
        assert (await client.response()).body == b"/second"
        assert not client.server_side.closed.is_set()


async def test_an_unread_body_still_arriving_closes_the_connection_after_the_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 413, b"too big", content_type=TEXT)

    async with connected(app) as client:
        await client.send(get("/", "content-length: 10\r\n", "POST") + b"0123")
        answer = await client.response()
        assert (answer.status, answer.body) == (413, b"too big")
        await client.wait_closed()
        with trio.fail_after(SOON):
            await client.ended.wait()


# -- Upgrade ---------------------------------------------------------------------------------

UPGRADE = "connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"


async def test_an_upgrade_request_is_answered_as_http11_then_closed(autojump_clock: trio.testing.MockClock) -> None:
    async with connected(echo_app) as client:
        await client.send(post("/up", b"hello", UPGRADE))
        answer = await client.response()
        assert (answer.status, answer.body) == (200, b"/uphello")
        assert answer.headers[b"connection"] == b"close"
        await client.wait_closed()


async def test_an_upgrade_request_whose_body_comes_later_gets_it(autojump_clock: trio.testing.MockClock) -> None:
    messages: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        messages.append(message)
        await send_bytes(send, 200, message.get("body", b""), content_type=TEXT)

    async with connected(app) as client:
        await client.send(get("/up", f"content-length: 5\r\n{UPGRADE}", "POST"))
        await trio.sleep(1)
        assert messages == []  # the app waits for the body
        await client.send(b"hello")
        answer = await client.response()
        assert messages == [{"type": "http.request", "body": b"hello", "more_body": False}]
        assert (answer.status, answer.body) == (200, b"hello")
        await client.wait_closed()


# -- smg.client_gone and http.disconnect -------------------------------------------------------


async def test_client_gone_callback_runs_when_the_client_closes(autojump_clock: trio.testing.MockClock) -> None:
    registered: list[bool] = []
    calls: list[float] = []
    waiting = trio.Event()
    woke_at: list[float] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_all(receive)
        with trio.CancelScope() as cancel_scope:

            def gone() -> None:
                calls.append(trio.current_time())
                cancel_scope.cancel()

            registered.append(scope["extensions"][CLIENT_GONE].on_client_gone(gone))
            waiting.set()
            await trio.sleep_forever()
        woke_at.append(trio.current_time())

    async with connected(app) as client:
        await client.send(get())
        with trio.fail_after(WAIT):
            await waiting.wait()
        await trio.sleep(3)
        closed_at = trio.current_time()
        await client.close_send()
        with trio.fail_after(WAIT):
            await client.ended.wait()
    assert registered == [True]
    assert calls == [closed_at] and woke_at == [closed_at]


async def test_client_gone_registered_after_the_client_left_returns_false(autojump_clock: trio.testing.MockClock) -> None:
    results: list[Any] = []
    calls: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_all(receive)
        results.append(await receive())  # the client closes: http.disconnect
        results.append(scope["extensions"][CLIENT_GONE].on_client_gone(lambda: calls.append("late")))

    async with connected(app) as client:
        await client.send(get())
        await trio.sleep(1)
        await client.close_send()
        with trio.fail_after(WAIT):
            await client.ended.wait()
    assert results == [{"type": "http.disconnect"}, False]
    assert calls == []


async def test_client_gone_unregistered_is_not_called(autojump_clock: trio.testing.MockClock) -> None:
    results: list[Any] = []
    calls: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_all(receive)
        extension = scope["extensions"][CLIENT_GONE]
        results.append(extension.on_client_gone(lambda: calls.append("gone")))
        results.append(extension.on_client_gone(None))
        results.append(await receive())

    async with connected(app) as client:
        await client.send(get())
        await trio.sleep(1)
        await client.close_send()
        with trio.fail_after(WAIT):
            await client.ended.wait()
    assert results == [True, True, {"type": "http.disconnect"}]
    assert calls == []


async def test_client_gone_of_an_answered_request_is_not_called(autojump_clock: trio.testing.MockClock) -> None:
    calls: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_all(receive)
        assert scope["extensions"][CLIENT_GONE].on_client_gone(lambda: calls.append(scope["path"]))
        await send_bytes(send, 200, b"ok", content_type=TEXT)

    async with connected(app) as client:
        await client.send(get("/answered"))
        assert (await client.response()).body == b"ok"
        await client.close_send()
        with trio.fail_after(WAIT):
            await client.ended.wait()
    assert calls == []


async def test_a_task_waiting_in_receive_after_the_body_gets_http_disconnect(autojump_clock: trio.testing.MockClock) -> None:
    messages: list[tuple[float, Message]] = []
    listening = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_all(receive)
        async with trio.open_nursery() as nursery:

            async def listen() -> None:
                listening.set()
                message = await receive()
                messages.append((trio.current_time(), message))
                nursery.cancel_scope.cancel()

            nursery.start_soon(listen)
            await trio.sleep_forever()

    async with connected(app) as client:
        await client.send(post("/", b"body"))
        with trio.fail_after(WAIT):
            await listening.wait()
        await trio.sleep(2)
        assert messages == []  # nothing to report while the client stays
        closed_at = trio.current_time()
        await client.close_send()
        with trio.fail_after(WAIT):
            await client.ended.wait()
    assert messages == [(closed_at, {"type": "http.disconnect"})]


async def test_receive_after_the_answer_ended_is_http_disconnect_at_once(autojump_clock: trio.testing.MockClock) -> None:
    messages: list[tuple[float, Message]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_all(receive)
        await send_bytes(send, 200, b"ok", content_type=TEXT)
        start = trio.current_time()
        with trio.fail_after(WAIT):
            message = await receive()
        messages.append((trio.current_time() - start, message))

    async with connected(app) as client:
        await client.send(post("/", b"body"))
        assert (await client.response()).body == b"ok"
        await client.send(get())  # the connection is still usable
        assert (await client.response()).body == b"ok"
    assert messages == [(0.0, {"type": "http.disconnect"})] * 2


# -- apps that fail ----------------------------------------------------------------------------


async def _fails_with_500(app: App) -> None:
    async with connected(app) as client:
        await client.send(get())
        answer = await client.response()
        await client.wait_closed()
        with trio.fail_after(SOON):
            await client.ended.wait()
    assert answer.status == 500
    assert answer.headers[b"x-smg-error-code"] == b"internal_error" and answer.headers[b"connection"] == b"close"
    error = json.loads(answer.body)["error"]
    assert (error["type"], error["code"], error["param"]) == ("server_error", "internal_error", None)
    assert error["message"]


async def test_an_app_that_raises_before_answering_gets_a_500(autojump_clock: trio.testing.MockClock) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_all(receive)
        raise RuntimeError("boom")

    await _fails_with_500(app)


async def test_an_app_that_returns_without_answering_gets_a_500(autojump_clock: trio.testing.MockClock) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_all(receive)

    await _fails_with_500(app)


async def test_an_app_that_raises_mid_stream_closes_the_connection(autojump_clock: trio.testing.MockClock) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_all(receive)
        await send({"type": "http.response.start", "status": 200, "headers": [TEXT]})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        await trio.sleep(1)
        raise RuntimeError("boom mid-stream")

    async with connected(app) as client:
        await client.send(get())
        raw = await client.read_until_closed(WAIT)
        with trio.fail_after(SOON):
            await client.ended.wait()  # Connection.run returned: nothing escaped it
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"transfer-encoding: chunked" in head
    assert body == b"7\r\npartial\r\n"  # no last chunk: the client sees the answer is incomplete
    parser = h11.Connection(h11.CLIENT)
    parser.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    parser.send(h11.EndOfMessage())
    parser.receive_data(raw)
    parser.receive_data(b"")
    assert isinstance(parser.next_event(), h11.Response)
    assert isinstance(parser.next_event(), h11.Data)
    with pytest.raises(h11.RemoteProtocolError, match="without sending complete message body"):
        parser.next_event()


# -- shutdown --------------------------------------------------------------------------------


async def test_terminate_closes_idle_connections_at_once(autojump_clock: trio.testing.MockClock) -> None:
    server = Server(echo_app, far_config(), "http")
    async with trio.open_nursery() as nursery:
        idle = Client(nursery, server)
        fresh = Client(nursery, server)
        partial = Client(nursery, server)
        await idle.send(get("/idle"))
        assert (await idle.response()).body == b"/idle"
        await partial.send(b"GET / HTTP/1.1\r\nhost")  # a head under way
        await trio.sleep(3)
        stopped = trio.current_time()
        server.terminate()
        for client in (idle, fresh, partial):
            await client.wait_closed()
            with trio.fail_after(SOON):
                await client.ended.wait()
        assert trio.current_time() == stopped
        assert server.connections == set()


async def test_terminate_lets_a_request_under_way_finish_then_closes(autojump_clock: trio.testing.MockClock) -> None:
    release = trio.Event()
    busy = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_all(receive)
        busy.set()
        await release.wait()
        await send_bytes(send, 200, scope["path"].encode(), content_type=TEXT)

    server = Server(app, far_config(), "http")
    async with trio.open_nursery() as nursery:
        client = Client(nursery, server)
        await client.send(get("/busy") + get("/next"))  # the second is pipelined behind the first
        with trio.fail_after(WAIT):
            await busy.wait()
        server.terminate()
        await trio.sleep(5)
        assert not client.server_side.closed.is_set()  # the request under way is not cut
        release.set()
        answer = await client.response()
        assert (answer.status, answer.body) == (200, b"/busy")
        # its head was written after terminate(): it says the connection ends with it
        assert answer.headers[b"connection"] == b"close"
        await client.wait_closed()  # and /next is never answered
        with trio.fail_after(SOON):
            await client.ended.wait()


async def test_a_request_started_after_terminate_is_answered_with_connection_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = Server(echo_app, far_config(), "http")
    server.terminate()
    async with trio.open_nursery() as nursery:
        client = Client(nursery, server)  # accepted as the shutdown began
        await client.send(get("/late"))
        answer = await client.response()
        assert answer.body == b"/late" and answer.headers[b"connection"] == b"close"
        await client.wait_closed()


# -- refused requests behind others ---------------------------------------------------------------


async def test_a_request_read_together_with_a_malformed_one_is_answered_first(autojump_clock: trio.testing.MockClock) -> None:
    async with connected(echo_app) as client:
        await client.send(get("/good") + b"GARBAGE\r\n\r\n")
        first = await client.response()
        assert (first.status, first.body) == (200, b"/good")
        assert (await client.response()).status == 400
        await client.wait_closed()


async def test_a_malformed_request_behind_one_under_way_is_refused_after_its_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_all(receive)
        await trio.sleep(2)
        await send_bytes(send, 200, b"slow", content_type=TEXT)

    async with connected(app) as client:
        await client.send(get("/slow"))
        await trio.sleep(1)
        await client.send(b"GARBAGE\r\n\r\n")
        raw = await client.read_until_closed(WAIT)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\n\r\nslowHTTP/1.1 400 Bad Request\r\n" in raw
