"""Which members health-check a worker: rendezvous (highest random weight) hashing.

Every node computes the same owners from the same alive members, with no
coordination; when a member dies or joins, only the workers it owned (or now
owns) move.
"""

from __future__ import annotations

from collections.abc import Iterable

from smg.hashing import hash64


def owners(worker_id: str, members: Iterable[str], count: int) -> list[str]:
    """The `count` members with the highest weight for `worker_id`, best first."""
    ranked = sorted(members, key=lambda m: (hash64(f"{m}|{worker_id}".encode()), m), reverse=True)
    return ranked[:count]
