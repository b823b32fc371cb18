"""Wire codec of CRDT states and deltas: a version byte, then msgpack.

`decode` never lets a foreign exception out: empty, oversized, unknown
version, malformed msgpack or a wrong shape anywhere all raise `CodecError`,
so a garbage or forged packet is answered by a log line and a metric, not a
crash.
"""

from __future__ import annotations

from typing import Any

import msgpack

from smg.crdt.hlc import Timestamp
from smg.crdt.lww import Entry, LWWMap
from smg.crdt.prefix_summary import PrefixSummary
from smg.crdt.windowed import WindowedCounter

VERSION = 1
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

CRDT = LWWMap | WindowedCounter | PrefixSummary


class CodecError(ValueError):
    """Input that is not a valid encoded CRDT of a known version."""


def _fail(what: str) -> CodecError:
    return CodecError(f"malformed CRDT payload: {what}")


def _list(raw: Any, what: str, length: int | None = None) -> list[Any]:
    if not isinstance(raw, list) or (length is not None and len(raw) != length):
        raise _fail(f"{what} is not a list" + (f" of {length}" if length is not None else ""))
    return raw


def _str(raw: Any, what: str) -> str:
    if not isinstance(raw, str):
        raise _fail(f"{what} is not a string")
    return raw


def _int(raw: Any, what: str, minimum: int | None = 0) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or (minimum is not None and raw < minimum):
        raise _fail(f"{what} is not an integer >= {minimum}")
    return raw


def _ts(raw: Any) -> Timestamp:
    try:
        return Timestamp.unpack(raw)
    except ValueError as exc:
        raise _fail(str(exc)) from None


def _slots(raw: Any, what: str) -> dict[str, int]:
    return {_str(r, what): _int(c, what) for r, c in (_list(p, what, 2) for p in _list(raw, what))}


# -- per type: to a msgpack-able payload and back ---------------------------------


def _enc(crdt: CRDT) -> tuple[str, Any]:
    if isinstance(crdt, LWWMap):
        return "lww", [list(crdt.floor), [[k, list(e.ts), e.deleted, e.value] for k, e in crdt.entries.items()]]
    if isinstance(crdt, WindowedCounter):
        return "win", [[k, [[e, sorted(s.items())] for e, s in w.items()]] for k, w in crdt.keys.items()]
    if isinstance(crdt, PrefixSummary):
        # grouped by worker, then by timestamp: a recorded prompt's blocks share one stamp
        summary: list[Any] = []
        for model, by_key in crdt.models.items():
            grouped: dict[str, dict[Timestamp, list[bytes]]] = {}
            for (worker, block), ts in by_key.items():
                grouped.setdefault(worker, {}).setdefault(ts, []).append(block)
            summary.append([model, [[w, [[list(ts), blocks] for ts, blocks in by_ts.items()]] for w, by_ts in grouped.items()]])
        return "prefix", [crdt.budget, crdt.ttl_ms, summary]
    raise TypeError(f"not a CRDT: {type(crdt).__name__}")


def _dec(tag: str, payload: Any) -> CRDT:
    if tag == "lww":
        floor, raw = _list(payload, "lww map", 2)
        entries = {}
        for item in _list(raw, "entries"):
            key, ts, deleted, value = _list(item, "entry", 4)
            if not isinstance(deleted, bool):
                raise _fail("deleted flag is not a boolean")
            entries[_str(key, "key")] = Entry(_ts(ts), value, deleted)
        return LWWMap(entries, _ts(floor))
    if tag == "win":
        keys = {}
        for item in _list(payload, "windows"):
            key, raw_windows = _list(item, "key windows", 2)
            keys[_str(key, "key")] = {
                _int(e, "epoch", None): _slots(s, "slots")
                for e, s in (_list(w, "window", 2) for w in _list(raw_windows, "windows"))
            }
        return WindowedCounter(keys)
    if tag == "prefix":
        budget, ttl, raw_models = _list(payload, "prefix summary", 3)
        models: dict[str, dict[tuple[str, bytes], Timestamp]] = {}
        for item in _list(raw_models, "models"):
            model, raw_workers = _list(item, "model", 2)
            recorded: dict[tuple[str, bytes], Timestamp] = {}
            for raw_worker in _list(raw_workers, "workers"):
                worker, raw_groups = _list(raw_worker, "worker", 2)
                worker = _str(worker, "worker")
                for group in _list(raw_groups, "groups"):
                    raw_ts, blocks = _list(group, "group", 2)
                    ts = _ts(raw_ts)
                    for block in _list(blocks, "blocks"):
                        if not isinstance(block, bytes) or len(block) != 8:
                            raise _fail("block hash is not 8 bytes")
                        recorded[(worker, block)] = ts
            models[_str(model, "model")] = recorded
        try:
            return PrefixSummary(_int(budget, "budget", 1), _int(ttl, "ttl", 1), models)
        except ValueError as exc:
            raise _fail(str(exc)) from None
    raise _fail(f"unknown type tag {tag!r}")


# -- the wire -------------------------------------------------------------------------


def encode(crdt: CRDT, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    tag, payload = _enc(crdt)
    data: bytes = bytes([VERSION]) + msgpack.packb([tag, payload], use_bin_type=True)
    if len(data) > max_bytes:
        raise CodecError(f"encoded {tag} is {len(data)} bytes, over the {max_bytes}-byte limit")
    return data


def decode(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> CRDT:
    if not data:
        raise CodecError("empty payload")
    if len(data) > max_bytes:
        raise CodecError(f"payload of {len(data)} bytes is over the {max_bytes}-byte limit")
    if data[0] != VERSION:
        raise CodecError(f"unknown codec version {data[0]}")
    try:
        tag, payload = msgpack.unpackb(data[1:], raw=False, use_list=True)
    except Exception as exc:  # msgpack raises a zoo of types on garbage; all mean the same here
        raise CodecError(f"undecodable payload: {type(exc).__name__}: {exc}") from None
    if not isinstance(tag, str):
        raise _fail("type tag is not a string")
    try:
        return _dec(tag, payload)
    except CodecError:
        raise
    except (ValueError, TypeError, KeyError, RecursionError) as exc:  # a shape the validators missed
        raise _fail(f"{type(exc).__name__}: {exc}") from None
