"""SWIM membership with the Lifeguard extensions, as a sans-IO state machine.

The core never touches a socket or a clock: the shell (the trio node, or the
simulator) calls `receive(message, now)` for every packet and `tick(now)` at
`next_deadline()`; both return `Send` actions, and membership changes are
queued as `MemberEvent`s (`pop_events()`).

- Probing: one member per protocol period, round-robin over a shuffled list;
  `ping`, then after `probe_timeout` a `ping-req` to `indirect_checks`
  helpers, which answer `ack` or, Lifeguard's addition, `nack`. No ack by the
  end of the period: the member is suspected.
- Suspicion (Lifeguard): the timeout starts at `suspicion_max_mult` x the
  base and shrinks toward the base, 4 x max(1, log10 N) x the probe
  interval, as independent suspicions of the same incarnation arrive. A
  node that hears of a suspicion probes the suspect next, so confirmations
  (or the refutation, piggybacked to the suspect) come within one period.
- Refutation: a node accepts no claim about itself except to refute it by
  bumping its incarnation; a restarted node learns its old incarnation from
  the first push-pull and outbids it.
- Local health (Lifeguard): failed probes, missing nacks and refutations
  raise a score that stretches the probe interval and timeout; successful
  probes lower it.
- Dissemination: updates ride on every packet (and gossip packets to
  `gossip_fanout` members), each retransmitted `retransmit_mult` x
  ceil(log10(N + 1)) times, within a packet budget; the suspicion of a
  member rides first on packets to that member (buddy system).
- Anti-entropy: full-state push-pull (over the reliable channel) every
  `push_pull_interval`, on join (every seed, retried with backoff until one
  answers), and every `reconnect_interval` with a dead-but-not-reaped member
  and a seed, so healed partitions reunite by themselves.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, assert_never

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
from smg.mesh.queue import TransmitQueue, update_size

INF = math.inf


@dataclass(frozen=True)
class SwimConfig:
    probe_interval: float = 0.5
    probe_timeout: float = 0.2
    indirect_checks: int = 3
    gossip_interval: float = 0.2
    gossip_fanout: int = 3
    gossip_to_dead_secs: float = 30.0
    retransmit_mult: int = 4
    suspicion_mult: float = 4.0
    suspicion_max_mult: float = 6.0
    push_pull_interval: float = 30.0
    reconnect_interval: float = 10.0
    reap_after: float = 86_400.0
    max_health: int = 8
    packet_budget: int = 1400
    join_retry_max: float = 5.0


@dataclass(frozen=True, slots=True)
class Send:
    address: str
    message: Message
    reliable: bool = False  # push-pull goes over TCP


@dataclass(frozen=True, slots=True)
class MemberEvent:
    name: str
    state: State
    incarnation: int
    address: str


@dataclass
class Member:
    name: str
    address: str
    incarnation: int
    state: State
    since: float
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Suspicion:
    started: float
    incarnation: int
    confirmations: set[str]
    deadline: float


@dataclass(slots=True)
class _Probe:
    seq: int
    target: str
    started: float
    direct_deadline: float
    end: float
    indirect_sent: bool = False
    acked: bool = False
    nacks_expected: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    """A ping we send for a helper's ping-req: its ack goes back to the requester, or a nack at the deadline."""

    requester: str  # the address of the member that asked
    seq: int  # the requester's sequence number, which our answer carries
    deadline: float


MAX_BROADCAST = 512
RTT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
SEEN_BROADCASTS = 10_000


