"""Delta-state CRDTs for cluster state (sans-IO: times and replica ids are passed in).

Every type has `merge(other)` (an in-place join), delta mutators that return
the delta as a value of the same type, `copy()`, and `state_digest()`, a pure
function of the merged state that nodes compare at quiescence.
"""

from smg.crdt.hlc import ClockDriftError, HybridClock, Timestamp
from smg.crdt.lww import LWWMap
from smg.crdt.prefix_summary import PrefixSummary
from smg.crdt.replica import ReplicaId, new_replica_id
from smg.crdt.windowed import WindowedCounter

__all__ = [
    "ClockDriftError",
    "HybridClock",
    "LWWMap",
    "PrefixSummary",
    "ReplicaId",
    "Timestamp",
    "WindowedCounter",
    "new_replica_id",
]
