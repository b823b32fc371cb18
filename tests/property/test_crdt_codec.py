"""Codec round trips, and fuzzing: garbage in gives CodecError, never anything else."""

from __future__ import annotations

import contextlib
import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smg.crdt import LWWMap, PrefixSummary, Timestamp, WindowedCounter
from smg.crdt.codec import CodecError, decode, encode
from smg.hashing import chain_hashes


def samples() -> list:
    ts = [Timestamp(i, i % 3, f"r{i % 2}#1") for i in range(1, 9)]
    lww = LWWMap()
    lww.set("a", {"url": "http://w:1", "models": ["m"]}, ts[0])
    lww.set("b", 2.5, ts[1])
    lww.delete("a", ts[2])
    lww.collect(ts[0])
    win = WindowedCounter()
    win.increment("tenant", "a#1", 3, 7)
    win.increment("tenant", "b#1", 4, 1)
    summary = PrefixSummary(budget=100)
    summary.record("m", "w1", chain_hashes([b"a", b"b"]), ts[6])
    return [lww, win, summary]


@pytest.mark.parametrize("crdt", samples(), ids=lambda c: type(c).__name__)
def test_round_trip_keeps_the_digest(crdt) -> None:  # type: ignore[no-untyped-def]
    data = encode(crdt)
    assert data[0] == 1
    again = decode(data)
    assert type(again) is type(crdt) and again.state_digest() == crdt.state_digest()


def test_size_caps_and_versions() -> None:
    big = LWWMap()
    for i in range(200):
        big.set(f"k{i}", "x" * 100, Timestamp(i + 1, 0, "a#1"))
    with pytest.raises(CodecError, match="limit"):
        encode(big, max_bytes=1000)
    data = encode(big)
    with pytest.raises(CodecError, match="limit"):
        decode(data, max_bytes=1000)
    with pytest.raises(CodecError, match="version"):
        decode(b"\x02" + data[1:])
    with pytest.raises(CodecError, match="empty"):
        decode(b"")


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_give_only_codec_errors(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode(data)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=5) | st.binary(max_size=9),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300)
@given(st.sampled_from(["lww", "win", "prefix", "zz"]), msgpack_values)
def test_wrong_shapes_give_only_codec_errors(tag: str, payload: object) -> None:
    data = b"\x01" + msgpack.packb([tag, payload], use_bin_type=True)
    with contextlib.suppress(CodecError):
        decode(data)


@settings(max_examples=200)
@given(st.randoms(use_true_random=False))
def test_mutated_encodings_give_only_codec_errors_or_valid_states(rng: random.Random) -> None:
    data = bytearray(encode(rng.choice(samples())))
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(1, len(data))] = rng.randrange(256)
    with contextlib.suppress(CodecError):
        decode(bytes(data)).state_digest()
