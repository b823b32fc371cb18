"""gRPC calls over one HTTP/2 connection, sans-IO: the data path's transport to an engine.

Why not grpcio here: grpcio's asyncio API needs its own event loop, so every streamed message
crosses two threads (grpcio's completion-queue poller, then the loop thread bridged to trio);
`bench/grpc_bridge.py` measured that at three times the CPU per message of this module driven
from trio sockets (no thread at all) with one stream, 1.4 times with sixteen. grpcio stays for everything that is not a Generate stream
(discovery, health, loads, Abort, GetTokenizer, Embed): there a call's cost does not matter.

HTTP/2 itself is the `h2` library's (framing, HPACK, flow control, SETTINGS, PING); this module
adds gRPC's rules on top, as the gRPC-over-HTTP/2 protocol document states them:

- a request is HEADERS (`:method POST`, `:path /service/Method`, `content-type
  application/grpc`, `te trailers`) then one length-prefixed message (a flag byte, 0 for
  uncompressed, and a 4-byte big-endian length), sent as the peer's flow-control windows allow;
- a response is HEADERS (`:status 200`, `content-type application/grpc...`), length-prefixed
  messages in DATA frames cut anywhere, then trailers with `grpc-status` and a percent-encoded
  `grpc-message`; or trailers only (one HEADERS that ends the stream);
- anything else ends the call with the status the document names: a non-200 `:status` maps to
  its gRPC status, a compressed message (smg never offers an encoding) or a stream that ends
  without trailers is INTERNAL, trailers without a known `grpc-status` UNKNOWN, a message over `max_message_size` is RESOURCE_EXHAUSTED (and the
  stream is reset), a reset stream is CANCELLED (or UNAVAILABLE when refused: never started),
  GOAWAY ends the streams the server will not process with UNAVAILABLE (and lets it finish the
  others: `GoawayFilter`), and a connection-level protocol error ends every call with
  UNAVAILABLE.

The bytes of whole messages are acknowledged to the flow control only when the caller says it
consumed them (`consumed`), so a slow reader holds its stream back at the window instead of
filling memory; the caller's `finish` gives back whatever its reader still held when it left.

The shell (`smg.upstream.grpc.channel`) feeds `receive` with the socket's bytes and writes
`data_to_send`; everything here is a plain object and a clock-free state machine.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

STATUS_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
# the gRPC-over-HTTP/2 document's mapping of an HTTP status without a gRPC status
HTTP_TO_STATUS = {400: "INTERNAL", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "UNIMPLEMENTED", 429: "UNAVAILABLE"}
HTTP_TO_STATUS |= {502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "UNAVAILABLE"}
STREAM_WINDOW = 1 << 20  # bytes a server may send on one stream before its reader consumed them
CONNECTION_WINDOW = (1 << 31) - 1  # the most HTTP/2 allows: slow readers must not stall the other calls
PREFIX = 5


@dataclass(frozen=True, slots=True)
class Messages:
    """Whole messages that arrived on a stream (their bytes, undecoded), and the flow-controlled
    bytes they took, for `consumed`."""

    stream_id: int
    messages: list[bytes]
    flow: int


@dataclass(frozen=True, slots=True)
class Closed:
    """The call ended: `status` "OK" or a gRPC status name, `details` the server's message."""

    stream_id: int
    status: str
    details: str = ""


CallEvent = Messages | Closed


class NoCapacity(Exception):
    """The connection takes no new call (at the server's stream limit, closing, or gone)."""


@dataclass(slots=True)
class _Call:
    body: bytes  # request bytes not yet sent (flow control may hold them)
    buffer: bytearray = field(default_factory=bytearray)  # a message cut across frames
    headers_ok: bool = False
    status: str | None = None  # from trailers (or trailers-only headers)
    details: str = ""
    held: int = 0  # bytes of whole messages not yet handed out in Messages (the rest is released at once)
    unacked: int = 0  # bytes handed to the reader in Messages and not yet `consumed`


