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
"""

from __future__ import annotations

import json
import math
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

    def adopt_replica(self, replica: ReplicaId) -> None:
        """Count as `replica` from now on; what was counted before moves into its slots."""
        for windows in self.counter.keys.values():
            for slots in windows.values():
                if self.replica in slots:
                    slots[replica] = slots.get(replica, 0) + slots.pop(self.replica)
        self.replica = replica

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
