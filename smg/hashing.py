"""Stable hashes shared by the router and the simulated worker.

Never Python's `hash()`: it is salted per process, and every node of a
cluster must compute the same values.
"""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import blake2b


def hash64(data: bytes) -> int:
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


def chain_hashes(blocks: Iterable[bytes]) -> list[bytes]:
    """h_i = blake2b-64(h_{i-1} || block_i): block i's hash names its whole prefix."""
    out: list[bytes] = []
    previous = b""
    for block in blocks:
        previous = blake2b(previous + block, digest_size=8).digest()
        out.append(previous)
    return out
