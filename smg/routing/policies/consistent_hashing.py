"""Consistent hashing on a routing key.

`X-SMG-Target-Worker: <index>` picks the index-th worker of the model (in
registration order) and fails with 503 when out of range or unavailable;
otherwise the key is `X-SMG-Routing-Key`, else the caller's Authorization or
X-Forwarded-For. The same key maps to the same worker while it is
available; when it is not, the ring is walked past it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from smg.hashing import hash64
from smg.routing.policies.base import NoEligibleWorker, PolicyConfig, RequestInfo
from smg.routing.policies.hash_ring import RingCache
from smg.workers.registry import Worker


def target_worker(workers: Sequence[Worker], request: RequestInfo) -> Worker:
    index = request.target_index
    pool = request.pool or workers
    if index is None or not 0 <= index < len(pool):
        raise NoEligibleWorker(f"X-SMG-Target-Worker {index} is out of range (the model has {len(pool)} workers)")
    target = pool[index]
    if target not in workers:
        raise NoEligibleWorker(f"X-SMG-Target-Worker {index} ({target.url}) is not available")
    return target


class ConsistentHashingPolicy:
    name = "consistent_hashing"
    needs_text = False
    needs_client_key = True  # the caller, when no routing key is given

    def __init__(self, config: PolicyConfig) -> None:
        self._rings = RingCache(config.virtual_nodes)
        self._rng = random.Random(config.seed)

    def select(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
        if request.target_index is not None:
            return target_worker(workers, request)
        key = request.routing_key or request.client_key
        if key is None:
            return workers[self._rng.randrange(len(workers))]
        pool = [w for w in request.pool if w in workers] if request.pool else list(workers)
        return next(self._rings.ring(pool).walk(hash64(key.encode())))
