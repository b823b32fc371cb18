"""Mesh wire format and sealing: round trips, and garbage only ever gives typed errors."""

from __future__ import annotations

import contextlib
import itertools
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smg.mesh.keyring import Keyring, SealError, open_frame, seal
from smg.mesh.messages import Ack, Alive, Dead, Gossip, MemberState, Nack, Ping, PingReq, PushPull, State, Suspect
from smg.mesh.wire import FrameReader, WireError, decode_message, encode_message, frame_bytes

UPDATES = (Alive("a", 3, "10.0.0.1:7946", {"http": "10.0.0.1:30000"}), Suspect("b", 1, "a"), Dead("c", 2, "c"))
MESSAGES = [
    Ping(1, "a", "10.0.0.1:7946", "b", UPDATES),
    Ack(1, "b", UPDATES[:1]),
    PingReq(2, "a", "10.0.0.1:7946", "c", "10.0.0.3:7946"),
    Nack(2, "d"),
    Gossip("a", UPDATES),
    PushPull(
        "a",
        "10.0.0.1:7946",
        (MemberState("a", "10.0.0.1:7946", 3, State.ALIVE, {}), MemberState("c", "x:1", 2, State.LEFT, {})),
        True,
    ),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message) -> None:  # type: ignore[no-untyped-def]
    assert decode_message(encode_message(message)) == message


def test_sealing_binds_key_and_label() -> None:
    key = os.urandom(32)
    ring = Keyring([key], "prod")
    frame = seal(ring, b"hello")
    assert open_frame(ring, frame) == b"hello"
    with pytest.raises(SealError):
        open_frame(Keyring([key], "staging"), frame)
    with pytest.raises(SealError):
        open_frame(Keyring([os.urandom(32)], "prod"), frame)
    with pytest.raises(SealError):
        open_frame(None, frame)  # an unencrypted node refuses sealed frames
    with pytest.raises(SealError):
        open_frame(ring, seal(None, b"plain"))
    tampered = bytearray(frame)
    tampered[-1] ^= 1
    with pytest.raises(SealError):
        open_frame(ring, bytes(tampered))
    with pytest.raises(ValueError):
        ring.remove(key)  # the primary


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_message(data)


@settings(max_examples=300)
@given(st.randoms(use_true_random=False))
def test_mutated_messages(rng: random.Random) -> None:
    data = bytearray(encode_message(rng.choice(MESSAGES)))
    for _ in range(rng.randint(1, 5)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    with contextlib.suppress(WireError):
        decode_message(bytes(data))


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=600), max_size=12), st.lists(st.integers(1, 700), min_size=1, max_size=40))
def test_frames_come_out_whole_and_in_order_however_the_stream_is_cut(frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame_bytes(f) for f in frames)
    reader, got, position = FrameReader(), [], 0
    for size in itertools.cycle(cuts):  # receives of arbitrary sizes, as TCP hands them over
        if position >= len(stream):
            break
        got += reader.feed(stream[position : position + size])
        position += size
    assert got == frames
    assert not reader.pending


def test_a_frame_beyond_the_limit_is_refused_and_a_partial_one_is_pending() -> None:
    reader = FrameReader(limit=100)
    assert reader.feed(frame_bytes(b"ok") + frame_bytes(b"x" * 10)[:5]) == [b"ok"]
    assert reader.pending
    assert reader.feed(b"x" * 9) == [b"x" * 10]
    assert not reader.pending and not reader.refused
    # the frames before a stranger's length still come out; nothing after it does
    assert reader.feed(frame_bytes(b"a") + frame_bytes(b"y" * 101) + frame_bytes(b"b")) == [b"a"]
    assert reader.refused and not reader.pending
    assert reader.feed(frame_bytes(b"c")) == []
    http = FrameReader()  # an HTTP request to the mesh port: "GET " is 1.2 GB long
    assert http.feed(b"GET / HTTP/1.1\r\n") == [] and http.refused
