"""Per-tenant requests and tokens per minute, over a sliding window (sans-IO).

Counts live in a `WindowedCounter` (one slot per node and window), so with
the HA mesh every node reads the cluster's total; alone, the same counter
holds this node's counts. The estimate for the current minute is the
current window's count plus the previous window's count weighted by the part
of it still inside the sliding minute. A request is admitted when one more
request, and its estimated prompt tokens, fit under the limit times this
node's `share` (1 normally; alive / known members while some are
unreachable, so each side of a partition keeps to its fair part). Completion
tokens are charged after the response, from its `usage`.

With the mesh, a node's counts reach its peers after a replication delay
(milliseconds normally; seconds under packet loss, when TCP backs off). In
that delay every node admits against a view that lacks the others' newest
counts, so near the limit the cluster would over-admit by about the others'
admissions during one delay. To prevent that, the room a node sees is split
between the alive members, in whole units: `floor(room) // n`, plus one for
the first `floor(room) % n` members in an order that turns by one every
window, so no member is left without its unit for good. A node admits only while its own
counts that not every alive peer has acknowledged yet ("pending"), plus the
request, fit in its part, where `room` is the limit less what it sees
without its pending counts. Every acknowledged count is in every view, so
the parts together never exceed the true room: the cluster stays within the
limit however slow replication is, as long as the members agree on who is
alive (otherwise the partition share applies). Requests split exactly; for
tokens a node with no pending tokens may admit one prompt larger than its
part when the cluster's count allows it (prompt sizes are estimates, and a
limit smaller than a few prompts would otherwise refuse every one of them),
so a token limit may be exceeded by one prompt per node in a race.
"""

from __future__ import annotations

import json
import math
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from smg.crdt.replica import ReplicaId
from smg.crdt.windowed import WindowedCounter

WINDOW_SECS = 60.0
DEFAULT_TENANT = "default"
KINDS = ("requests_per_minute", "tokens_per_minute")


@dataclass(frozen=True)
class Limit:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass(frozen=True)
class TenantLimits:
    default: Limit = Limit()
    tenants: dict[str, Limit] = field(default_factory=dict)

    def for_tenant(self, tenant: str) -> Limit:
        return self.tenants.get(tenant, self.default)

    @property
    def counts_tokens(self) -> bool:
        return any(limit.tokens_per_minute is not None for limit in (self.default, *self.tenants.values()))

    @classmethod
    def parse(cls, raw: Any) -> TenantLimits:
        """From `{"default": {...}, "tenants": {"name": {...}}}`; ValueError names what is wrong."""
        if not isinstance(raw, dict) or set(raw) - {"default", "tenants"}:
            raise ValueError('expected an object with "default" and/or "tenants"')
        tenants = raw.get("tenants", {})
        if not isinstance(tenants, dict):
            raise ValueError('"tenants" must map tenant names to limits')
        return cls(_limit(raw.get("default", {}), "default"), {str(k): _limit(v, f"tenants.{k}") for k, v in tenants.items()})

    @classmethod
    def load(cls, path: str) -> TenantLimits:
        """JSON, or YAML for a `.yaml`/`.yml` file."""
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if path.endswith((".yaml", ".yml")):
            import yaml

            try:
                raw = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ValueError(f"not valid YAML: {exc}") from None
        else:
            try:
                raw = json.loads(text)
            except ValueError as exc:
                raise ValueError(f"not valid JSON: {exc}") from None
        return cls.parse(raw)


def _limit(raw: Any, where: str) -> Limit:
    if not isinstance(raw, dict) or set(raw) - set(KINDS):
        raise ValueError(f"{where}: expected an object with {' and/or '.join(KINDS)}")
    values = {}
    for kind in KINDS:
        value = raw.get(kind)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{where}.{kind} must be a non-negative integer")
        values[kind] = value
    return Limit(**values)


@dataclass(frozen=True)
class Refusal:
    kind: str  # which limit: requests_per_minute or tokens_per_minute
    limit: float  # the limit as applied on this node (its share)
    used: float
    retry_after: int  # seconds


