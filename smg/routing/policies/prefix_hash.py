"""Prefix hashing with bounded loads.

The first `--prefix-token-count` tokens of the routing text (untokenised:
four characters per token; for gRPC workers, the prompt's token ids as the
engine gets them) are hashed onto the ring, so requests sharing a
prefix meet on one worker. A worker already above its fair share of the
in-flight load, times `--prefix-hash-load-factor`, is passed over for the
next one on the ring (consistent hashing with bounded loads).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from smg.hashing import hash64
from smg.routing.policies.base import PolicyConfig, RequestInfo, load_of
from smg.routing.policies.hash_ring import RingCache
from smg.workers.registry import Worker


class PrefixHashPolicy:
    name = "prefix_hash"
    needs_text = True
    needs_client_key = False

    def __init__(self, config: PolicyConfig) -> None:
        self._rings = RingCache(config.virtual_nodes)
        self._tokens = config.prefix_token_count
        self._chars = 4 * config.prefix_token_count
        self._factor = config.prefix_hash_load_factor

    def select(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
        if request.tokens is not None:
            head = request.tokens[: self._tokens]
            key = hash64(struct.pack(f"<{len(head)}I", *head))
        else:
            key = hash64(request.text[: self._chars].encode())
        loads = [load_of(w) for w in workers]
        capacity = math.ceil(self._factor * (sum(loads) + 1) / len(workers))
        ring = self._rings.ring(workers)
        first = None
        for worker in ring.walk(key):
            first = first or worker
            if load_of(worker) < capacity:
                return worker
        return first  # type: ignore[return-value]
