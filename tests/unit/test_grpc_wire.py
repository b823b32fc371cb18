"""gRPC over HTTP/2, sans-IO (`smg.upstream.grpc.wire`), against h2's own server side as the
peer: what a server receives, every way a response can end, flow control both ways, and any
cutting of the bytes or any garbage giving the same answer or a clean UNAVAILABLE."""

from __future__ import annotations

from urllib.parse import quote

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smg.upstream.grpc.wire import STREAM_WINDOW, Closed, GrpcConnection, Messages, NoCapacity

PATH = "/sglang.grpc.scheduler.SglangScheduler/Generate"


def framed(message: bytes, compressed: bool = False) -> bytes:
    return bytes([compressed]) + len(message).to_bytes(4, "big") + message


def pair(max_message_size: int = 1 << 20, **server_settings: int) -> tuple[GrpcConnection, h2.connection.H2Connection]:
    client = GrpcConnection("engine:50051", max_message_size=max_message_size)
    client.initiate()
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    if server_settings:
        server.update_settings({getattr(h2.settings.SettingCodes, k): v for k, v in server_settings.items()})
    server.receive_data(client.data_to_send())
    assert client.receive(server.data_to_send()) == []
    server.receive_data(client.data_to_send())  # the settings acknowledged
    return client, server


def start(client: GrpcConnection, server: h2.connection.H2Connection, message: bytes = b"request") -> tuple[int, list]:  # type: ignore[type-arg]
    stream_id = client.start_call(PATH, message)
    return stream_id, server.receive_data(client.data_to_send())


def answer(
    server: h2.connection.H2Connection, stream_id: int, messages: list[bytes], status: int = 0, details: str = ""
) -> bytes:
    server.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    for message in messages:
        server.send_data(stream_id, framed(message))
    trailers = [(b"grpc-status", str(status).encode())]
    if details:
        trailers.append((b"grpc-message", quote(details).encode()))
    server.send_headers(stream_id, trailers, end_stream=True)
    return server.data_to_send()


def fold(events: list) -> tuple[list[bytes], Closed | None]:  # type: ignore[type-arg]
    messages: list[bytes] = []
    closed = None
    for event in events:
        if isinstance(event, Messages):
            messages += event.messages
        else:
            closed = event
    return messages, closed


def test_the_server_gets_a_grpc_request() -> None:
    client, server = pair()
    stream_id, events = start(client, server, b"\x08\x01")
    request = next(e for e in events if isinstance(e, h2.events.RequestReceived))
    headers = dict(request.headers)
    assert headers[b":method"] == b"POST" and headers[b":path"] == PATH.encode()
    assert headers[b"content-type"] == b"application/grpc" and headers[b"te"] == b"trailers"
    assert headers[b":authority"] == b"engine:50051"
    data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert data == framed(b"\x08\x01")
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)
    assert stream_id == 1 and client.open_calls == 1


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.binary(max_size=300), max_size=12),
    st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=40),
)
def test_any_cutting_of_the_response_gives_the_same_messages(messages: list[bytes], cuts: list[int]) -> None:
    client, server = pair()
    stream_id, _ = start(client, server)
    data = answer(server, stream_id, messages)
    events: list = []  # type: ignore[type-arg]
    position, i = 0, 0
    while position < len(data):
        size = cuts[i % len(cuts)]
        events += client.receive(data[position : position + size])
        position, i = position + size, i + 1
    got, closed = fold(events)
    assert got == messages
    assert closed == Closed(stream_id, "OK", "")
    assert client.open_calls == 0


def test_a_status_with_a_percent_encoded_message() -> None:
    client, server = pair()
    stream_id, _ = start(client, server)
    got, closed = fold(client.receive(answer(server, stream_id, [b"x"], status=8, details="busy: 100% — try later")))
    assert got == [b"x"]
    assert closed == Closed(stream_id, "RESOURCE_EXHAUSTED", "busy: 100% — try later")


def test_trailers_only_and_unknown_codes() -> None:
    client, server = pair()
    stream_id, _ = start(client, server)
    server.send_headers(
        stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"12")], end_stream=True
    )
    assert client.receive(server.data_to_send()) == [Closed(stream_id, "UNIMPLEMENTED", "")]
    stream_id, _ = start(client, server)
    assert fold(client.receive(answer(server, stream_id, [], status=99)))[1] == Closed(stream_id, "UNKNOWN", "")


