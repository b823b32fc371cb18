"""Sticky routing: a routing key stays on the worker it was first given.

The key is the first of `--routing-key-headers` present (default
`X-SMG-Routing-Key`; else the caller's Authorization or X-Forwarded-For). A new
key goes to a worker chosen by `--assignment-mode`: `min_load` (the least
loaded, the default), `min_group` (the one holding fewest keys) or `random`;
a key moves only when its worker is no longer available. Keys unused for
`--max-idle-secs` are forgotten, and at most `max_sticky_keys` are kept
(least recently used first out). Requests without a key go to the
least-loaded worker.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from collections.abc import Sequence

from smg.routing.policies.base import PolicyConfig, RequestInfo, load_of
from smg.workers.registry import Worker


class ManualPolicy:
    name = "manual"
    needs_text = False

    def __init__(self, config: PolicyConfig) -> None:
        self.max_idle = config.max_idle_secs
        self.max_keys = config.max_sticky_keys
        self.mode = config.assignment_mode
        self.rng = random.Random(config.seed)
        self._pins: OrderedDict[str, tuple[str, float]] = OrderedDict()  # key -> (worker id, last used)

    def __len__(self) -> int:
        return len(self._pins)

    def select(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
        self._expire(request.now)
        key = request.routing_key or request.client_key
        if key is None:
            return min(workers, key=load_of)
        pinned = self._pins.get(key)
        if pinned is not None:
            for worker in workers:
                if worker.id == pinned[0]:
                    self._pins[key] = (worker.id, request.now)
                    self._pins.move_to_end(key)
                    return worker
        worker = self._assign(workers)
        self._pins[key] = (worker.id, request.now)
        self._pins.move_to_end(key)
        while len(self._pins) > self.max_keys:
            self._pins.popitem(last=False)
        return worker

    def _assign(self, workers: Sequence[Worker]) -> Worker:
        if self.mode == "random":
            return self.rng.choice(workers)
        if self.mode == "min_group":
            held = Counter(worker_id for worker_id, _ in self._pins.values())
            return min(workers, key=lambda w: (held[w.id], load_of(w)))
        return min(workers, key=load_of)

    def _expire(self, now: float) -> None:
        """Oldest-used first: stop at the first key still in use."""
        pins = self._pins
        while pins:
            key, (_, used) = next(iter(pins.items()))
            if now - used <= self.max_idle:
                return
            del pins[key]
