"""Why a mesh node is alone, in words an operator can act on (sans-IO: the shell passes `now`).

A wrong `--mesh-key` or `--mesh-cluster-label` used to be silent: the receiver
dropped every frame it could not open (and only counted it), the joiner
retried its seeds forever, and each side ran as a cluster of one. Two small
trackers turn that into rate-limited warnings and a `/mesh/health` report:

- `Rejections`, on the receiving side: frames that could not be opened, per
  source host (TCP frames come from an ephemeral port, so the port would make
  every connection a new peer), with the likely cause. Sources of UDP packets
  can be forged, so the table is bounded and the warnings have a budget over
  all hosts as well as per host.
- `SeedWatch`, on the joining side: a seed that accepts our push-pull over TCP
  but never answers is the joiner's view of the same mismatch (the seed cannot
  open the frame, so it cannot answer it); a seed that refuses or times out is
  a different problem and is named as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from smg.mesh.keyring import KEY_OR_LABEL, NOT_MESH, PEER_ENCRYPTED, PEER_UNENCRYPTED

WARN_EVERY = 60.0  # seconds between two warnings about the same host or seed
MAX_TRACKED = 64  # hosts remembered; the least recently seen goes first
MAX_WARNINGS = 8  # warnings per WARN_EVERY over every host, against forged UDP sources
RECENT = 600.0  # /mesh/health lists hosts seen within this many seconds
JOIN_WARN_AFTER = 5.0  # alone this long with seeds: say why (the cluster node serves alone after 5 s too)

# AES-GCM checks the key and the associated data (the cluster label) in one tag: a
# receiver cannot tell which of the two differs, so the hint names both
HINTS = {
    KEY_OR_LABEL: "wrong --mesh-key or --mesh-cluster-label? (a different key and a different label look the same here)",
    PEER_UNENCRYPTED: "the peer runs without --mesh-key (unencrypted) while this node has one",
    PEER_ENCRYPTED: "the peer runs with --mesh-key while this node has none (unencrypted)",
    NOT_MESH: "not an smg mesh frame (another program on the mesh port, or an incompatible smg version?)",
}


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class Rejection:
    host: str
    address: str  # of the latest frame: UDP, the peer's mesh port; TCP, its outgoing port
    transport: str  # "udp" or "tcp"
    cause: str
    first_seen: float
    last_seen: float
    frames: int = 0
    unreported: int = 0  # frames since the last warning
    warned: float = -math.inf


class Rejections:
    def __init__(self, every: float = WARN_EVERY, limit: int = MAX_TRACKED, budget: int = MAX_WARNINGS) -> None:
        self.every = every
        self.limit = limit
        self.budget = budget
        self._hosts: dict[str, Rejection] = {}  # least recently seen first
        self._window = -math.inf
        self._warnings = 0  # in the window that started at `_window`

    def record(self, host: str, port: int, transport: str, cause: str, now: float) -> str | None:
        """Count one frame that could not be opened; the warning to log now, or None."""
        entry = self._hosts.pop(host, None)
        if entry is None:
            if len(self._hosts) >= self.limit:
                del self._hosts[next(iter(self._hosts))]
            entry = Rejection(host, "", transport, cause, now, now)
        self._hosts[host] = entry
        entry.address, entry.transport, entry.cause, entry.last_seen = _address(host, port), transport, cause, now
        entry.frames += 1
        entry.unreported += 1
        if now - entry.warned < self.every:
            return None
        if now - self._window >= self.every:
            self._window, self._warnings = now, 0
        if self._warnings >= self.budget:
            return None  # this host is told about once the window has room again
        self._warnings += 1
        entry.warned = now
        count, entry.unreported = entry.unreported, 0
        frames = "1 frame" if count == 1 else f"{count} frames"
        return f"{frames} from {entry.address} ({transport}) could not be opened: {HINTS.get(cause, cause)}"

    def report(self, now: float) -> list[dict[str, Any]]:
        """Hosts seen within RECENT seconds, the latest first."""
        return [
            {
                "address": e.address,
                "transport": e.transport,
                "cause": e.cause,
                "hint": HINTS.get(e.cause, e.cause),
                "frames": e.frames,
                "first_seen_secs_ago": round(now - e.first_seen, 1),
                "last_seen_secs_ago": round(now - e.last_seen, 1),
            }
            for e in reversed(self._hosts.values())
            if now - e.last_seen <= RECENT
        ]


@dataclass
class _Seed:
    connections: int = 0  # TCP connections that took a push-pull
    failures: int = 0
    reachable: bool | None = None  # the latest attempt's outcome
    last_error: str | None = None
    warned: float = -math.inf


class SeedWatch:
    """The seeds of a node that has not joined yet, and what became of the push-pulls sent to them."""

    def __init__(
        self, seeds: list[str], own_address: str, now: float, warn_after: float = JOIN_WARN_AFTER, every: float = WARN_EVERY
    ) -> None:
        self.seeds = {seed: _Seed() for seed in seeds}
        self.own_address = own_address
        self.started = now
        self.warn_after = warn_after
        self.every = every

    def delivered(self, address: str, error: str | None) -> None:
        """The outcome of a TCP send to `address` (ignored unless it is a seed)."""
        seed = self.seeds.get(address)
        if seed is None:
            return
        seed.reachable = error is None
        if error is None:
            seed.connections += 1
        else:
            seed.failures += 1
            seed.last_error = error

    def _why(self, address: str, seed: _Seed, waited: float) -> str | None:
        if seed.reachable:
            return (
                f"seed {address} accepts connections but has not answered in {waited:.0f}s: "
                "a different --mesh-key or --mesh-cluster-label (or a key on one side only) is the likely cause, "
                f"see the seed's log; else the seed cannot reach this node back at {self.own_address} "
                "(check --mesh-advertise-host and firewalls)"
            )
        if seed.reachable is False:
            return f"seed {address} is unreachable: {seed.last_error}"
        return None

    def check(self, now: float, alone: bool) -> list[str]:
        """Warnings due now: each seed at most once per `every`, after `warn_after` seconds alone."""
        waited = now - self.started
        if not alone or waited < self.warn_after:
            return []
        lines = []
        for address, seed in self.seeds.items():
            line = self._why(address, seed, waited)
            if line is not None and now - seed.warned >= self.every:
                seed.warned = now
                lines.append(line)
        return lines

    def reason(self, now: float) -> str:
        """One line for `/mesh/health` while alone."""
        whys = [why for address, seed in self.seeds.items() if (why := self._why(address, seed, now - self.started))]
        return "no seed answered yet" + (": " + "; ".join(whys) if whys else "")

    def report(self) -> list[dict[str, Any]]:
        return [
            {
                "address": address,
                "reachable": seed.reachable,
                "connections": seed.connections,
                "failures": seed.failures,
                "last_error": seed.last_error,
            }
            for address, seed in self.seeds.items()
        ]
