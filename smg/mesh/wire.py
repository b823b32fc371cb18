"""Wire format of mesh messages: msgpack, strictly validated on the way in.

`decode_message` raises `WireError` for anything that is not a well-formed
message, never another exception: a garbage packet is dropped and counted.
"""

from __future__ import annotations

import struct
from typing import Any, cast

import msgpack

from smg.mesh.messages import (
    Ack,
    Alive,
    AppMessage,
    Broadcast,
    Dead,
    Gossip,
    MemberState,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    State,
    Suspect,
    Update,
)

MAX_MESSAGE = 8 * 1024 * 1024
LENGTH = struct.Struct(">I")  # a TCP frame's prefix: the sealed frame's length


class WireError(ValueError):
    """Not a valid mesh message."""


def frame_bytes(sealed: bytes) -> bytes:
    """`sealed` with its length prefix, as written on a TCP stream."""
    return LENGTH.pack(len(sealed)) + sealed


class FrameReader:
    """Splits a TCP stream's bytes into the sealed frames written by `frame_bytes` (sans-IO).

    The stream's reader hands over whatever one receive returned, however many frames (or
    parts of one) it holds: a batch of small messages costs one receive, not two per
    message (a length, then its body), which was most of a meshed gateway's receive work.
    A length beyond `limit` (no smg frame is that long: someone else's protocol) sets
    `refused`; the frames before it still come out, and nothing after it does.
    """

    __slots__ = ("_buffer", "limit", "refused")

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self.limit = limit
        self.refused = False
        self._buffer = bytearray()

    @property
    def pending(self) -> bool:
        """Part of a frame (or of its prefix) has arrived and the rest has not."""
        return bool(self._buffer) and not self.refused

    def feed(self, data: bytes) -> list[bytes]:
        """The frames completed by `data`, in order (none once `refused`)."""
        if self.refused:
            return []
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        start, size = 0, len(buffer)
        while size - start >= LENGTH.size:
            (length,) = LENGTH.unpack_from(buffer, start)
            if length > self.limit:
                self.refused = True
                buffer.clear()
                return frames
            end = start + LENGTH.size + length
            if end > size:
                break
            frames.append(bytes(buffer[start + LENGTH.size : end]))
            start = end
        if start:
            del buffer[:start]
        return frames


def _update_out(u: Update) -> list[Any]:
    if isinstance(u, Broadcast):
        return ["b", u.origin, u.seq, u.data]
    if isinstance(u, Alive):
        return ["a", u.name, u.incarnation, u.address, u.meta]
    if isinstance(u, Suspect):
        return ["s", u.name, u.incarnation, u.by]
    return ["d", u.name, u.incarnation, u.by]


def encode_message(message: Message) -> bytes:
    if isinstance(message, Ping):
        body = [
            "ping",
            message.seq,
            message.source,
            message.source_address,
            message.target,
            [_update_out(u) for u in message.updates],
        ]
    elif isinstance(message, Ack):
        body = ["ack", message.seq, message.source, [_update_out(u) for u in message.updates]]
    elif isinstance(message, PingReq):
        body = ["preq", message.seq, message.source, message.source_address, message.target, message.target_address,
                [_update_out(u) for u in message.updates]]  # fmt: skip
    elif isinstance(message, Nack):
        body = ["nack", message.seq, message.source]
    elif isinstance(message, Gossip):
        body = ["gossip", message.source, [_update_out(u) for u in message.updates]]
    elif isinstance(message, PushPull):
        members = [[m.name, m.address, m.incarnation, m.state.value, m.meta] for m in message.members]
        body = ["pp", message.source, message.source_address, members, message.reply, message.app]
    elif isinstance(message, AppMessage):
        body = ["app", message.source, message.channel, message.payload]
    else:
        raise TypeError(f"not a mesh message: {type(message).__name__}")
    return cast(bytes, msgpack.packb(body, use_bin_type=True))


def _s(v: Any) -> str:
    if not isinstance(v, str) or len(v) > 512:
        raise WireError("expected a short string")
    return v


def _i(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**63:
        raise WireError("expected a non-negative integer")
    return v


def _meta(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise WireError("expected a metadata map")
    return v


def _update_in(raw: Any) -> Update:
    if not isinstance(raw, list) or not raw:
        raise WireError("expected an update")
    kind = raw[0]
    if kind == "a" and len(raw) == 5:
        return Alive(_s(raw[1]), _i(raw[2]), _s(raw[3]), _meta(raw[4]))
    if kind == "s" and len(raw) == 4:
        return Suspect(_s(raw[1]), _i(raw[2]), _s(raw[3]))
    if kind == "d" and len(raw) == 4:
        return Dead(_s(raw[1]), _i(raw[2]), _s(raw[3]))
    if kind == "b" and len(raw) == 4 and isinstance(raw[3], bytes) and len(raw[3]) <= 512:
        return Broadcast(_s(raw[1]), _i(raw[2]), raw[3])
    raise WireError("unknown update")


def _updates(raw: Any) -> tuple[Update, ...]:
    if not isinstance(raw, list) or len(raw) > 4096:
        raise WireError("expected a list of updates")
    return tuple(_update_in(u) for u in raw)


def decode_message(data: bytes) -> Message:
    if len(data) > MAX_MESSAGE:
        raise WireError("message too large")
    try:
        body = msgpack.unpackb(data, raw=False, use_list=True)
    except Exception as exc:  # msgpack raises many types on garbage
        raise WireError(f"undecodable: {type(exc).__name__}") from None
    if not isinstance(body, list) or not body or not isinstance(body[0], str):
        raise WireError("expected a tagged list")
    tag, n = body[0], len(body)
    try:
        if tag == "ping" and n == 6:
            return Ping(_i(body[1]), _s(body[2]), _s(body[3]), _s(body[4]), _updates(body[5]))
        if tag == "ack" and n == 4:
            return Ack(_i(body[1]), _s(body[2]), _updates(body[3]))
        if tag == "preq" and n == 7:
            return PingReq(_i(body[1]), _s(body[2]), _s(body[3]), _s(body[4]), _s(body[5]), _updates(body[6]))
        if tag == "nack" and n == 3:
            return Nack(_i(body[1]), _s(body[2]))
        if tag == "app" and n == 4:
            if not isinstance(body[3], bytes):
                raise WireError("app payload is not bytes")
            return AppMessage(_s(body[1]), _s(body[2]), body[3])
        if tag == "gossip" and n == 3:
            return Gossip(_s(body[1]), _updates(body[2]))
        if tag == "pp" and n == 6:
            if not isinstance(body[3], list) or not isinstance(body[4], bool) or not isinstance(body[5], bytes):
                raise WireError("malformed push-pull")
            members = []
            for m in body[3]:
                if not isinstance(m, list) or len(m) != 5:
                    raise WireError("malformed member state")
                members.append(MemberState(_s(m[0]), _s(m[1]), _i(m[2]), State(m[3]), _meta(m[4])))
            return PushPull(_s(body[1]), _s(body[2]), tuple(members), body[4], body[5])
    except (ValueError, TypeError) as exc:
        raise WireError(str(exc)) from None
    raise WireError(f"unknown message {tag!r}")