@pytest.mark.parametrize(
    ("status", "content_type", "expected"),
    [(b"503", b"application/grpc", "UNAVAILABLE"), (b"404", b"text/html", "UNIMPLEMENTED"), (b"200", b"text/html", "UNKNOWN")],
)
def test_not_a_grpc_answer(status: bytes, content_type: bytes, expected: str) -> None:
    client, server = pair()
    stream_id, _ = start(client, server)
    server.send_headers(stream_id, [(b":status", status), (b"content-type", content_type)])
    (closed,) = client.receive(server.data_to_send())
    assert isinstance(closed, Closed) and closed.status == expected
    resets = server.receive_data(client.data_to_send())
    assert any(isinstance(e, h2.events.StreamReset) for e in resets)


def test_compressed_and_oversized_messages_end_the_call() -> None:
    client, server = pair(max_message_size=100)
    stream_id, _ = start(client, server)
    server.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    server.send_data(stream_id, framed(b"zz", compressed=True))
    assert fold(client.receive(server.data_to_send()))[1].status == "INTERNAL"  # type: ignore[union-attr]
    stream_id, _ = start(client, server)
    server.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    server.send_data(stream_id, framed(b"y" * 101))
    assert fold(client.receive(server.data_to_send()))[1].status == "RESOURCE_EXHAUSTED"  # type: ignore[union-attr]
    assert client.open_calls == 0


def test_ending_inside_a_message_or_without_a_status() -> None:
    client, server = pair()
    stream_id, _ = start(client, server)
    server.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    server.send_data(stream_id, framed(b"abcdef")[:7], end_stream=True)
    assert fold(client.receive(server.data_to_send()))[1] == Closed(
        stream_id, "INTERNAL", "the engine's stream ended inside a message"
    )
    stream_id, _ = start(client, server)
    server.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    server.send_data(stream_id, framed(b"ok"), end_stream=True)
    got, closed = fold(client.receive(server.data_to_send()))
    assert got == [b"ok"] and closed is not None and closed.status == "INTERNAL"


def test_resets_and_goaway() -> None:
    client, server = pair()
    first, _ = start(client, server)
    server.reset_stream(first, h2.errors.ErrorCodes.CANCEL)
    assert fold(client.receive(server.data_to_send()))[1].status == "CANCELLED"  # type: ignore[union-attr]
    refused, _ = start(client, server)
    server.reset_stream(refused, h2.errors.ErrorCodes.REFUSED_STREAM)
    assert fold(client.receive(server.data_to_send()))[1].status == "UNAVAILABLE"  # type: ignore[union-attr]
    kept, _ = start(client, server)
    dropped, _ = start(client, server)
    kept_answer = answer(server, kept, [b"done"])  # arrives after the GOAWAY below (h2's server sends nothing after it)
    server.close_connection(last_stream_id=kept)
    events = client.receive(server.data_to_send())
    assert events == [Closed(dropped, "UNAVAILABLE", "the engine is closing the connection (GOAWAY)")]
    assert not client.has_capacity()
    with pytest.raises(NoCapacity):
        client.start_call(PATH, b"")
    # a graceful GOAWAY: the streams the server kept are still answered
    assert fold(client.receive(kept_answer)) == ([b"done"], Closed(kept, "OK", ""))


def test_the_servers_stream_limit_is_respected() -> None:
    client, server = pair(MAX_CONCURRENT_STREAMS=1)
    stream_id, _ = start(client, server)
    assert not client.has_capacity()
    with pytest.raises(NoCapacity):
        client.start_call(PATH, b"")
    client.receive(answer(server, stream_id, []))
    assert client.has_capacity()


def test_a_long_request_waits_for_the_servers_window() -> None:
    client, server = pair()
    body = bytes(range(256)) * 1000  # 256,000 bytes: past the server's default 65,535-byte window
    stream_id = client.start_call(PATH, body)
    received = b""
    for _ in range(50):
        for event in server.receive_data(client.data_to_send()):
            if isinstance(event, h2.events.DataReceived):
                received += event.data
                server.acknowledge_received_data(event.flow_controlled_length, stream_id)
        client.receive(server.data_to_send())
        if len(received) == len(framed(body)):
            break
    assert received == framed(body)


def test_a_reader_that_does_not_consume_holds_the_server_at_the_window() -> None:
    client, server = pair()
    stream_id, _ = start(client, server)
    server.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    chunk = framed(b"z" * 16000)
    sent = 0
    while server.local_flow_control_window(stream_id) >= len(chunk):
        server.send_data(stream_id, chunk)
        sent += len(chunk)
    assert STREAM_WINDOW - len(chunk) < sent <= STREAM_WINDOW
    events = client.receive(server.data_to_send())
    flow = sum(e.flow for e in events if isinstance(e, Messages))
    assert client.data_to_send() == b""  # nothing given back yet
    client.consumed(stream_id, flow)
    updates = server.receive_data(client.data_to_send())
    assert any(isinstance(e, h2.events.WindowUpdated) and e.stream_id == stream_id for e in updates)
    assert server.local_flow_control_window(stream_id) >= STREAM_WINDOW // 2


