"""SWIM protocol messages (sans-IO): plain dataclasses the core sends and receives.

The wire codec comes with the trio transport; the simulator passes these
objects as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias


class State(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class Alive:
    name: str
    incarnation: int
    address: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class Suspect:
    name: str
    incarnation: int
    by: str  # who suspects: independent suspicions shorten the timeout


@dataclass(frozen=True, slots=True)
class Dead:
    name: str
    incarnation: int
    by: str  # by == name: the member left on purpose


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A small application message spread by gossip: best effort, deduplicated by (origin, seq)."""

    origin: str
    seq: int
    data: bytes

    @property
    def name(self) -> str:  # the queue and the packet budget look at `name`
        return self.origin


# explicit aliases: mypy checks a `match` over them for exhaustiveness (`assert_never`)
Update: TypeAlias = Alive | Suspect | Dead | Broadcast


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    source: str
    source_address: str
    target: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    source: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class PingReq:
    seq: int
    source: str
    source_address: str
    target: str
    target_address: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    seq: int
    source: str


@dataclass(frozen=True, slots=True)
class MemberState:
    name: str
    address: str
    incarnation: int
    state: State
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class PushPull:
    """Full membership state, over the reliable (TCP) channel: anti-entropy, join and reconnect."""

    source: str
    source_address: str
    members: tuple[MemberState, ...]
    reply: bool  # False: a request that wants our state back
    app: bytes = b""  # the application's full state (the push-pull hook), opaque here


@dataclass(frozen=True, slots=True)
class Gossip:
    """A packet carrying only piggybacked updates."""

    source: str
    updates: tuple[Update, ...]


@dataclass(frozen=True, slots=True)
class AppMessage:
    """Application data on a per-peer stream (not a SWIM message: the node hands it to the application)."""

    source: str
    channel: str
    payload: bytes


Message: TypeAlias = Ping | Ack | PingReq | Nack | PushPull | Gossip | AppMessage