class GrpcConnection:
    """One HTTP/2 client connection carrying gRPC calls."""

    def __init__(self, authority: str, *, max_message_size: int) -> None:
        self.authority = authority.encode()
        self.max_message_size = max_message_size
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self._h2 = h2.connection.H2Connection(config)
        self._calls: dict[int, _Call] = {}
        self._out = bytearray()  # bytes for the socket, collected from h2 after every operation
        self._goaways = GoawayFilter()
        self._sending: set[int] = set()  # calls whose request is not all sent (flow control): each read tries again
        self._closed_unacked: dict[int, int] = {}  # a closed call's bytes its reader still holds, until `finish`
        self.accepting = True  # False after GOAWAY or a protocol error: no new call
        self.broken = False  # the connection is unusable: every call was closed

    def initiate(self) -> None:
        """The connection preface and our settings (then `data_to_send`)."""
        h2c = self._h2
        h2c.initiate_connection()
        h2c.update_settings(
            {
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 64 * 1024,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            }
        )
        h2c.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._collect()

    @property
    def open_calls(self) -> int:
        return len(self._calls)

    def has_capacity(self) -> bool:
        if not self.accepting:
            return False
        return self._h2.open_outbound_streams < self._h2.remote_settings.max_concurrent_streams

    def start_call(self, path: str, message: bytes) -> int:
        """Open a call of `path` (`/package.Service/Method`) with one request message; returns
        its stream id. Raises NoCapacity when the connection cannot take it."""
        if not self.has_capacity():
            raise NoCapacity("the connection takes no new call")
        h2c = self._h2
        try:
            stream_id = h2c.get_next_available_stream_id()
        except h2.exceptions.ProtocolError as exc:  # every stream id used: this connection is done
            self.accepting = False
            raise NoCapacity(str(exc)) from None
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", self.authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
        try:
            h2c.send_headers(stream_id, headers)
        except h2.exceptions.ProtocolError as exc:  # at the stream limit, or out of stream ids: a new connection
            self.accepting = False
            raise NoCapacity(str(exc)) from None
        self._calls[stream_id] = _Call(body=b"\x00" + len(message).to_bytes(4, "big") + message)
        self._sending.add(stream_id)
        self._send_bodies()
        self._collect()
        return stream_id

    def finish(self, stream_id: int) -> None:
        """The caller is done with the call (read to its end, or left early): what its reader
        still held goes back to the windows, and a stream still open is reset (CANCEL)."""
        call = self._calls.pop(stream_id, None)
        if call is None:
            self._release(stream_id, self._closed_unacked.pop(stream_id, 0))
        elif not self.broken:
            self._release(stream_id, call.unacked + call.held)
            self._reset(stream_id)
        self._collect()

    def consumed(self, stream_id: int, flow: int) -> None:
        """The reader took `flow` bytes of the stream's messages: let the server send more."""
        if flow <= 0 or self.broken:
            return
        call = self._calls.get(stream_id)
        if call is not None:
            flow = min(flow, call.unacked)
            call.unacked -= flow
        else:
            left = self._closed_unacked.get(stream_id, 0)
            flow = min(flow, left)
            if left - flow:
                self._closed_unacked[stream_id] = left - flow
            else:
                self._closed_unacked.pop(stream_id, None)
        self._release(stream_id, flow)
        self._collect()

    def _release(self, stream_id: int, flow: int) -> None:
        """Give `flow` received bytes back to the windows (h2 sends WINDOW_UPDATE once enough
        are back; for a closed stream, only the connection's)."""
        if flow > 0:
            with contextlib.suppress(h2.exceptions.ProtocolError):  # the connection is closing: nothing to give back
                self._h2.acknowledge_received_data(flow, stream_id)

    def _reset(self, stream_id: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):  # it ended meanwhile
            self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)

    @property
    def wants_write(self) -> bool:
        return bool(self._out)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _collect(self) -> None:
        self._out += self._h2.data_to_send()

    def receive(self, data: bytes) -> list[CallEvent]:
        """Feed bytes from the socket; the calls' events, in order."""
        if self.broken:
            return []
        data, goaways = self._goaways.feed(data)
        out: list[CallEvent] = []
        try:
            h2_events = self._h2.receive_data(data) if data else []
        except h2.exceptions.ProtocolError as exc:
            return self.lost(f"HTTP/2 protocol error from the engine: {exc}")
        for event in h2_events:
            self._event(event, out)
        for last_stream_id, error_code in goaways:
            self._goaway(last_stream_id, error_code, out)
        self._send_bodies()
        self._collect()
        return out

    def _goaway(self, last_stream_id: int, error_code: int, out: list[CallEvent]) -> None:
        """The server is going away: no new call; the streams past `last_stream_id` were never
        processed (safe to try elsewhere); the others it finishes, unless it went away on an error."""
        self.accepting = False
        for stream_id in [s for s in self._calls if s > last_stream_id]:
            del self._calls[stream_id]
            out.append(Closed(stream_id, "UNAVAILABLE", "the engine is closing the connection (GOAWAY)"))
        if error_code != h2.errors.ErrorCodes.NO_ERROR:
            out.extend(self.lost(f"the engine closed the connection ({_code_name(error_code)})"))

    def lost(self, why: str) -> list[CallEvent]:
        """The connection is gone (closed, reset, unreadable): every call ends UNAVAILABLE."""
        self.accepting = False
        self.broken = True
        self._closed_unacked.clear()
        calls, self._calls = self._calls, {}
        return [Closed(stream_id, "UNAVAILABLE", why) for stream_id in calls]

    # -- events ---------------------------------------------------------------

    def _event(self, event: h2.events.Event, out: list[CallEvent]) -> None:
        if isinstance(event, h2.events.DataReceived):
            self._data(event, out)
        elif isinstance(event, h2.events.ResponseReceived):
            self._response_headers(event.stream_id, event.headers or [], out)
        elif isinstance(event, h2.events.TrailersReceived):
            call = self._calls.get(event.stream_id)
            if call is not None:
                call.status, call.details = _grpc_status(event.headers or [])
        elif isinstance(event, h2.events.StreamEnded):
            self._ended(event.stream_id, out)
        elif isinstance(event, h2.events.StreamReset) and self._close(event.stream_id) is not None:
            refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
            status = "UNAVAILABLE" if refused else "CANCELLED"
            out.append(Closed(event.stream_id, status, f"the engine reset the stream ({_code_name(event.error_code)})"))

    def _response_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], out: list[CallEvent]) -> None:
        call = self._calls.get(stream_id)
        if call is None:
            return
        fields = dict(headers)
        http = fields.get(b":status", b"")
        if http != b"200":
            code = int(http) if http.isdigit() else 0
            self._fail(stream_id, HTTP_TO_STATUS.get(code, "UNKNOWN"), f"the engine answered HTTP {http.decode('latin-1')}", out)
            return
        if b"grpc-status" in fields:  # trailers-only: the status is here, the stream ends next
            call.status, call.details = _grpc_status(headers)
        elif not fields.get(b"content-type", b"").startswith(b"application/grpc"):
            self._fail(stream_id, "UNKNOWN", "the engine did not answer with gRPC (content-type)", out)
            return
        call.headers_ok = True

    def _data(self, event: h2.events.DataReceived, out: list[CallEvent]) -> None:
        """Cut the stream's bytes into messages. Window accounting: the bytes of whole messages
        are held until their reader consumed them (a slow reader holds its stream back); padding
        and the bytes of a message still incomplete are released at once, so a message larger
        than the stream window still arrives (the buffer is bounded by `max_message_size`)."""
        stream_id = event.stream_id
        flow = event.flow_controlled_length or 0
        call = self._calls.get(stream_id)
        if call is None:  # a finished call's late data: give the window back
            self._release(stream_id, flow)
            return
        data = event.data or b""
        buffer = call.buffer
        released_before = len(buffer)  # a partial message's bytes: released when they came
        buffer += data
        messages: list[bytes] = []
        start = 0
        while len(buffer) - start >= PREFIX:
            if buffer[start]:
                self._release(stream_id, flow)
                self._fail(stream_id, "INTERNAL", "the engine sent a compressed message without an agreed encoding", out)
                return
            length = int.from_bytes(buffer[start + 1 : start + PREFIX], "big")
            if length > self.max_message_size:
                self._release(stream_id, flow)
                self._fail(
                    stream_id,
                    "RESOURCE_EXHAUSTED",
                    f"the engine's message of {length} bytes is over the limit of {self.max_message_size}",
                    out,
                )
                return
            end = start + PREFIX + length
            if len(buffer) < end:
                break
            messages.append(bytes(buffer[start + PREFIX : end]))
            start = end
        if start:
            del buffer[:start]
        whole = max(0, start - released_before)  # this frame's bytes that ended up in whole messages
        self._release(stream_id, flow - whole)
        call.held += whole
        if messages:
            out.append(Messages(stream_id, messages, call.held))
            call.unacked += call.held
            call.held = 0

    def _close(self, stream_id: int) -> _Call | None:
        """Forget an ended call; its reader's bytes stay outstanding until `finish`."""
        call = self._calls.pop(stream_id, None)
        if call is not None:
            self._release(stream_id, call.held)
            if call.unacked:
                self._closed_unacked[stream_id] = call.unacked
            if call.body:  # the server answered before taking the whole request: end our side too
                self._reset(stream_id)
        return call

    def _ended(self, stream_id: int, out: list[CallEvent]) -> None:
        call = self._close(stream_id)
        if call is None:
            return
        if call.buffer:
            out.append(Closed(stream_id, "INTERNAL", "the engine's stream ended inside a message"))
        elif call.status is None:
            out.append(
                Closed(stream_id, "INTERNAL" if call.headers_ok else "UNKNOWN", "the engine's stream ended without a grpc-status")
            )
        else:
            out.append(Closed(stream_id, call.status, call.details))

    def _fail(self, stream_id: int, status: str, details: str, out: list[CallEvent]) -> None:
        """End a call on our side (a bad answer): reset its stream."""
        if self._close(stream_id) is not None:
            self._reset(stream_id)
        out.append(Closed(stream_id, status, details))

    def _send_bodies(self) -> None:
        """Send what the windows allow of the requests still waiting (a long prompt may need
        several window updates from the server)."""
        if not self._sending:  # the usual case on every read: each request went out whole
            return
        h2c = self._h2
        for stream_id in list(self._sending):
            call = self._calls.get(stream_id)
            if call is None:  # ended meanwhile
                self._sending.discard(stream_id)
                continue
            while call.body:
                try:
                    room = min(h2c.local_flow_control_window(stream_id), h2c.max_outbound_frame_size)
                    if room <= 0:
                        break
                    chunk, call.body = call.body[:room], call.body[room:]
                    h2c.send_data(stream_id, chunk, end_stream=not call.body)
                except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                    call.body = b""  # the server ended the stream before taking the request (it answers anyway)
            if not call.body:
                self._sending.discard(stream_id)