def test_cancel_resets_the_stream_and_late_data_is_ignored() -> None:
    client, server = pair()
    stream_id, _ = start(client, server)
    server.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    server.send_data(stream_id, framed(b"late"))
    late = server.data_to_send()
    client.finish(stream_id)
    events = server.receive_data(client.data_to_send())
    assert any(isinstance(e, h2.events.StreamReset) and e.error_code == h2.errors.ErrorCodes.CANCEL for e in events)
    assert client.receive(late) == []
    assert client.open_calls == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=400))
def test_garbage_from_the_server_ends_the_calls_cleanly(noise: bytes) -> None:
    client, server = pair()
    stream_id, _ = start(client, server)
    events = client.receive(noise)
    for event in events:
        assert isinstance(event, (Messages, Closed))
    if client.broken:
        assert client.open_calls == 0 and not client.has_capacity()
        assert any(isinstance(e, Closed) and e.status == "UNAVAILABLE" for e in events)
    else:  # a partial frame waits: the socket closing then ends the call
        assert all(c == Closed(stream_id, "UNAVAILABLE", "closed") for c in client.lost("closed"))


def window_restored(client: GrpcConnection) -> bool:
    """Every byte the server sent was given back to the connection's window (sent, or pending
    in h2's batching of WINDOW_UPDATEs)."""
    manager = client._h2._inbound_flow_control_window_manager
    return manager.current_window_size + manager._bytes_processed == manager.max_window_size


def test_every_ending_gives_the_bytes_back_exactly_once() -> None:
    """Calls read to the end with their last batch unconsumed, left early, failed by a bad frame,
    reset by the server: after `finish` the connection's window holds every byte again."""
    client, server = pair(max_message_size=50)
    for _ in range(5):  # finished normally; the reader stopped after the last batch (as the gateway does)
        stream_id, _ = start(client, server)
        events = client.receive(answer(server, stream_id, [b"a" * 40, b"b" * 30]))
        consumed = [e for e in events if isinstance(e, Messages)]
        client.consumed(stream_id, consumed[0].flow // 2)  # part of it
        client.finish(stream_id)
    left, _ = start(client, server)  # left early with messages unread
    server.send_headers(left, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    server.send_data(left, framed(b"x" * 20) + framed(b"y" * 20)[:10], pad_length=7)
    client.receive(server.data_to_send())
    client.finish(left)
    failed, _ = start(client, server)  # a message over the limit after a good one
    server.send_headers(failed, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    server.send_data(failed, framed(b"ok") + framed(b"z" * 51))
    events = client.receive(server.data_to_send())
    flow = sum(e.flow for e in events if isinstance(e, Messages))
    client.consumed(failed, flow)  # the reader consumes after the failure: no double count
    client.finish(failed)
    reset, _ = start(client, server)
    server.send_headers(reset, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    server.send_data(reset, framed(b"q" * 10) + b"\x00\x00")
    server.reset_stream(reset, h2.errors.ErrorCodes.INTERNAL_ERROR)
    client.receive(server.data_to_send())
    client.finish(reset)
    assert window_restored(client)
    assert client._closed_unacked == {}


def test_a_message_larger_than_the_stream_window_still_arrives() -> None:
    client, server = pair(max_message_size=4 * STREAM_WINDOW)
    stream_id, _ = start(client, server)
    big = bytes(range(256)) * (2 * STREAM_WINDOW // 256)
    server.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    pending = framed(big)
    got: list[bytes] = []
    for _ in range(1000):
        while pending:
            room = min(server.local_flow_control_window(stream_id), server.max_outbound_frame_size)
            if room <= 0:
                break
            server.send_data(stream_id, pending[:room])
            pending = pending[room:]
        for event in client.receive(server.data_to_send()):
            if isinstance(event, Messages):
                got += event.messages
        server.receive_data(client.data_to_send())
        if got:
            break
    assert got == [big]


def test_a_malformed_goaway_ends_the_connection_and_nothing_after_it_passes() -> None:
    client, server = pair()
    stream_id, _ = start(client, server)
    goaway = (3).to_bytes(3, "big") + bytes([7, 0]) + (0).to_bytes(4, "big") + b"abc"
    events = client.receive(goaway + answer(server, stream_id, [b"never"]))
    assert [(e.stream_id, e.status) for e in events] == [(stream_id, "UNAVAILABLE")]  # never its answer
    assert client.broken
