"""Hybrid logical clock (Kulkarni et al.) with bounded drift.

A timestamp is (wall milliseconds, logical counter, replica id): ordered by
wall, then logical, then replica, so two writes never tie. The physical time
is passed in by the caller. A remote timestamp more than `max_drift_ms`
ahead of our physical clock is refused (ClockDriftError) and never adopted:
one node with a clock set to next year must not drag the cluster's clocks
along, nor win every last-writer-wins race.
"""

from __future__ import annotations

from typing import NamedTuple

from smg.crdt.replica import ReplicaId


class Timestamp(NamedTuple):
    wall: int
    logical: int
    replica: ReplicaId

    def pack(self) -> list[object]:
        return [self.wall, self.logical, self.replica]

    @classmethod
    def unpack(cls, raw: object) -> Timestamp:
        if (
            not isinstance(raw, (list, tuple))
            or len(raw) != 3
            or not isinstance(raw[0], int)
            or not isinstance(raw[1], int)
            or not isinstance(raw[2], str)
        ):
            raise ValueError(f"not a timestamp: {raw!r}")
        return cls(raw[0], raw[1], raw[2])


ZERO = Timestamp(0, 0, "")


class ClockDriftError(ValueError):
    """A remote timestamp is too far ahead of the local physical clock."""


class HybridClock:
    def __init__(self, replica: ReplicaId, max_drift_ms: int = 60_000) -> None:
        self.replica = replica
        self.max_drift_ms = max_drift_ms
        self.wall = 0
        self.logical = 0

    def now(self, physical_ms: int) -> Timestamp:
        """A timestamp for a local event, greater than every one issued or observed before."""
        if physical_ms > self.wall:
            self.wall, self.logical = physical_ms, 0
        else:
            self.logical += 1
        return Timestamp(self.wall, self.logical, self.replica)

    def observe(self, remote: Timestamp, physical_ms: int) -> None:
        """Fold in a remote timestamp so later local ones order after it."""
        if remote.wall > physical_ms + self.max_drift_ms:
            raise ClockDriftError(
                f"timestamp from {remote.replica} is {remote.wall - physical_ms} ms ahead (limit {self.max_drift_ms} ms)"
            )
        wall = max(self.wall, remote.wall, physical_ms)
        if wall == self.wall == remote.wall:
            self.logical = max(self.logical, remote.logical) + 1
        elif wall == self.wall:
            self.logical += 1
        elif wall == remote.wall:
            self.logical = remote.logical + 1
        else:
            self.logical = 0
        self.wall = wall
