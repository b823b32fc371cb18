"""Per-worker, per-node records in an LWW map: `<worker id>|<node name>` keys.

Health verdicts and in-flight counts are written by one node each about one
worker; last writer wins within a key, and readers combine the keys of the
members they consider live.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from smg.crdt.lww import LWWMap

SEPARATOR = "|"  # worker ids are hex: never in an id


def key(worker_id: str, node: str) -> str:
    return f"{worker_id}{SEPARATOR}{node}"


def split(record_key: str) -> tuple[str, str]:
    worker_id, _, node = record_key.partition(SEPARATOR)
    return worker_id, node


def by_worker(records: LWWMap) -> dict[str, dict[str, Any]]:
    """worker id -> {node: value} over the live entries."""
    out: dict[str, dict[str, Any]] = {}
    for record_key, value in records.items():
        worker_id, node = split(record_key)
        out.setdefault(worker_id, {})[node] = value
    return out


def orphans(records: LWWMap, node: str, registered: Callable[[str], bool]) -> list[str]:
    """This node's live keys about workers no longer registered: to delete."""
    return [k for k, _ in records.items() if split(k)[1] == node and not registered(split(k)[0])]
