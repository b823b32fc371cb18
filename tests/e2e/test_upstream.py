"""The upstream clients against a real simulated worker on real sockets, in one trio loop; and a
gateway in front of a raw-socket worker that answers exact bytes (broken HTTP among them)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from functools import partial

import httpx
import pytest
import trio

from smg.simworker.engine import SimConfig
from smg.simworker.fleet import run_fleet
from smg.upstream import UpstreamConnectError, UpstreamProtocolError, UpstreamProtocolViolation, make_upstream
from smg.upstream.pool import PoolUpstream
from smg.workers.registry import Origin, normalize_url
from tests.helpers import Proc, start_gateway

BODY = b'{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":3}'
HEADERS = [(b"content-type", b"application/json")]


@pytest.mark.parametrize("kind", ["pool", "httpx"])
async def test_request_stream_and_reuse(kind: str, nursery: trio.Nursery) -> None:
    urls = await nursery.start(run_fleet, SimConfig(ttft_ms=0, tpot_ms=0), "127.0.0.1", 0, 1)
    origin = Origin.parse(normalize_url(urls[0]))
    upstream = make_upstream(kind, connect_timeout=2, max_idle_per_origin=4)
    for _ in range(3):
        async with upstream.request(origin, b"POST", b"/v1/chat/completions", HEADERS, BODY) as response:
            assert response.status == 200
            assert b'"completion_tokens":3' in await response.read()
    stream_body = BODY[:-1] + b',"stream":true}'
    async with upstream.request(origin, b"POST", b"/v1/chat/completions", HEADERS, stream_body) as response:
        chunks = [c async for c in response.aiter_body()]
    assert b"".join(chunks).endswith(b"data: [DONE]\n\n")
    if isinstance(upstream, PoolUpstream):
        assert len(upstream._idle[origin]) == 1  # one connection served all four requests
    await upstream.aclose()


async def test_pool_retries_once_on_a_connection_the_server_closed(nursery: trio.Nursery) -> None:
    urls = await nursery.start(run_fleet, SimConfig(ttft_ms=0, tpot_ms=0), "127.0.0.1", 0, 1)
    origin = Origin.parse(normalize_url(urls[0]))
    upstream = PoolUpstream(connect_timeout=2)
    async with upstream.request(origin, b"POST", b"/v1/chat/completions", HEADERS, BODY) as response:
        await response.read()
    stale = upstream._idle[origin][0]
    stale.stream.socket.shutdown(trio.socket.SHUT_RDWR)  # as if the worker closed it while idle
    async with upstream.request(origin, b"POST", b"/v1/chat/completions", HEADERS, BODY) as response:
        assert response.status == 200
        await response.read()
    assert upstream._idle[origin][0] is not stale


async def test_pool_connect_error() -> None:
    upstream = PoolUpstream(connect_timeout=2)
    with pytest.raises(UpstreamConnectError):
        async with upstream.request(Origin.parse("http://127.0.0.1:9"), b"GET", b"/", [], b""):
            pass


async def _canned_server(nursery: trio.Nursery, replies: list[list[bytes]]) -> tuple[Origin, list[bytes]]:
    """A raw TCP server: per connection, reads one request and sends the next reply's pieces
    (with a pause between pieces, so the client sees them in separate reads)."""
    received: list[bytes] = []
    queue = list(replies)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            while queue:
                data = await stream.receive_some(65536)
                if not data:
                    return
                received.append(data)
                for piece in queue.pop(0):
                    if piece == b"<close>":
                        return
                    await stream.send_all(piece)
                    await trio.sleep(0.01)

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return Origin.parse(f"http://127.0.0.1:{port}"), received


async def _fetch(upstream: PoolUpstream, origin: Origin) -> tuple[int, list[bytes]]:
    async with upstream.request(origin, b"POST", b"/x", HEADERS, b"{}") as response:
        return response.status, [piece async for piece in response.aiter_body()]


async def test_pool_parses_chunked_bodies_split_across_reads(nursery: trio.Nursery) -> None:
    origin, received = await _canned_server(
        nursery,
        [
            [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhel", b"lo\r\n6\r\n world\r\n",
             b"0\r\nx-trailer: 1\r\n\r\n"],
            [b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nab", b"c"],
        ],
    )  # fmt: skip
    upstream = PoolUpstream()
    status, pieces = await _fetch(upstream, origin)
    assert status == 200 and b"".join(pieces) == b"hello world"
    assert len(upstream._idle[origin]) == 1  # complete and keep-alive: pooled
    status, pieces = await _fetch(upstream, origin)
    assert b"".join(pieces) == b"abc"
    assert received[0].startswith(b"POST /x HTTP/1.1\r\nhost: 127.0.0.1:") and received[0].endswith(b"\r\n\r\n{}")


async def test_pool_bursts_of_chunks_come_out_as_one_piece(nursery: trio.Nursery) -> None:
    events = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"])
    origin, _ = await _canned_server(
        nursery, [[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + events + b"0\r\n\r\n"]]
    )
    status, pieces = await _fetch(PoolUpstream(), origin)
    assert status == 200
    assert pieces == [b"data: 1\n\ndata: 2\n\ndata: 3\n\n"]


async def test_pool_close_delimited_and_connection_close_are_not_reused(nursery: trio.Nursery) -> None:
    origin, _ = await _canned_server(
        nursery,
        [[b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"close", b"<close>"]],
    )
    upstream = PoolUpstream()
    status, pieces = await _fetch(upstream, origin)
    assert status == 200 and b"".join(pieces) == b"until close"
    assert not upstream._idle.get(origin)
    origin, _ = await _canned_server(nursery, [[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nConnection: Close\r\n\r\nok"]])
    assert (await _fetch(upstream, origin))[1] == [b"ok"]
    assert not upstream._idle.get(origin)


async def test_pool_drops_a_connection_with_bytes_after_the_response(nursery: trio.Nursery) -> None:
    origin, _ = await _canned_server(
        nursery, [[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc"]]
    )
    upstream = PoolUpstream()
    assert await _fetch(upstream, origin) == (200, [b"ok"])
    assert not upstream._idle.get(origin)  # the next request would have read the unasked-for answer


@pytest.mark.parametrize(
    "reply",
    [
        [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"],
        [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX"],
        [b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", b"<close>"],
        [b"SSH-2.0-OpenSSH\r\n\r\n"],
        [b"<close>"],
    ],
)
async def test_pool_rejects_broken_responses(reply: list[bytes], nursery: trio.Nursery) -> None:
    origin, _ = await _canned_server(nursery, [reply])
    with pytest.raises(UpstreamProtocolError):
        await _fetch(PoolUpstream(), origin)


async def test_pool_caps_a_non_streamed_body_but_not_a_stream(nursery: trio.Nursery) -> None:
    head, chunk = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", b"400\r\n" + b"x" * 1024 + b"\r\n"
    two_chunks = [head + chunk, chunk + b"0\r\n\r\n"]
    origin, _ = await _canned_server(
        nursery, [[b"HTTP/1.1 200 OK\r\ncontent-length: 2000\r\n\r\n"], two_chunks, two_chunks]
    )  # the first one is refused from its head alone
    upstream = PoolUpstream(max_response_size=1500)
    for _ in range(2):
        with pytest.raises(UpstreamProtocolViolation, match="over 1500 bytes"):
            async with upstream.request(origin, b"POST", b"/x", HEADERS, b"{}") as response:
                await response.read()
    assert sum(len(p) for p in (await _fetch(upstream, origin))[1]) == 2048  # aiter_body: a stream, not capped here


# -- a gateway in front of a worker that speaks broken HTTP ------------------------------------

MODEL = "raw-model"
CAP = 65536


def _ok_body(text: str) -> bytes:
    return json.dumps(
        {"id": "chatcmpl-raw", "object": "chat.completion", "created": 1, "model": MODEL,
         "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    ).encode()  # fmt: skip


def _chunked(body: bytes, size: int = 7) -> bytes:
    return (
        b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size))
        + b"0\r\n\r\n"
    )


JSON_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
GOOD = _ok_body("fine")
BIG = _ok_body("x" * (CAP + 100))
# What each defect of the old hand-written parser let through (a 200 with a wrong body, or a hang),
# and the size cap: every one must now be 502 upstream_protocol_error.
BROKEN = {
    "transfer-encoding and content-length": JSON_HEAD
    + b"transfer-encoding: chunked\r\ncontent-length: %d\r\n\r\n" % len(GOOD)
    + _chunked(GOOD),
    "negative content-length": JSON_HEAD + b"content-length: -3\r\n\r\n" + GOOD,
    "differing content-lengths": JSON_HEAD + b"content-length: 5\r\ncontent-length: %d\r\n\r\n" % len(GOOD) + GOOD,
    "chunk size 0x5": JSON_HEAD + b"transfer-encoding: chunked\r\n\r\n0x5\r\n" + GOOD[:5] + b"\r\n0\r\n\r\n",
    "chunk size -1": JSON_HEAD + b"transfer-encoding: chunked\r\n\r\n-1\r\n" + GOOD,
    "folded header": JSON_HEAD + b"x-note: one\r\n two\r\ncontent-length: %d\r\n\r\n" % len(GOOD) + GOOD,
    "status -99": b"HTTP/1.1 -99 Odd\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(GOOD) + GOOD,
    "bare LF": b"HTTP/1.1 200 OK\ncontent-type: application/json\ncontent-length: %d\n\n" % len(GOOD) + GOOD,
    "invalid header name": JSON_HEAD + b"x note: 1\r\ncontent-length: %d\r\n\r\n" % len(GOOD) + GOOD,
    "body over the cap, content-length": JSON_HEAD + b"content-length: %d\r\n\r\n" % len(BIG) + BIG,
    "body over the cap, chunked": JSON_HEAD + b"transfer-encoding: chunked\r\n\r\n" + _chunked(BIG, 4096),
}
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
FIRST_EVENT = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hel"}}]}\n\n'
REPLIES = {
    **BROKEN,
    # chat answers whose types are wrong where the gateway reads them (Responses, Messages)
    "malformed answer": JSON_HEAD
    + b"content-length: %d\r\n\r\n" % len(GOOD.replace(b'"stop"', b'["stop"]'))
    + GOOD.replace(b'"stop"', b'["stop"]'),
    "malformed chunk": SSE_HEAD + _chunked(b'data: {"choices":[{"index":0,"delta":"x"}]}\n\ndata: [DONE]\n\n'),
    # a stream under way, then a chunk size that breaks the framing (the connection stays open)
    "stream with a bad chunk": (SSE_HEAD + _chunked(FIRST_EVENT, len(FIRST_EVENT))[:-5], b"zz\r\nxx\r\n"),
    "ok": JSON_HEAD + b"content-length: %d\r\n\r\n" % len(GOOD) + GOOD,
    "ok chunked": JSON_HEAD + b"transfer-encoding: chunked\r\n\r\n" + _chunked(GOOD),
}


class RawWorker:
    """A worker on 127.0.0.1 that answers discovery and health properly and each chat request
    with the exact bytes `REPLIES` holds for its message's content, keeping the connection
    open (so a gateway that reused a broken one would show it). Runs its own trio loop in a thread."""

    def __init__(self) -> None:
        self.url = ""
        self.connections = 0
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    def __enter__(self) -> RawWorker:
        self._thread.start()
        assert self._ready.wait(10), "raw worker did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None and self._scope is not None
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(10)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            listeners = await nursery.start(partial(trio.serve_tcp, self._serve, 0, host="127.0.0.1"))
            self.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
            self._ready.set()

    def _reply(self, head: bytes, body: bytes) -> bytes | tuple[bytes, ...]:
        if head.startswith(b"GET /v1/models"):
            models = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "test"}]}).encode()
            return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(models) + models
        if head.startswith(b"GET "):
            return b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nOK"
        return REPLIES[json.loads(body)["messages"][0]["content"]]

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buf = b""
        try:
            async with stream:
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        buf += data
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                    length = int(match.group(1)) if match else 0
                    while len(buf) < length:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        buf += data
                    body, buf = buf[:length], buf[length:]
                    reply = self._reply(head, body)
                    for i, piece in enumerate(reply if isinstance(reply, tuple) else (reply,)):
                        if i:
                            await trio.sleep(0.2)  # pieces of a stream: the gateway has relayed the first
                        await stream.send_all(piece)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


@pytest.fixture(scope="module")
def raw_worker() -> Iterator[RawWorker]:
    with RawWorker() as worker:
        yield worker


def _gateway(raw_worker: RawWorker, client: str) -> Iterator[Proc]:
    # no retries and no breaker: each case is one attempt, and twenty failures do not open the breaker
    proc = start_gateway(
        [raw_worker.url], "--upstream-client", client, "--disable-retries", "--disable-circuit-breaker",
        "--max-upstream-response-size", str(CAP),
    )  # fmt: skip
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def raw_gateway(raw_worker: RawWorker) -> Iterator[Proc]:
    yield from _gateway(raw_worker, "pool")


@pytest.fixture(scope="module")
def raw_httpx_gateway(raw_worker: RawWorker) -> Iterator[Proc]:
    yield from _gateway(raw_worker, "httpx")


def _chat(gateway: Proc, case: str) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": case}]}
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=15)


def _assert_protocol_error(r: httpx.Response) -> None:
    assert r.status_code == 502, r.text
    assert r.headers["x-smg-error-code"] == "upstream_protocol_error"
    error = r.json()["error"]
    assert set(error) == {"type", "code", "message", "param"}
    assert error["code"] == "upstream_protocol_error" and error["type"] == "server_error" and error["message"]


@pytest.mark.parametrize("case", BROKEN)
def test_gateway_answers_502_upstream_protocol_error_and_keeps_serving(case: str, raw_gateway: Proc) -> None:
    _assert_protocol_error(_chat(raw_gateway, case))
    for good in ("ok", "ok chunked", "ok"):  # the same worker, through the same pool, still answers
        r = _chat(raw_gateway, good)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "fine"


@pytest.mark.parametrize("case", ["body over the cap, content-length", "body over the cap, chunked"])
def test_httpx_client_enforces_the_cap_too(case: str, raw_httpx_gateway: Proc) -> None:
    _assert_protocol_error(_chat(raw_httpx_gateway, case))
    assert _chat(raw_httpx_gateway, "ok").status_code == 200


def test_a_framing_violation_mid_stream_ends_it_with_a_protocol_error_event(raw_gateway: Proc) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "stream with a bad chunk"}], "stream": True}
    r = httpx.post(raw_gateway.url + "/v1/chat/completions", json=body, timeout=15)
    assert r.status_code == 200
    events = [block for block in r.text.split("\n\n") if block]
    assert events[0] == FIRST_EVENT.decode().strip()
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert error["code"] == "upstream_protocol_error" and len(events) == 2
    assert _chat(raw_gateway, "ok").status_code == 200


def test_malformed_chat_answers_fail_responses_and_messages_cleanly(raw_gateway: Proc) -> None:
    """A worker's answer with a list for `finish_reason`, or a string for `delta`: 502
    upstream_invalid_response (or `response.failed`), never a 500, and nothing stored as completed."""
    url = raw_gateway.url
    r = httpx.post(url + "/v1/responses", json={"model": MODEL, "input": "malformed answer"}, timeout=15)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_invalid_response", r.text
    body = {"model": MODEL, "input": "malformed chunk", "stream": True}
    r = httpx.post(url + "/v1/responses", json=body, timeout=15)
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "response.failed", events[-1]
    assert events[-1]["response"]["error"]["code"] == "upstream_invalid_response"
    stored = httpx.get(url + f"/v1/responses/{events[-1]['response']['id']}", timeout=15).json()
    assert stored["status"] == "failed"
    message = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "malformed answer"}]}
    r = httpx.post(url + "/v1/messages", json=message, timeout=15)
    assert r.status_code == 502 and r.json()["type"] == "error", r.text
    assert _chat(raw_gateway, "ok").status_code == 200