class Swim:
    def __init__(
        self,
        name: str,
        address: str,
        config: SwimConfig,
        rng: random.Random,
        now: float,
        meta: dict[str, Any] | None = None,
        incarnation: int = 0,
    ) -> None:
        self.name = name
        self.address = address
        self.config = config
        self.rng = rng
        self.members: dict[str, Member] = {name: Member(name, address, incarnation, State.ALIVE, now, dict(meta or {}))}
        self.health = 0
        self.joined = True  # until join() is called: a single-node cluster
        self.seeds: list[str] = []
        self.left = False
        self._seq = 0
        self._events: list[MemberEvent] = []
        self._queue = TransmitQueue()
        self._broadcast_seq = 0
        self._seen_broadcasts: dict[tuple[str, int], None] = {}  # bounded, oldest first
        self._delivered: list[Broadcast] = []
        self._suspicions: dict[str, _Suspicion] = {}
        self._relays: dict[int, _Relay] = {}  # our ping's seq -> the ping-req it answers
        self._probe: _Probe | None = None
        self._probe_order: list[str] = []
        self._confirm_next: str | None = None  # a suspect to probe next (one at a time)
        self._confirmed_last = False
        self._next_probe = now + rng.random() * config.probe_interval
        self._next_gossip = now + config.gossip_interval
        self._next_push_pull = now + config.push_pull_interval * (0.5 + rng.random())
        self._next_reconnect = now + config.reconnect_interval
        self._next_join = INF
        self._join_backoff = 0.5
        self._next_reap = now + 60.0
        self.stats = {
            "suspicions": 0,
            "refutations": 0,
            "false_deaths": 0,
            "push_pulls": 0,
            "probes": 0,
            "failed_probes": 0,
        }
        self.rtt_buckets = [0] * len(RTT_BUCKETS)
        self.rtt_sum = 0.0
        self.rtt_count = 0
        # push-pull hooks: the application's full state rides along, opaque to SWIM
        self.app_state: Callable[[], bytes] | None = None
        self.merge_app_state: Callable[[str, bytes], None] | None = None

    # -- views ------------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self.members[self.name].incarnation

    def pop_events(self) -> list[MemberEvent]:
        events, self._events = self._events, []
        return events

    def state_of(self, name: str) -> State | None:
        member = self.members.get(name)
        return None if member is None else member.state

    def live_count(self) -> int:
        return sum(1 for m in self.members.values() if m.state in (State.ALIVE, State.SUSPECT))

    def next_deadline(self) -> float:
        deadlines = [
            self._next_probe,
            self._next_push_pull,
            self._next_reconnect,
            self._next_join,
            self._next_reap,
        ]
        if self._queue:  # nothing to gossip: no gossip ticks (an idle node sleeps)
            deadlines.append(self._next_gossip)
        if self._probe is not None:
            deadlines.append(self._probe.end)
            if not self._probe.indirect_sent and not self._probe.acked:
                deadlines.append(self._probe.direct_deadline)
        deadlines.extend(s.deadline for s in self._suspicions.values())
        deadlines.extend(r.deadline for r in self._relays.values())
        return min(deadlines)

    # -- operator actions --------------------------------------------------------------

    def join(self, seeds: list[str], now: float) -> list[Send]:
        """Push-pull with every seed; retried with backoff until one answers."""
        self.set_seeds(seeds)
        if not self.seeds:
            return []
        self.joined = False
        self._join_backoff = 0.5
        self._next_join = now + self._join_backoff
        return [self._push_pull(seed, reply=False) for seed in self.seeds]

    def set_seeds(self, seeds: list[str]) -> None:
        """New seed addresses (DNS names resolved again); the next rejoin attempts use them."""
        self.seeds = [s for s in seeds if s != self.address]

    def leave(self, now: float) -> list[Send]:
        """Announce a graceful leave; the shell keeps gossiping briefly, then stops."""
        me = self.members[self.name]
        self.left = True
        update = Dead(self.name, me.incarnation, by=self.name)
        self._enqueue(update)
        targets = self._gossip_targets(self.config.gossip_fanout * 2, now)
        return [Send(m.address, Gossip(self.name, (update,))) for m in targets]

    # -- the clock ----------------------------------------------------------------------

    def tick(self, now: float) -> list[Send]:
        out: list[Send] = []
        cfg = self.config
        probe = self._probe
        if probe is not None:
            if not probe.acked and not probe.indirect_sent and now >= probe.direct_deadline:
                out += self._indirect(probe)
            if now >= probe.end:
                out += self._end_probe(probe, now)
        if self._probe is None and now >= self._next_probe and not self.left:
            out += self._start_probe(now)
        for seq, relay in list(self._relays.items()):
            if now >= relay.deadline:
                del self._relays[seq]
                out.append(Send(relay.requester, Nack(relay.seq, self.name)))
        for name, suspicion in list(self._suspicions.items()):
            if now >= suspicion.deadline:
                del self._suspicions[name]
                member = self.members.get(name)
                if member is not None and member.state is State.SUSPECT:
                    self._apply(Dead(name, member.incarnation, by=self.name), now)
        if now >= self._next_gossip and self._queue:
            self._next_gossip = now + cfg.gossip_interval
            if self._queue:
                for member in self._gossip_targets(cfg.gossip_fanout, now):
                    updates = self._take_updates(member.name)
                    if updates:
                        out.append(Send(member.address, Gossip(self.name, updates)))
        if now >= self._next_push_pull:
            self._next_push_pull = now + cfg.push_pull_interval
            peers = [m for m in self.members.values() if m.name != self.name and m.state is State.ALIVE]
            if peers:
                out.append(self._push_pull(self.rng.choice(peers).address, reply=False))
        if now >= self._next_reconnect:
            self._next_reconnect = now + cfg.reconnect_interval
            dead = [m for m in self.members.values() if m.state is State.DEAD]
            if dead:
                out.append(self._push_pull(self.rng.choice(dead).address, reply=False))
            if self.seeds:
                out.append(self._push_pull(self.rng.choice(self.seeds), reply=False))
        if not self.joined and now >= self._next_join:
            self._join_backoff = min(cfg.join_retry_max, self._join_backoff * 2)
            self._next_join = now + self._join_backoff
            out += [self._push_pull(seed, reply=False) for seed in self.seeds]
        if now >= self._next_reap:
            self._next_reap = now + 60.0
            for name in [
                n for n, m in self.members.items() if m.state in (State.DEAD, State.LEFT) and now - m.since > cfg.reap_after
            ]:
                del self.members[name]
        return out

    # -- probing --------------------------------------------------------------------------

    def _scale(self) -> int:
        return self.health + 1

    def _start_probe(self, now: float) -> list[Send]:
        cfg = self.config
        target = self._next_target()
        self._next_probe = now + cfg.probe_interval * self._scale()
        if target is None:
            return []
        self._seq += 1
        self.stats["probes"] += 1
        self._probe = _Probe(
            self._seq, target.name, now, now + cfg.probe_timeout * self._scale(), now + cfg.probe_interval * self._scale()
        )
        ping = Ping(self._seq, self.name, self.address, target.name, self._take_updates(target.name))
        return [Send(target.address, ping)]

    def _next_target(self) -> Member | None:
        """Round-robin over a shuffled list; at most every other probe confirms a suspicion.

        Under heavy loss suspicions arrive every period: letting each one jump
        the queue would starve the round robin, and a dead member waiting
        behind them would never be probed.
        """
        confirm, self._confirm_next = self._confirm_next, None
        if confirm is not None and not self._confirmed_last:
            member = self.members.get(confirm)
            if member is not None and member.state is State.SUSPECT:
                self._confirmed_last = True
                return member
        self._confirmed_last = False
        for _ in range(2):
            while self._probe_order:
                member = self.members.get(self._probe_order.pop())
                if member is not None and member.name != self.name and member.state in (State.ALIVE, State.SUSPECT):
                    return member
            self._probe_order = [n for n in self.members if n != self.name]
            self.rng.shuffle(self._probe_order)
        return None

    def _indirect(self, probe: _Probe) -> list[Send]:
        probe.indirect_sent = True
        target = self.members.get(probe.target)
        if target is None:
            return []
        helpers = [m for m in self.members.values() if m.name not in (self.name, probe.target) and m.state is State.ALIVE]
        chosen = self.rng.sample(helpers, min(self.config.indirect_checks, len(helpers)))
        probe.nacks_expected = len(chosen)
        return [
            Send(h.address, PingReq(probe.seq, self.name, self.address, target.name, target.address, self._take_updates(h.name)))
            for h in chosen
        ]

    def _end_probe(self, probe: _Probe, now: float) -> list[Send]:
        self._probe = None
        if probe.acked:
            return []
        self.stats["failed_probes"] += 1
        self._adjust_health(+1)
        if probe.nacks < probe.nacks_expected:
            self._adjust_health(+1)  # helpers did not answer either: maybe it is us
        target = self.members.get(probe.target)
        if target is None or target.state not in (State.ALIVE, State.SUSPECT):
            return []
        # of an already suspected member, our independent confirmation shortens its timeout
        suspicion = Suspect(target.name, target.incarnation, by=self.name)
        self._apply(suspicion, now)
        # tell the suspect at once (Lifeguard's buddy system, without waiting for the next
        # probe of it): if it is alive it refutes before any timer runs out
        return [Send(target.address, Gossip(self.name, (suspicion,)))]

    def _observe_rtt(self, rtt: float) -> None:
        """Probe round trips (direct or through helpers) as cumulative histogram counts."""
        for i, bound in enumerate(RTT_BUCKETS):
            if rtt <= bound:
                self.rtt_buckets[i] += 1
        self.rtt_sum += rtt
        self.rtt_count += 1

    def _adjust_health(self, delta: int) -> None:
        self.health = max(0, min(self.config.max_health, self.health + delta))

    # -- receiving ------------------------------------------------------------------------

    def receive(self, message: Message, now: float) -> list[Send]:
        if self.left:
            return []
        out: list[Send] = []
        # piggybacked updates land before the message is acted on: a ping from a suspect
        # carries its refutation, and our ack must not tell it again that it is suspected
        match message:
            case Ping():
                self._apply_all(message.updates, now)
                if message.target == self.name:
                    out.append(Send(message.source_address, Ack(message.seq, self.name, self._take_updates(message.source))))
            case Ack():
                self._apply_all(message.updates, now)
                probe = self._probe
                if probe is not None and message.seq == probe.seq and not probe.acked:
                    probe.acked = True
                    self._adjust_health(-1)
                    self._observe_rtt(now - probe.started)
                relay = self._relays.pop(message.seq, None)
                if relay is not None:
                    out.append(Send(relay.requester, Ack(relay.seq, self.name)))
            case Nack():
                if self._probe is not None and message.seq == self._probe.seq:
                    self._probe.nacks += 1
            case PingReq():
                self._apply_all(message.updates, now)
                self._seq += 1
                self._relays[self._seq] = _Relay(message.source_address, message.seq, now + self.config.probe_timeout)
                out.append(Send(message.target_address, Ping(self._seq, self.name, self.address, message.target)))
            case PushPull():
                self._merge_state(message, now)
                if message.app and self.merge_app_state is not None:
                    self.merge_app_state(message.source, message.app)
                if not message.reply:
                    out.append(self._push_pull(message.source_address, reply=True))
                elif not self.joined:
                    self.joined = True
                    self._next_join = INF
            case Gossip():
                self._apply_all(message.updates, now)
            case AppMessage():
                pass  # application data: the shell hands it to the application, SWIM has nothing to do
            case _:
                assert_never(message)
        return out

    def _merge_state(self, message: PushPull, now: float) -> None:
        self.stats["push_pulls"] += 1
        for remote in message.members:
            if remote.name == self.name:
                mine = self.incarnation
                if remote.incarnation > mine or (remote.incarnation == mine and remote.state is not State.ALIVE):
                    self._refute(remote.incarnation)
                continue
            if remote.state is State.ALIVE:
                self._apply(Alive(remote.name, remote.incarnation, remote.address, remote.meta), now)
            elif remote.state is State.SUSPECT:
                if remote.name not in self.members:
                    self._apply(Alive(remote.name, remote.incarnation, remote.address, remote.meta), now)
                self._apply(Suspect(remote.name, remote.incarnation, by=message.source), now)
            elif remote.name in self.members:
                by = remote.name if remote.state is State.LEFT else message.source
                self._apply(Dead(remote.name, remote.incarnation, by=by), now)

    def _push_pull(self, address: str, reply: bool) -> Send:
        states = tuple(MemberState(m.name, m.address, m.incarnation, m.state, m.meta) for m in self.members.values())
        app = self.app_state() if self.app_state is not None else b""
        return Send(address, PushPull(self.name, self.address, states, reply, app), reliable=True)

    # -- state changes ------------------------------------------------------------------

    def _apply_all(self, updates: tuple[Update, ...], now: float) -> None:
        for update in updates:
            self._apply(update, now)

    def _apply(self, update: Update, now: float) -> None:
        match update:
            case Broadcast():
                self._on_broadcast(update)
            case Alive():
                self._on_alive(update, now)
            case Suspect():
                self._on_suspect(update, now)
            case Dead():
                self._on_dead(update, now)
            case _:
                assert_never(update)

    def _set(self, member: Member, state: State, incarnation: int, now: float) -> None:
        changed = member.state is not state
        member.state, member.incarnation = state, incarnation
        if changed:
            member.since = now
            self._events.append(MemberEvent(member.name, state, incarnation, member.address))
        if state is not State.SUSPECT:
            self._suspicions.pop(member.name, None)

    def _on_alive(self, update: Alive, now: float) -> None:
        if update.name == self.name:
            if update.incarnation > self.incarnation:
                self._refute(update.incarnation)  # an older life of ours is still talked about
            return
        member = self.members.get(update.name)
        if member is None:
            member = self.members[update.name] = Member(
                update.name, update.address, update.incarnation, State.ALIVE, now, dict(update.meta)
            )
            self._events.append(MemberEvent(update.name, State.ALIVE, update.incarnation, update.address))
            # at a random place in the round: members learned in the same order by every
            # node (from the same seed) would otherwise be probed in lockstep, and a dead
            # one near the end of everyone's list would go unprobed for a whole round
            self._probe_order.insert(self.rng.randint(0, len(self._probe_order)), update.name)
            self._enqueue(update)
            return
        if update.incarnation <= member.incarnation:
            return
        member.address, member.meta = update.address, dict(update.meta)
        self._set(member, State.ALIVE, update.incarnation, now)
        self._enqueue(update)

    def _on_suspect(self, update: Suspect, now: float) -> None:
        if update.name == self.name:
            if update.incarnation >= self.incarnation:
                self._refute(update.incarnation)
            else:
                self._reannounce()
            return
        member = self.members.get(update.name)
        if member is None or update.incarnation < member.incarnation or member.state in (State.DEAD, State.LEFT):
            return
        suspicion = self._suspicions.get(update.name)
        if member.state is State.SUSPECT and suspicion is not None and update.incarnation == suspicion.incarnation:
            if update.by not in suspicion.confirmations:
                suspicion.confirmations.add(update.by)
                suspicion.deadline = suspicion.started + self._suspicion_timeout(len(suspicion.confirmations) - 1)
                self._enqueue(update)
            return
        self.stats["suspicions"] += 1
        if update.by != self.name and self._confirm_next is None:
            # probe the suspect next: our own verdict confirms (or not) within one
            # protocol period, which is what lets the suspicion timeout shrink
            self._confirm_next = update.name
        self._set(member, State.SUSPECT, update.incarnation, now)
        self._suspicions[update.name] = _Suspicion(now, update.incarnation, {update.by}, now + self._suspicion_timeout(0))
        self._enqueue(update)

    def _on_dead(self, update: Dead, now: float) -> None:
        if update.name == self.name:
            if update.by != self.name and update.incarnation >= self.incarnation:
                self.stats["false_deaths"] += 1  # declared dead while alive: a false positive
                self._refute(update.incarnation)
            elif update.by != self.name:
                self._reannounce()
            return
        member = self.members.get(update.name)
        if member is None or update.incarnation < member.incarnation or member.state in (State.DEAD, State.LEFT):
            return
        self._set(member, State.LEFT if update.by == update.name else State.DEAD, update.incarnation, now)
        self._enqueue(update)

    def _refute(self, incarnation: int) -> None:
        me = self.members[self.name]
        me.incarnation = max(me.incarnation, incarnation) + 1
        self.stats["refutations"] += 1
        self._adjust_health(+1)
        self._enqueue(Alive(self.name, me.incarnation, self.address, me.meta))

    def _reannounce(self) -> None:
        """A claim about an older incarnation of ours still circulates: its sender missed the
        refutation (every copy of it can be lost), so spread our current one again."""
        me = self.members[self.name]
        self._enqueue(Alive(self.name, me.incarnation, self.address, me.meta))

    def _suspicion_timeout(self, confirmations: int) -> float:
        cfg = self.config
        n = max(1, self.live_count())
        base = cfg.suspicion_mult * max(1.0, math.log10(n)) * cfg.probe_interval
        longest = cfg.suspicion_max_mult * base
        expected = max(1, min(cfg.indirect_checks, n - 2))
        fraction = math.log(confirmations + 1) / math.log(expected + 1)
        return max(base, longest - (longest - base) * min(1.0, fraction))

    # -- dissemination ----------------------------------------------------------------

    def _enqueue(self, update: Update) -> None:
        self._queue.put(update)

    def broadcast(self, data: bytes) -> None:
        """Spread a small message (at most 512 bytes) to every member, best effort."""
        if len(data) > MAX_BROADCAST:
            raise ValueError(f"a broadcast carries at most {MAX_BROADCAST} bytes, got {len(data)}")
        self._broadcast_seq += 1
        update = Broadcast(self.name, self._broadcast_seq, data)
        self._remember(update)
        self._enqueue(update)

    def pop_broadcasts(self) -> list[Broadcast]:
        delivered, self._delivered = self._delivered, []
        return delivered

    def _remember(self, update: Broadcast) -> bool:
        key = (update.origin, update.seq)
        if key in self._seen_broadcasts:
            return False
        self._seen_broadcasts[key] = None
        if len(self._seen_broadcasts) > SEEN_BROADCASTS:
            del self._seen_broadcasts[next(iter(self._seen_broadcasts))]
        return True

    def _on_broadcast(self, update: Broadcast) -> None:
        if update.origin != self.name and self._remember(update):
            self._delivered.append(update)
            self._enqueue(update)

    def _retransmit_limit(self) -> int:
        return self.config.retransmit_mult * math.ceil(math.log10(len(self.members) + 1))

    def _take_updates(self, destination: str) -> tuple[Update, ...]:
        chosen: list[Update] = []
        budget = self.config.packet_budget
        suspicion = self._suspicions.get(destination)
        if suspicion is not None:
            # every packet to a suspect tells it so, for as long as the suspicion lasts, not
            # only the retransmit limit's few copies: losing them all must not kill it
            chosen.append(Suspect(destination, suspicion.incarnation, min(suspicion.confirmations)))
            budget -= update_size(chosen[0])
        if self._queue:
            chosen += self._queue.take(destination, budget, self._retransmit_limit(), skip=chosen[0] if chosen else None)
        return tuple(chosen)

    def _gossip_targets(self, count: int, now: float) -> list[Member]:
        window = self.config.gossip_to_dead_secs
        candidates = [
            m
            for m in self.members.values()
            if m.name != self.name
            and (m.state in (State.ALIVE, State.SUSPECT) or (m.state is State.DEAD and now - m.since < window))
        ]
        return self.rng.sample(candidates, min(count, len(candidates)))
