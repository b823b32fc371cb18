"""The transmit-limited queue of membership news and broadcasts that ride on SWIM's packets.

Each update is sent a limited number of times (the retransmit limit, which grows
with the log of the cluster's size), least-sent first, within each packet's byte
budget; newer news of a member replaces older in the queue (only the latest claim
is worth spreading). Sans-IO, like the protocol core that owns it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

from smg.mesh.messages import Alive, Broadcast, Dead, Suspect, Update


@dataclass(frozen=True, slots=True)
class Topic:
    """What a queued update is news of: the queue holds one entry per topic.

    Newer news of a member replaces older (only the latest claim is worth
    spreading); every broadcast is its own topic, so none displaces another.
    """

    name: str  # the member, or the broadcast's origin
    broadcast: int | None = None  # the broadcast's sequence number; None: news of the member


@dataclass(slots=True)
class Queued:
    """An update waiting to ride on packets until it was sent the retransmit limit's number of times."""

    topic: Topic
    update: Update
    transmits: int = 0


def update_size(update: Update) -> int:
    """An estimate of the encoded size, for the packet budget."""
    match update:
        case Broadcast():
            return 24 + len(update.origin) + len(update.data)
        case Alive():
            return 24 + len(update.name) + len(update.address)
        case Suspect() | Dead():
            return 24 + len(update.name) + len(update.by)
        case _:
            assert_never(update)


def topic_of(update: Update) -> Topic:
    """The queue entry an update takes (or replaces): see `Topic`."""
    match update:
        case Broadcast():
            return Topic(update.origin, update.seq)
        case Alive() | Suspect() | Dead():
            return Topic(update.name)
        case _:
            assert_never(update)


class TransmitQueue:
    """One entry per topic, in insertion order: the older topic first among equals."""

    def __init__(self) -> None:
        self._entries: dict[Topic, Queued] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, update: Update) -> None:
        topic = topic_of(update)
        self._entries[topic] = Queued(topic, update)

    def take(self, destination: str, budget: int, limit: int, skip: Update | None = None) -> list[Update]:
        """Updates for one packet to `destination`, within `budget` bytes; each counts one
        transmission and leaves the queue at `limit`. `skip`: already in the packet."""
        chosen: list[Update] = []

        def order(entry: Queued) -> tuple[bool, int]:
            """The destination's own suspicion first (buddy system), then the least sent; ties keep queue order."""
            update = entry.update
            return (not (isinstance(update, Suspect) and update.name == destination), entry.transmits)

        for entry in sorted(self._entries.values(), key=order):
            if skip is not None and entry.update == skip:
                continue
            size = update_size(entry.update)
            if size > budget:
                break
            budget -= size
            chosen.append(entry.update)
            entry.transmits += 1
            if entry.transmits >= limit:
                del self._entries[entry.topic]
        return chosen