class GoawayFilter:
    """Takes GOAWAY frames out of the server's bytes before h2 sees them.

    h2 takes a received GOAWAY for the end of the connection and refuses every frame after it,
    but a server going away gracefully (a gRPC server shutting down with a grace period, or at
    its maximum connection age) still finishes the streams it kept. So the frames are split here
    (a 9-byte header: 24-bit length, type, flags, stream id), GOAWAY (type 7) is read as
    (last stream id, error code), and the rest passes through unchanged."""

    GOAWAY = 7
    MAX_GOAWAY = 1 << 16  # its debug data bounded: a longer one is a protocol error

    def __init__(self) -> None:
        self._head = bytearray()
        self._remaining = 0  # bytes of the current frame's payload still to come
        self._goaway: bytearray | None = None  # the GOAWAY payload being read
        self._dead = False  # after a malformed GOAWAY: the connection is over, nothing passes

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, int]]]:
        """(the bytes for h2, the GOAWAYs read as (last stream id, error code))."""
        if self._dead:
            return b"", []
        out = bytearray()
        goaways: list[tuple[int, int]] = []
        i, size = 0, len(data)
        while i < size:
            if self._remaining == 0 and self._goaway is None:  # at a frame header
                take = data[i : i + 9 - len(self._head)]
                self._head += take
                i += len(take)
                if len(self._head) < 9:
                    break
                length, kind = int.from_bytes(self._head[:3], "big"), self._head[3]
                if kind == self.GOAWAY:
                    if not 8 <= length <= self.MAX_GOAWAY:
                        self._dead = True
                        goaways.append((0, h2.errors.ErrorCodes.PROTOCOL_ERROR))
                        return bytes(out), goaways
                    self._goaway = bytearray()
                else:
                    out += self._head
                self._head.clear()
                self._remaining = length
                if length == 0:
                    self._goaway = None
                continue
            take = data[i : i + self._remaining]
            i += len(take)
            self._remaining -= len(take)
            if self._goaway is None:
                out += take
                continue
            self._goaway += take
            if self._remaining == 0:
                payload, self._goaway = self._goaway, None
                goaways.append((int.from_bytes(payload[:4], "big") & 0x7FFFFFFF, int.from_bytes(payload[4:8], "big")))
        return bytes(out), goaways


def _grpc_status(headers: list[tuple[bytes, bytes]]) -> tuple[str, str]:
    status, details = "UNKNOWN", ""
    for name, value in headers:
        if name == b"grpc-status":
            code = int(value) if value.isdigit() else -1
            status = STATUS_NAMES[code] if 0 <= code < len(STATUS_NAMES) else "UNKNOWN"
        elif name == b"grpc-message":
            details = unquote(value.decode("latin-1"), errors="replace")
    return status, details


def _code_name(code: int | None) -> str:
    try:
        return h2.errors.ErrorCodes(code or 0).name
    except ValueError:
        return f"error {code}"
