"""Replica identity: node name plus boot epoch.

Counters keep one slot per replica and merge slots by max. A node restarted
under the same name that wrote into its old slot, counting again from zero,
would be silently outvoted by its own past (max wins). So every boot gets a
fresh replica id, `<name>#<epoch>`: the epoch is the node's SWIM incarnation
at start, or any number that never repeats for that name (a random 64-bit
boot id by default). Old slots keep their counts and are merged as before.
"""

from __future__ import annotations

import secrets

ReplicaId = str


def new_replica_id(name: str, epoch: int | None = None) -> ReplicaId:
    if not name or "#" in name:
        raise ValueError(f"invalid node name for a replica id: {name!r}")
    return f"{name}#{secrets.randbits(64) if epoch is None else epoch}"
