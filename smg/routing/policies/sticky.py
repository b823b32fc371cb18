"""Sticky sessions: a routing key stays on the worker it was first given, on any policy.

`StickyPolicy` wraps a policy. A request with a key goes to the worker the key is pinned to
while that worker can take it; a new key (or one whose worker is gone or unhealthy) is
assigned by the assignment mode and pinned: `delegate` asks the wrapped policy (so a new
conversation still lands where `cache_aware` finds its prefix), `min_load` takes the least
loaded worker, `min_group` the one holding the fewest keys, `random` any. A request without a
key is the wrapped policy's. The `manual` policy is this wrapper around least-load.

A pinned worker that is healthy but cannot take this one request (its breaker is open, it is
overloaded, or this request already failed on it) gets a detour: the request goes elsewhere
and the pin stays, so the conversation returns to its cached prefix once the worker recovers.
A pin moves only when its worker left the pool or is unhealthy.

The pins live in a `PinTable`: `LocalPins` here (one gateway, least-recently-used first out,
keys idle for `--max-idle-secs` forgotten); with `--ha-mesh` the cluster swaps in a replicated
table, so a key pinned through one gateway holds on every gateway.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

from smg.routing.policies.base import Policy, PolicyConfig, RequestInfo, load_of
from smg.workers.registry import Worker

MAX_KEY_CHARS = 128  # longer keys are pinned by their digest: a pin's size stays bounded


def pin_key(value: str) -> str:
    """The key a pin is stored under: the value itself when short, else a digest of it (so a
    client sending a 100 kB header costs the pin table, and the mesh, 32 bytes)."""
    if len(value) <= MAX_KEY_CHARS:
        return value
    return "#" + hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def credential_key(authorization: bytes) -> str:
    """A caller's key for routing, from its Authorization header: a digest, so that pins (which
    the cluster replicates to every gateway) and hash rings never hold a credential."""
    return "cred:" + hashlib.blake2b(authorization.strip(), digest_size=16, person=b"smg-client-key").hexdigest()


class PinTable(Protocol):
    """Routing key -> worker id, with idle expiry; `now` is the caller's monotonic clock."""

    max_keys: int  # pins kept at most (least recently used first out)

    def get(self, key: str, now: float) -> str | None:
        """The worker `key` is pinned to, unless it was idle too long."""
        ...

    def put(self, key: str, worker_id: str, now: float) -> None:
        """Pin `key` to `worker_id` (again), as used at `now`."""
        ...

    def held(self) -> Counter[str]:
        """How many keys each worker holds (for `min_group`)."""
        ...

    def __len__(self) -> int: ...


class LocalPins:
    """One gateway's pins, least recently used first: expiry stops at the first key in use."""

    def __init__(self, max_idle: float, max_keys: int) -> None:
        self.max_idle = max_idle
        self.max_keys = max_keys
        self._pins: OrderedDict[str, tuple[str, float]] = OrderedDict()  # key -> (worker id, last used)
        self._held: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._pins)

    def get(self, key: str, now: float) -> str | None:
        self._expire(now)
        found = self._pins.get(key)
        return None if found is None else found[0]

    def put(self, key: str, worker_id: str, now: float) -> None:
        old = self._pins.get(key)
        if old is not None:
            self._held[old[0]] -= 1
        self._pins[key] = (worker_id, now)
        self._pins.move_to_end(key)
        self._held[worker_id] += 1
        while len(self._pins) > self.max_keys:
            self._drop_oldest()

    def held(self) -> Counter[str]:
        return +self._held  # a copy without the zero counts

    def items(self) -> list[tuple[str, str, float]]:
        """(key, worker id, last used), oldest use first: what a replicated table starts from."""
        return [(key, worker_id, used) for key, (worker_id, used) in self._pins.items()]

    def _drop_oldest(self) -> None:
        _, (worker_id, _) = self._pins.popitem(last=False)
        self._held[worker_id] -= 1

    def _expire(self, now: float) -> None:
        pins = self._pins
        while pins:
            _, (_, used) = next(iter(pins.items()))
            if now - used <= self.max_idle:
                return
            self._drop_oldest()


def header_or_lineage(request: RequestInfo) -> str | None:
    """The override's key: a routing-key header, else the conversation lineage (the first
    response of a `previous_response_id` chain, or the `conversation`)."""
    return request.routing_key or request.lineage_key


class StickyPolicy:
    """Wraps `inner`: pinned keys to their worker, new keys assigned by `mode` and pinned."""

    needs_text: bool
    needs_client_key: bool

    def __init__(
        self,
        inner: Policy,
        pins: PinTable,
        mode: str,
        seed: int | None = None,
        key_of: Callable[[RequestInfo], str | None] = header_or_lineage,
        keys_by_client: bool = False,
    ) -> None:
        self.inner = inner
        self.pins: PinTable = pins  # the cluster may swap in a replicated table
        self.mode = mode
        self.key_of = key_of
        self.name = inner.name
        self.needs_text = inner.needs_text
        self.needs_client_key = keys_by_client or inner.needs_client_key
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.pins)

    def select(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
        found = self.key_of(request)
        if found is None:
            return self.inner.select(workers, request)
        key = pin_key(found)
        now = request.now
        pinned = self.pins.get(key, now)
        if pinned is not None:
            for worker in workers:
                if worker.id == pinned:
                    self.pins.put(key, pinned, now)
                    return worker
            if any(w.id == pinned and w.is_routable for w in request.pool):
                return self._assign(workers, request)  # a detour for this request: the pin stays
        worker = self._assign(workers, request)
        self.pins.put(key, worker.id, now)
        return worker

    def _assign(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
        if self.mode == "delegate":
            return self.inner.select(workers, request)
        if self.mode == "random":
            return workers[self._rng.randrange(len(workers))]
        if self.mode == "min_group":
            held = self.pins.held()
            return min(workers, key=lambda w: (held[w.id], load_of(w)))
        return min(workers, key=load_of)


def sticky(inner: Policy, config: PolicyConfig, mode: str) -> StickyPolicy:
    """`inner` made sticky with this gateway's own pins (the cluster may replace them)."""
    return StickyPolicy(inner, LocalPins(config.max_idle_secs, config.max_sticky_keys), mode, config.seed)
