"""CRDT costs: merges per second, encoded sizes, delta vs full state, decoder fuzzing.

    python bench/crdt.py                 # everything, with 100k fuzz inputs
    python bench/crdt.py --fuzz 10000

Stores: a 10k-key LWWMap (worker-registry-like values), a 1k-tenant
WindowedCounter (3 replicas per tenant), a 100k-entry PrefixSummary (one
model, 8 workers). "delta merges/s" merges one-key deltas into the store;
"full merges/s" merges a whole copy; "delta after 1 %" is the join of the
deltas of 1 % of the keys changing, encoded, against the full state encoded.
"""

from __future__ import annotations

import argparse
import random
import time

from smg.crdt import LWWMap, PrefixSummary, Timestamp, WindowedCounter
from smg.crdt.codec import CodecError, decode, encode
from smg.hashing import chain_hashes


def rate(fn, seconds: float = 1.0) -> float:  # type: ignore[no-untyped-def]
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        count += 1
    return count / (time.perf_counter() - started)


def lww_store(n: int) -> tuple[LWWMap, list[LWWMap]]:
    store = LWWMap()
    deltas = []
    for i in range(n):
        value = {"url": f"http://10.0.{i // 256}.{i % 256}:8000", "models": ["m"], "status": "ready"}
        deltas.append(store.set(f"worker-{i}", value, Timestamp(i + 1, 0, "a#1")))
    return store, deltas


def windowed_store(n: int) -> tuple[WindowedCounter, list[WindowedCounter]]:
    store = WindowedCounter()
    deltas = [store.increment(f"tenant-{i}", f"n{r}#1", 100, 1 + i % 7) for i in range(n) for r in range(3)]
    return store, deltas


def prefix_store(n: int) -> tuple[PrefixSummary, list[PrefixSummary]]:
    store = PrefixSummary(budget=n, ttl_ms=10**9)
    deltas = []
    per_prompt = 20
    for i in range(n // per_prompt):
        chain = chain_hashes(f"prompt {i} block {b}".encode() for b in range(per_prompt))
        deltas.append(store.record("m", f"w{i % 8}", chain, Timestamp(i + 1, 0, "a#1")))
    return store, deltas


def report(name: str, store, deltas: list, change, size: int) -> None:  # type: ignore[no-untyped-def]
    full = encode(store)
    started = time.perf_counter()
    decoded = decode(full)
    decode_ms = (time.perf_counter() - started) * 1000
    assert decoded.state_digest() == store.state_digest()
    entries = len(deltas)
    replica = type(store)() if not isinstance(store, PrefixSummary) else PrefixSummary(budget=store.budget, ttl_ms=store.ttl_ms)
    i = 0

    def merge_delta() -> None:
        nonlocal i
        replica.merge(deltas[i % entries])
        i += 1

    delta_rate = rate(merge_delta)
    full_rate = rate(lambda: store.copy().merge(store), 1.0)
    changed = change(store, max(1, entries // 100))
    joined = changed[0].copy()
    for d in changed[1:]:
        joined.merge(d)
    delta_bytes = len(encode(joined))
    print(
        f"{name:<30}{len(full):>12,}{len(full) / size * 1000:>15,.0f}{delta_rate:>14,.0f}{full_rate:>12,.1f}"
        f"{delta_bytes:>14,}{100 * delta_bytes / len(full):>9.2f}%{decode_ms:>11.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fuzz", type=int, default=100_000, help="random inputs for the decoder")
    args = parser.parse_args()
    rng = random.Random(1)
    print(
        f"{'store':<30}{'full bytes':>12}{'B / 1k entries':>15}{'delta merge/s':>14}{'full merge/s':>12}"
        f"{'delta 1% B':>14}{'of full':>10}{'decode ms':>11}"
    )
    lww, lww_deltas = lww_store(10_000)
    report(
        "LWWMap 10k keys",
        lww,
        lww_deltas,
        lambda s, n: [
            s.set(f"worker-{rng.randrange(10_000)}", {"status": "draining"}, Timestamp(20_000 + k, 0, "b#1")) for k in range(n)
        ],
        len(lww.entries),
    )
    win, win_deltas = windowed_store(1000)
    report(
        "WindowedCounter 1k tenants",
        win,
        win_deltas,
        lambda s, n: [s.increment(f"tenant-{rng.randrange(1000)}", "n0#1", 100, 1) for _ in range(n)],
        sum(len(slots) for windows in win.keys.values() for slots in windows.values()),
    )
    summary, summary_deltas = prefix_store(100_000)
    report(
        "PrefixSummary 100k entries",
        summary,
        summary_deltas,
        lambda s, n: [s.record("m", "w1", chain_hashes([f"new {k}".encode()]), Timestamp(10**6 + k, 0, "a#1")) for k in range(n)],
        len(summary),
    )

    samples = [encode(lww_deltas[0]), encode(win_deltas[0]), encode(summary_deltas[0])]
    typed = 0
    started = time.perf_counter()
    for k in range(args.fuzz):
        if k % 2:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        else:
            data = bytearray(rng.choice(samples))
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        try:
            decode(data)
        except CodecError:
            typed += 1
    elapsed = time.perf_counter() - started
    print(f"\ndecoder fuzz: {args.fuzz:,} inputs in {elapsed:.1f} s, {typed:,} typed errors, 0 other exceptions")


if __name__ == "__main__":
    main()
