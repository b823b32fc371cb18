"""Routing quality on a multi-turn chat workload, per policy, on simulated workers.

    python bench/routing.py                          # every smg policy, plus the reference if installed
    python bench/routing.py --policies cache_aware round_robin --users 100

Workload: `--users` conversations, each with one of `--system-prompts`
shared system prompts (~3,000 characters), `--turns` turns whose history
grows (each turn resends the whole conversation), conversations starting as a
Poisson process and pausing an exponential think time between turns. The
same seeded workload runs against each target; the workers' prefix caches
are flushed in between. Reported per target: the workers' own cache hit
rate and uncached prompt tokens (prefill work), TTFT and end-to-end p50/p99
(streaming), and load spread (requests per worker: max / mean).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import HOST, free_port, free_ports, start, stop, wait_http

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec "
    "romeo sierra tango uniform victor whiskey xray yankee zulu network cache prefix token gateway engine "
    "latency throughput replica cluster shard worker policy request stream answer question system user"
).split()
# `python -m smg` imports the tree it runs in (its working directory comes first on sys.path): the
# simulated workers and smg gateways run in this script's own tree, so that a git worktree's copy of
# a bench measures the worktree's code (the editable install names one checkout only)
SOURCE = Path(__file__).resolve().parent.parent
SMG_POLICIES = ["cache_aware", "round_robin", "random", "power_of_two", "prefix_hash", "consistent_hashing", "manual"]


@dataclass
class Stats:
    ttft: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    errors: int = 0
    # per request: id, gateway (or worker) asked, worker that served, sent at (wall clock), TTFT (s)
    records: list[dict] = field(default_factory=list)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def make_workload(args: argparse.Namespace) -> tuple[list[str], list[tuple[float, int, list[str]]]]:
    """System prompts and, per user: start time, system prompt index, user messages."""
    rng = random.Random(args.seed)
    systems = [" ".join(rng.choice(WORDS) for _ in range(450)) + f" (persona {i})" for i in range(args.system_prompts)]
    users = []
    start_at = 0.0
    for _ in range(args.users):
        start_at += rng.expovariate(args.arrival_rate)
        messages = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) for _ in range(args.turns)]
        users.append((start_at, rng.randrange(len(systems)), messages))
    return systems, users


async def run_user(
    client: httpx.AsyncClient,
    url: str | Callable[[int], str],
    user_id: int,
    system: str,
    messages: list[str],
    think: random.Random,
    mean_think: float,
    max_tokens: int,
    stats: Stats,
) -> None:
    history = [{"role": "system", "content": system}]
    for turn, text in enumerate(messages):
        history.append({"role": "user", "content": text})
        body = {"model": "sim-model", "messages": history, "max_tokens": max_tokens, "stream": True}
        target = url(user_id) if callable(url) else url  # a cluster bench spreads turns over gateways
        started, sent_at = time.perf_counter(), time.time()
        first = None
        reply = []
        request_id = f"u{user_id}-t{turn}"
        headers = {"x-smg-routing-key": f"user-{user_id}", "x-request-id": request_id}
        try:
            async with client.stream("POST", target + "/v1/chat/completions", json=body, headers=headers) as response:
                worker = response.headers.get("x-smg-routed-worker-id", target)
                if response.status_code != 200:
                    stats.errors += 1
                    await response.aread()
                    return
                async for line in response.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    if first is None:
                        first = time.perf_counter()
                    delta = json.loads(line[6:])["choices"]
                    if delta and delta[0]["delta"].get("content"):
                        reply.append(delta[0]["delta"]["content"])
        except httpx.HTTPError:
            stats.errors += 1
            return
        done = time.perf_counter()
        stats.ttft.append((first or done) - started)
        stats.e2e.append(done - started)
        stats.records.append(
            {"id": request_id, "target": target, "worker": worker, "at": sent_at, "ttft": (first or done) - started}
        )
        history.append({"role": "assistant", "content": "".join(reply)})
        await trio.sleep(think.expovariate(1 / mean_think))


async def drive(
    url: str | Callable[[int], str], systems: list[str], users: list[tuple[float, int, list[str]]], args: argparse.Namespace
) -> Stats:
    stats = Stats()
    think = random.Random(args.seed + 1)
    # the client's own full garbage collections (35 ms seen) would land in the TTFT it measures
    # (unfrozen afterwards: each run's runner would otherwise stay frozen, alive, for good)
    gc.collect()
    gc.freeze()
    try:
        return await _drive(stats, think, url, systems, users, args)
    finally:
        gc.unfreeze()


async def _drive(
    stats: Stats,
    think: random.Random,
    url: str | Callable[[int], str],
    systems: list[str],
    users: list[tuple[float, int, list[str]]],
    args: argparse.Namespace,
) -> Stats:
    # fresh_connections: a new connection per request, so that the kernel spreads the requests
    # of a gateway started with --processes over its processes (kept connections stick to one)
    keepalive = 0 if getattr(args, "fresh_connections", False) else args.users
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=keepalive)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client, trio.open_nursery() as nursery:
        begin = trio.current_time()
        for user_id, (start_at, system, messages) in enumerate(users):
            await trio.sleep_until(begin + start_at)
            nursery.start_soon(
                run_user, client, url, user_id, systems[system], messages, think, args.think_secs, args.max_tokens, stats
            )
    return stats


def worker_stats(urls: list[str]) -> list[dict]:
    return [httpx.get(u + "/sim/stats").json() for u in urls]


def start_workers(args: argparse.Namespace, logdir: Path) -> tuple[subprocess.Popen[bytes], list[str]]:
    """`--workers` simulated workers in one process; a realistic-ish engine: 20k prefill tokens/s
    (or `--prefill-tokens-per-sec`), prefills unlimited (or `--prefill-slots` at once), 2 ms per
    output token, 32 running at most, `--cache-blocks` of prefix cache each."""
    port = free_ports(args.workers)  # consecutive ports, all free now
    speed = getattr(args, "prefill_tokens_per_sec", 20000)
    slots = getattr(args, "prefill_slots", 0)
    sim = start(
        [sys.executable, "-m", "smg", "sim-worker", "--port", str(port), "--count", str(args.workers), "--ttft-ms", "2",
         "--prefill-tokens-per-sec", str(speed), "--prefill-slots", str(slots), "--tpot-ms", "2", "--max-running", "32",
         "--cache-blocks", str(args.cache_blocks), "--log-level", "warn"],
        logdir / "workers.log",
        cwd=str(SOURCE),
    )  # fmt: skip
    return sim, [f"http://{HOST}:{port + i}" for i in range(args.workers)]


def cache_figures(before: list[dict], after: list[dict]) -> tuple[int, int, list[int], float]:
    """From two `/sim/stats` snapshots: prompt tokens, cached tokens, requests per worker, spread (max / mean)."""
    pairs = list(zip(after, before, strict=True))
    prompt = sum(a["prompt_tokens"] - b["prompt_tokens"] for a, b in pairs)
    cached = sum(a["cached_tokens"] - b["cached_tokens"] for a, b in pairs)
    per_worker = [a["requests"] - b["requests"] for a, b in pairs]
    spread = max(per_worker) / (sum(per_worker) / len(per_worker)) if sum(per_worker) else float("nan")
    return prompt, cached, per_worker, spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", nargs="+", default=SMG_POLICIES)
    parser.add_argument("--reference", help="path of the reference `smg` (default: .venv-reference/bin/smg when present)")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32, help="answer length")
    parser.add_argument("--system-prompts", type=int, default=8)
    parser.add_argument("--arrival-rate", type=float, default=10.0, help="new conversations per second")
    parser.add_argument("--think-secs", type=float, default=0.5, help="mean pause between turns")
    parser.add_argument("--cache-blocks", type=int, default=2000, help="prefix cache of each worker, in 16-token blocks")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the table to this file")
    args = parser.parse_args()
    reference = (
        None
        if args.no_reference
        else (args.reference or (".venv-reference/bin/smg" if Path(".venv-reference/bin/smg").exists() else None))
    )

    logdir = Path(tempfile.mkdtemp(prefix="smg-routing-"))
    sim, urls = start_workers(args, logdir)
    systems, users = make_workload(args)
    targets = [
        (f"smg {p}", [sys.executable, "-m", "smg", "--policy", p, "--log-level", "warn", "--history-backend", "memory"])
        for p in args.policies
    ]
    if reference:
        targets += [(f"reference {p}", [reference, "launch", "--policy", p]) for p in ("cache_aware", "round_robin")]
    rows = []
    try:
        for url in urls:
            wait_http(url + "/health")
        print(f"{len(users)} conversations x {args.turns} turns, {args.system_prompts} system prompts, {args.workers} workers")
        print(
            f"{'target':<26}{'hit rate':>9}{'uncached tok':>14}{'TTFT p50':>10}{'p99':>8}{'e2e p50':>9}{'p99':>8}{'spread':>8}{'errors':>8}"
        )
        for name, command in targets:
            gw_port = free_port()
            gateway = start(
                [*command, "--host", HOST, "--port", str(gw_port), "--worker-urls", *urls,
                 "--prometheus-host", HOST, "--prometheus-port", str(free_port())],
                logdir / f"{name.replace(' ', '-')}.log",
                cwd=None if name.startswith("reference") else str(SOURCE),
            )  # fmt: skip
            try:
                wait_http(f"http://{HOST}:{gw_port}/readiness", 60)
                for url in urls:
                    httpx.post(url + "/flush_cache")
                before = worker_stats(urls)
                stats = trio.run(drive, f"http://{HOST}:{gw_port}", systems, users, args)
                after = worker_stats(urls)
            finally:
                stop([gateway])
            prompt, cached, per_worker, spread = cache_figures(before, after)
            row = {
                "target": name, "hit_rate": round(cached / prompt, 3) if prompt else 0.0, "uncached_tokens": prompt - cached,
                "ttft_p50_ms": round(pct(stats.ttft, 50), 1), "ttft_p99_ms": round(pct(stats.ttft, 99), 1),
                "e2e_p50_ms": round(pct(stats.e2e, 50), 1), "e2e_p99_ms": round(pct(stats.e2e, 99), 1),
                "spread": round(spread, 2), "per_worker": per_worker, "errors": stats.errors,
            }  # fmt: skip
            rows.append(row)
            print(
                f"{name:<26}{row['hit_rate']:>9.3f}{row['uncached_tokens']:>14}{row['ttft_p50_ms']:>10.1f}{row['ttft_p99_ms']:>8.1f}"
                f"{row['e2e_p50_ms']:>9.1f}{row['e2e_p99_ms']:>8.1f}{row['spread']:>8.2f}{row['errors']:>8}"
            )
        by = {r["target"]: r for r in rows}
        if "smg cache_aware" in by and "smg round_robin" in by and by["smg cache_aware"]["uncached_tokens"]:
            ratio = by["smg round_robin"]["uncached_tokens"] / by["smg cache_aware"]["uncached_tokens"]
            print(f"\nuncached prompt tokens, round_robin / cache_aware: x{ratio:.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
    finally:
        stop([sim])
        print(f"logs: {logdir}")


if __name__ == "__main__":
    main()