class TenantRateLimiter:
    def __init__(self, limits: TenantLimits, replica: ReplicaId = "local") -> None:
        self.limits = limits
        self.replica = replica
        self.counter = WindowedCounter()
        self.on_delta: Callable[[WindowedCounter], None] | None = None  # the cluster replicates each delta
        self.share: Callable[[], float] = lambda: 1.0
        # With the mesh (see the module's docstring): the replication log position of our newest
        # count, the position every alive peer has merged, and how many nodes admit at once.
        self.sequence: Callable[[], int] = lambda: 0
        self.confirmed: Callable[[], int] = lambda: sys.maxsize
        self.admitters: Callable[[], tuple[int, int]] = lambda: (1, 0)  # (alive members, our rank by name)
        self._pending: deque[tuple[int, str, int, int]] = deque()  # (seq, key, epoch, amount), oldest first
        self._pending_by_key: dict[str, dict[int, int]] = {}  # key -> epoch -> amount not yet confirmed

    def adopt_replica(self, replica: ReplicaId) -> None:
        """Count as `replica` from now on; what was counted before moves into its slots."""
        for windows in self.counter.keys.values():
            for slots in windows.values():
                if self.replica in slots:
                    slots[replica] = slots.get(replica, 0) + slots.pop(self.replica)
        self.replica = replica
        self._pending.clear()  # positions in a replication log that no longer exists
        self._pending_by_key.clear()

    def _window(self, now: float) -> tuple[int, float]:
        return int(now // WINDOW_SECS), (now % WINDOW_SECS) / WINDOW_SECS

    def used(self, tenant: str, kind: str, now: float) -> float:
        epoch, fraction = self._window(now)
        return self.counter.read(f"{tenant}/{kind}", epoch, fraction)

    def admit(self, tenant: str, prompt_tokens: int, now: float) -> Refusal | None:
        """Count the request if it fits; otherwise say which limit refused it, and for how long."""
        limit = self.limits.for_tenant(tenant)
        share = self.share()
        epoch, fraction = self._window(now)
        wanted = {"requests_per_minute": 1, "tokens_per_minute": prompt_tokens}
        if self._pending:
            self._settle()
        members = 0
        for kind, amount in wanted.items():
            cap = getattr(limit, kind)
            if cap is None:
                continue
            allowed = cap * share
            key = f"{tenant}/{kind}"
            used = self.counter.read(key, epoch, fraction)
            if used + amount > allowed:
                current, previous = self.counter.total(key, epoch), self.counter.total(key, epoch - 1)
                return Refusal(kind, allowed, used, retry_after(current, previous, fraction, allowed - amount))
            if self.on_delta is None:
                continue  # alone: the count is exact
            if not members:
                members, rank = self.admitters()
            if members > 1:
                pending = self._pending_by_key.get(key)
                mine = pending.get(epoch, 0) + pending.get(epoch - 1, 0) * (1.0 - fraction) if pending else 0.0
                whole = math.floor(allowed - (used - mine) + 1e-9)
                turn = (rank + epoch) % members  # the odd units go round the members window by window
                part = whole // members + (1 if turn < whole % members else 0)
                if mine + amount > part and not (mine == 0 and kind == "tokens_per_minute"):
                    current, previous = self.counter.total(key, epoch), self.counter.total(key, epoch - 1)
                    wait = 1 if mine else retry_after(current, previous, fraction, allowed - amount)
                    return Refusal(kind, allowed, used, wait)  # with pending counts: room again once peers ack them
        for kind, amount in wanted.items():
            if getattr(limit, kind) is not None:
                self._count(f"{tenant}/{kind}", epoch, amount)
        return None

    def charge_tokens(self, tenant: str, tokens: int, now: float) -> None:
        """Completion tokens of an admitted request, known once it ended."""
        if tokens > 0 and self.limits.for_tenant(tenant).tokens_per_minute is not None:
            self._count(f"{tenant}/tokens_per_minute", self._window(now)[0], tokens)

    def _count(self, key: str, epoch: int, amount: int) -> None:
        delta = self.counter.increment(key, self.replica, epoch, amount)
        if self.on_delta is not None:
            self.on_delta(delta)
            self._pending.append((self.sequence(), key, epoch, amount))
            by_epoch = self._pending_by_key.setdefault(key, {})
            by_epoch[epoch] = by_epoch.get(epoch, 0) + amount

    def _settle(self) -> None:
        """Forget pending counts every alive peer has acknowledged, and those of past windows."""
        confirmed = self.confirmed()
        newest = self._pending[-1][2]
        while self._pending and (self._pending[0][0] <= confirmed or self._pending[0][2] < newest - 1):
            _, key, epoch, amount = self._pending.popleft()
            by_epoch = self._pending_by_key[key]
            left = by_epoch[epoch] - amount
            if left:
                by_epoch[epoch] = left
            else:
                del by_epoch[epoch]
                if not by_epoch:
                    del self._pending_by_key[key]

    def pending(self, tenant: str, kind: str = "requests_per_minute") -> int:
        """This node's counts of `tenant` that not every alive peer has acknowledged yet."""
        if self._pending:
            self._settle()
        return sum(self._pending_by_key.get(f"{tenant}/{kind}", {}).values())

    def vet(self, remote: WindowedCounter, now_ms: int) -> None:
        """Refuse counts for windows ahead of ours: a node with a clock far ahead would
        otherwise push the current window out of the two every key keeps."""
        current = self._window(now_ms / 1000)[0]
        for key, windows in remote.keys.items():
            if windows and max(windows) > current + 1:
                raise ValueError(f"counts of '{key}' for window {max(windows)}, ours is {current}: clock far ahead")

    def report(self, now: float) -> dict[str, dict[str, Any]]:
        """Per tenant and limit: the limit, the cluster's use of the sliding minute, this node's share."""
        epoch, fraction = self._window(now)
        tenants = sorted({key.rpartition("/")[0] for key in self.counter.keys} | set(self.limits.tenants))
        share = self.share()
        out: dict[str, dict[str, Any]] = {}
        for tenant in tenants:
            limit = self.limits.for_tenant(tenant)
            entry: dict[str, Any] = {}
            for kind in KINDS:
                cap = getattr(limit, kind)
                if cap is None:
                    continue
                key = f"{tenant}/{kind}"
                entry[kind] = {
                    "limit": cap,
                    "applied_limit": round(cap * share, 3),
                    "used": round(self.counter.read(key, epoch, fraction), 3),
                    "this_node": self.counter.share(key, epoch, self.replica),
                }
            out[tenant] = entry
        return out


def retry_after(current: int, previous: int, fraction: float, room: float) -> int:
    """Whole seconds until the sliding estimate falls to `room` (at least 1).

    Within this window the estimate is `current + previous * (1 - f)`; in the
    next one it is `next + current * (1 - g)`, with nothing counted yet.
    """
    if room < 0:
        return math.ceil(WINDOW_SECS * (2 - fraction))  # more than a whole limit: two windows
    if current <= room:
        # previous * (1 - f) must fall to room - current
        needed = 1.0 - (room - current) / previous if previous else fraction
        wait = (needed - fraction) * WINDOW_SECS
    else:
        needed = 1.0 - room / current
        wait = (1.0 - fraction + needed) * WINDOW_SECS
    return max(1, math.ceil(wait - 1e-9))
