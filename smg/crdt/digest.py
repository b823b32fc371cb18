"""Order-independent digests of CRDT state: blake2b over canonical msgpack."""

from __future__ import annotations

from hashlib import blake2b
from typing import Any

import msgpack


def digest_of(kind: str, canonical: Any) -> str:
    """`canonical` must already be in a fixed order (sorted keys and entries)."""
    return blake2b(msgpack.packb([kind, canonical], use_bin_type=True), digest_size=16).hexdigest()
