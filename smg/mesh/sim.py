"""A deterministic simulated network for many SWIM cores, on a simulated clock.

Seeded loss, delay with jitter, duplication, partitions (two-way or one-way)
and paused nodes (a stalled event loop: its packets wait until it resumes).
Unreliable packets (UDP) suffer loss; reliable ones (push-pull over TCP) do
not, but a partition stops both. Time jumps from event to event, so minutes
of protocol run in well under a second for tens of nodes.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from smg.mesh.messages import Message, State
from smg.mesh.swim import MemberEvent, Send, Swim, SwimConfig


@dataclass
class SimNode:
    swim: Swim
    alive: bool = True
    paused: bool = False
    held: list[tuple[Message, bool]] = field(default_factory=list)
    events: list[tuple[float, MemberEvent]] = field(default_factory=list)


class SimNetwork:
    def __init__(
        self,
        seed: int = 0,
        *,
        config: SwimConfig | None = None,
        loss: float = 0.0,
        delay: float = 0.002,
        jitter: float = 0.003,
        duplicate: float = 0.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.config = config or SwimConfig()
        self.loss = loss
        self.delay = delay
        self.jitter = jitter
        self.duplicate = duplicate
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}  # address -> node
        self.blocked: set[tuple[str, str]] = set()  # (from, to) pairs that drop everything
        self._queue: list[tuple[float, int, str, Message, bool]] = []
        self._timers: list[tuple[float, int, str]] = []
        self._order = itertools.count()
        self.sent = 0
        self.bytes_estimate = 0

    # -- cluster management ----------------------------------------------------------

    def add(self, name: str, seeds: list[str] | None = None, incarnation: int = 0) -> str:
        index = len(self.nodes)
        address = f"10.0.{index // 250}.{index % 250}:7946"
        swim = Swim(
            name, address, self.config, random.Random(self.rng.random()), self.now, {"http": f"{name}:30000"}, incarnation
        )
        self.nodes[address] = SimNode(swim)
        if seeds:
            self._dispatch(address, swim.join(seeds, self.now))
        self._schedule(address)
        return address

    def kill(self, address: str) -> None:
        self.nodes[address].alive = False

    def restart(self, address: str, seeds: list[str]) -> None:
        """The same name and address, a fresh process: incarnation 0, no memory."""
        name = self.nodes[address].swim.name
        swim = Swim(name, address, self.config, random.Random(self.rng.random()), self.now, {"http": f"{name}:30000"})
        self.nodes[address] = SimNode(swim)
        self._dispatch(address, swim.join(seeds, self.now))
        self._schedule(address)

    def pause(self, address: str) -> None:
        self.nodes[address].paused = True

    def resume(self, address: str) -> None:
        node = self.nodes[address]
        node.paused = False
        held, node.held = node.held, []
        for message, _ in held:
            self._dispatch(address, node.swim.receive(message, self.now))
        self._dispatch(address, node.swim.tick(self.now))
        self._schedule(address)

    def partition(self, *groups: list[str], one_way: bool = False) -> None:
        """Block traffic between groups (with `one_way`, only from the first group to the others)."""
        for i, a in enumerate(groups):
            for j, b in enumerate(groups):
                if i != j and (not one_way or i == 0):
                    self.blocked.update((x, y) for x in a for y in b)

    def heal(self) -> None:
        self.blocked.clear()

    # -- the event loop ----------------------------------------------------------------

    def _schedule(self, address: str) -> None:
        node = self.nodes[address]
        if node.alive and not node.paused:
            heapq.heappush(self._timers, (node.swim.next_deadline(), next(self._order), address))

    def _dispatch(self, source: str, sends: list[Send]) -> None:
        for send in sends:
            self.sent += 1
            if (source, send.address) in self.blocked:
                continue
            if not send.reliable and self.rng.random() < self.loss:
                continue
            copies = 2 if not send.reliable and self.rng.random() < self.duplicate else 1
            for _ in range(copies):
                at = self.now + self.delay + self.rng.random() * self.jitter
                heapq.heappush(self._queue, (at, next(self._order), send.address, send.message, send.reliable))

    def run_until(self, until: float) -> None:
        while True:
            next_packet = self._queue[0][0] if self._queue else float("inf")
            next_timer = self._timers[0][0] if self._timers else float("inf")
            at = min(next_packet, next_timer)
            if at > until:
                self.now = until
                return
            self.now = max(self.now, at)
            if next_packet <= next_timer:
                _, _, address, message, reliable = heapq.heappop(self._queue)
                node = self.nodes.get(address)
                if node is None or not node.alive:
                    continue
                if node.paused:
                    node.held.append((message, reliable))
                    continue
                self._dispatch(address, node.swim.receive(message, self.now))
                self._collect(node)
                self._schedule(address)
            else:
                deadline, _, address = heapq.heappop(self._timers)
                node = self.nodes[address]
                if not node.alive or node.paused or node.swim.next_deadline() > deadline + 1e-9:
                    continue  # stale: rescheduled since
                self._dispatch(address, node.swim.tick(self.now))
                self._collect(node)
                self._schedule(address)

    def _collect(self, node: SimNode) -> None:
        for event in node.swim.pop_events():
            node.events.append((self.now, event))

    # -- observations ------------------------------------------------------------------

    def view(self, observer: str, name: str) -> State | None:
        return self.nodes[observer].swim.state_of(name)

    def all_see(self, name: str, state: State, observers: list[str] | None = None) -> bool:
        addresses = observers or [a for a, n in self.nodes.items() if n.alive and n.swim.name != name]
        return all(self.nodes[a].swim.state_of(name) is state for a in addresses)

    def run_until_true(self, predicate, limit: float, step: float = 0.05) -> float | None:  # type: ignore[no-untyped-def]
        """Advance until `predicate()` holds; returns the time it took, or None at `limit`."""
        started = self.now
        while self.now - started < limit:
            if predicate():
                return self.now - started
            self.run_until(self.now + step)
        return self.now - started if predicate() else None
