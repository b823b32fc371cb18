"""Cache-aware routing quality when clients spread over several gateways.

    python bench/cluster_routing.py                       # 1, 3 and 8 gateways; smg and the reference
    python bench/cluster_routing.py --sizes 1 3 --no-reference
    python bench/cluster_routing.py --sizes 1 --processes 2 4 --no-reference   # one gateway, N processes

The multi-turn workload of `bench/routing.py` (default: 64 conversations x 6
turns, 8 shared system prompts) runs against 1, 3 and 8 gateway processes in
front of the same simulated prefix-cache workers; every request goes to the
next gateway in turn, as from a round-robin L4 balancer, so consecutive turns
of one conversation land on different gateways. For N > 1, smg runs both as
independent gateways (no mesh) and as one `--ha-mesh` cluster sharing prefix
summaries; the reference runs as 3 nodes with `--enable-mesh`. Reported: the
workers' prefix-cache hit rate, uncached prompt tokens, TTFT p50/p99, load
spread (requests per worker: max / mean), and the hit rate relative to one
smg gateway. On 2 cores, 8 gateways compete for CPU: the hit rate is the
figure, TTFT is secondary; the arrival rate is kept low.

The issue-20 workload (TTFT tails at 8 gateways) is

    python bench/cluster_routing.py --sizes 1 8 --no-reference --users 192 --turns 6 --cache-blocks 1000 \
        --prefill-slots 1 --prefill-tokens-per-sec 10000 --spread random --trace

`--prefill-slots 1` makes uncached prompts queue behind one another on each worker; `--spread
random` sends each request to a gateway drawn at random; `--trace` starts the gateways with
`--log-routing-decisions` and, after each run, joins every request's client record, its
gateway's beliefs and its worker's prefill record (`bench/routing_trace.py`): it prints where
the slow requests' time went and writes the joined records to `<logs>/<target>.jsonl`. The
gateways' CPU and wake-ups (voluntary context switches) during each run are printed too (2 cores
are shared by all the processes; on a virtual machine, a wake-up from idle costs tens to hundreds
of microseconds of CPU, more than most of the work it wakes for).

`--processes N` adds one gateway started with `--processes N`: its processes share one port
(the kernel spreads the client's connections over them; the client opens one per request, so
consecutive turns land on different processes) and replicate their state as mesh members, so
its hit rate should equal one process's.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import HOST, family_cpu_seconds, family_wakeups, free_port, free_ports, start, stop, wait_http, woken_since
from routing import SOURCE, cache_figures, drive, make_workload, pct, start_workers, worker_stats
from routing_trace import explain, read_decisions

METRICS_PORTS: dict[str, list[int]] = {}  # gateway URL -> its processes' metrics ports


def served_per_process(gateway: str) -> list[int]:
    """Chat requests each process of `gateway` served, from its own metrics port."""
    counts = []
    for port in METRICS_PORTS.get(gateway, []):
        text = httpx.get(f"http://{HOST}:{port}/metrics", timeout=5).text
        counts.append(
            round(
                sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("smg_router_requests_total{"))
            )
        )
    return counts


def start_gateways(
    label: str,
    count: int,
    mesh: bool,
    urls: list[str],
    logdir: Path,
    reference: str | None,
    processes: int = 1,
    trace: bool = False,
    policy: str = "cache_aware",
    gateway_args: Sequence[str] = (),
) -> tuple[list[str], list[subprocess.Popen[bytes]]]:
    """`count` gateways, independent or in one mesh; the reference's when `reference` is its path;
    each with `--processes processes` when more than 1, and (ours) `gateway_args`."""
    procs, gateways, seed = [], [], None
    taken: set[int] = set()  # a port is free only until someone binds it: never hand one out twice

    def fresh(pick: Callable[[], int], span: int = 1) -> int:
        while True:
            first = pick()
            ports = set(range(first, first + span))
            if not ports & taken:
                taken.update(ports)
                return first

    for i in range(count):
        port, mesh_port = fresh(free_port), fresh(lambda: free_ports(processes), processes)
        base = (
            [reference, "launch"]
            if reference
            else [sys.executable, "-m", "smg", "--log-level", "warn", "--history-backend", "memory"]
        )
        metrics = fresh(lambda: free_ports(processes), processes)
        METRICS_PORTS[f"http://{HOST}:{port}"] = [metrics + k for k in range(processes)]
        command = [*base, "--policy", policy, "--host", HOST, "--port", str(port),
                   "--prometheus-host", HOST, "--prometheus-port", str(metrics)]  # fmt: skip
        if processes > 1:
            command += ["--processes", str(processes), "--mesh-host", HOST, "--mesh-port", str(mesh_port)]
        if trace and not reference:
            command += ["--log-routing-decisions", "--log-json"]
        if not reference:
            command += gateway_args
        if i == 0 or not mesh:
            command += ["--worker-urls", *urls]  # mesh members learn the workers from the first
        if mesh:
            command += ["--enable-mesh" if reference else "--ha-mesh", "--mesh-host", HOST, "--mesh-port", str(mesh_port)]
            if seed is not None:
                command += ["--mesh-peer-urls", seed]
            seed = seed or f"{HOST}:{mesh_port}"
        procs.append(start(command, logdir / f"{label}-{i}.log", cwd=None if reference else str(SOURCE)))
        gateways.append(f"http://{HOST}:{port}")
    try:
        for url in gateways:
            wait_http(url + "/readiness", 60)
    except TimeoutError:
        stop(procs)  # a gateway that could not start leaves no others running behind it
        raise
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # every gateway lists every worker (a mesh spreads them)
        if all(len(httpx.get(g + "/workers").json().get("workers", [])) == len(urls) for g in gateways):
            break
        time.sleep(0.2)
    return gateways, procs


class Run(NamedTuple):
    """One target of the bench: gateways (or the oracle: none) and how requests reach them."""

    label: str
    count: int  # gateways (0: the oracle, straight to the workers)
    mesh: bool
    binary: str | None  # the reference's `smg`, or None for ours
    processes: int
    policy: str


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 3, 8])
    parser.add_argument("--reference", help="path of the reference `smg` (default: .venv-reference/bin/smg when present)")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--system-prompts", type=int, default=8)
    parser.add_argument("--arrival-rate", type=float, default=4.0, help="new conversations per second")
    parser.add_argument("--think-secs", type=float, default=0.5)
    parser.add_argument("--cache-blocks", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="run everything this often (seeds --seed, --seed+1, ...); medians")
    parser.add_argument("--processes", type=int, nargs="*", default=[], help="also one smg gateway with --processes N")
    parser.add_argument("--prefill-slots", type=int, default=0, help="prefills each worker runs at once (0: no limit)")
    parser.add_argument("--prefill-tokens-per-sec", type=float, default=20000.0)
    parser.add_argument(
        "--spread",
        choices=["round-robin", "random", "first"],
        default="round-robin",
        help="how requests pick a gateway (first: all to one gateway; its peers only replicate)",
    )
    parser.add_argument("--no-independent", action="store_true", help="N > 1: only the meshed gateways")
    parser.add_argument("--oracle", action="store_true", help="also clients pinned to workers by system prompt, no gateway")
    parser.add_argument("--round-robin", action="store_true", help="also every size with --policy round_robin (meshed)")
    parser.add_argument("--kill-at", type=float, help="meshed runs: SIGKILL the last gateway this many seconds in")
    parser.add_argument(
        "--gateway-arg", action="append", default=[], metavar="ARG",
        help="one more argument for every smg gateway (repeat; e.g. --gateway-arg=--upstream-pool-idle-timeout-secs=0); "
             "the gateways run in the bench's source tree, so a relative path is relative to it",
    )  # fmt: skip
    parser.add_argument("--trace", action="store_true", help="explain the TTFT tail from the gateways' and workers' records")
    parser.add_argument(
        "--slow-ms", type=float, default=300.0, help="--trace: a request slower than this to its first token is slow"
    )
    args = parser.parse_args()
    default_ref = Path(".venv-reference/bin/smg")
    reference = None if args.no_reference else (args.reference or (str(default_ref) if default_ref.exists() else None))

    logdir = Path(tempfile.mkdtemp(prefix="smg-cluster-routing-"))
    sim, urls = start_workers(args, logdir)
    runs = [Run("oracle (pinned)", 0, False, None, 1, "")] if args.oracle else []
    for n in args.sizes:
        if n == 1:
            runs.append(Run("smg x1", 1, False, None, 1, "cache_aware"))
        else:
            if not args.no_independent:
                runs.append(Run(f"smg x{n} independent", n, False, None, 1, "cache_aware"))
            runs.append(Run(f"smg x{n} ha-mesh", n, True, None, 1, "cache_aware"))
    if args.round_robin:
        runs += [Run(f"smg x{n} round_robin", n, n > 1, None, 1, "round_robin") for n in args.sizes]
    runs += [Run(f"smg x1 --processes {p}", 1, False, None, p, "cache_aware") for p in args.processes]
    if reference:
        runs += [Run("reference x1", 1, False, reference, 1, "cache_aware")]
        runs += [Run("reference x3 independent", 3, False, reference, 1, "cache_aware")]
        runs.append(Run("reference x3 mesh", 3, True, reference, 1, "cache_aware"))
    rows: list[dict[str, Any]] = []
    first_seed = args.seed
    try:
        for url in urls:
            wait_http(url + "/health")
        for repeat in range(args.repeat):
            args.seed = first_seed + repeat
            systems, users = make_workload(args)
            print(
                f"seed {args.seed}: {len(users)} conversations x {args.turns} turns, {args.workers} workers, "
                f"requests {args.spread} over gateways"
            )
            print(
                f"{'target':<26}{'hit rate':>9}{'vs x1':>7}{'uncached tok':>14}{'TTFT p50':>10}{'p99':>8}{'spread':>8}{'errors':>8}"
            )
            this_seed: list[dict[str, Any]] = []
            for run in runs:
                row = run_target(run, args, urls, sim, logdir, systems, users, this_seed)
                this_seed.append(row)
            rows += this_seed
        if args.repeat > 1:
            print_medians(runs, rows, args.repeat)
    finally:
        stop([sim])
        print(f"logs: {logdir}")


def run_target(
    run: Run,
    args: argparse.Namespace,
    urls: list[str],
    sim: subprocess.Popen[bytes],
    logdir: Path,
    systems: list[str],
    users: list[tuple[float, int, list[str]]],
    earlier: list[dict[str, Any]],
) -> dict[str, Any]:
    """Run the workload against one target; print its row (and its trace); return the row."""
    label = run.label
    name = f"{label.replace(' ', '-')}-seed{args.seed}"
    trace = args.trace and run.binary is None and run.count > 0
    procs: list[subprocess.Popen[bytes]] = []
    if run.count:
        gateways, procs = start_gateways(
            name, run.count, run.mesh, urls, logdir, run.binary, run.processes, trace, run.policy, args.gateway_arg
        )
    try:
        for url in urls:
            httpx.post(url + "/flush_cache")
            httpx.delete(url + "/sim/prefills")
        before = worker_stats(urls)
        args.fresh_connections = run.processes > 1
        target: Callable[[int], str]
        serving = list(gateways) if run.count else []  # what the client's balancer sends to (a killed one leaves)
        if not run.count:  # the oracle: every conversation of a system prompt on one worker
            target = lambda user: urls[users[user][1] % len(urls)]  # noqa: E731
        elif args.spread == "first":  # the others only replicate: the mesh's cost without spreading the requests
            target = lambda _user: serving[0]  # noqa: E731
        elif args.spread == "random":
            pick = partial(random.Random(args.seed + 2).choice, serving)
            target = lambda _user: pick()  # noqa: E731
        else:
            turn = itertools.count()
            target = lambda _user: serving[next(turn) % len(serving)]  # noqa: E731
        cpu_before, wall_before = {p.pid: family_cpu_seconds(p.pid) for p in procs}, time.monotonic()
        wakes_before = {p.pid: family_wakeups(p.pid) for p in procs}
        sim_before, client_before = family_cpu_seconds(sim.pid), time.process_time()
        killing = args.kill_at is not None and run.mesh and run.binary is None
        kill: dict[str, float] = {}
        if killing:
            stats = trio.run(drive_and_kill, target, systems, users, args, procs, serving, kill)
        else:
            stats = trio.run(drive, target, systems, users, args)
        # (a killed gateway's CPU until its kill is not counted: /proc has no record of it now)
        cpu = sum(family_cpu_seconds(p.pid) - cpu_before[p.pid] for p in procs if p.poll() is None)
        wakes = sum(woken_since(wakes_before[p.pid], family_wakeups(p.pid)) for p in procs if p.poll() is None)
        wall = time.monotonic() - wall_before
        sim_cpu, client_cpu = family_cpu_seconds(sim.pid) - sim_before, time.process_time() - client_before
        after = worker_stats(urls)
        if run.processes > 1:
            print(f"  ({label}: requests per process {served_per_process(gateways[0])})")
        prefills = {url: httpx.get(url + "/sim/prefills", timeout=30).json()["prefills"] for url in urls} if trace else {}
        replicated = replication_bytes(serving) if run.mesh and run.binary is None else {}
    finally:
        stop(procs)
    prompt, cached, _, spread = cache_figures(before, after)
    hit = cached / prompt if prompt else 0.0
    one = "reference x1" if run.binary else "smg x1"
    base = next((r["hit_rate"] for r in earlier if r["target"] == one), None)
    row = {"target": label, "seed": args.seed, "hit_rate": round(hit, 3), "vs_x1": hit / base if base else None,
           "uncached_tokens": prompt - cached, "ttft_p50_ms": round(pct(stats.ttft, 50), 1),
           "ttft_p99_ms": round(pct(stats.ttft, 99), 1), "ttft_max_ms": round(1000 * max(stats.ttft, default=0)),
           "spread": round(spread, 2), "errors": stats.errors, "cpu": 100 * cpu / wall,
           "wakeups_per_sec": round(wakes / wall)}  # fmt: skip
    relative = f"{row['vs_x1']:>6.2f}x" if base else f"{'':>7}"
    print(
        f"{label:<26}{hit:>9.3f}{relative}{row['uncached_tokens']:>14}{row['ttft_p50_ms']:>10.1f}"
        f"{row['ttft_p99_ms']:>8.1f}{row['spread']:>8.2f}{row['errors']:>8}"
    )
    print(f"  CPU over {wall:.0f} s, in % of one core (2 cores here): gateways {row['cpu']:.0f}, "
          f"workers {100 * sim_cpu / wall:.0f}, this client {100 * client_cpu / wall:.0f}; "
          f"TTFT max {row['ttft_max_ms']} ms; requests per worker {_per_worker(before, after)}")  # fmt: skip
    if procs:
        requests = len(stats.ttft) or 1
        print(f"  gateways' wake-ups: {wakes / wall:.0f}/s in all, {wakes / requests:.0f} per request")
    if replicated:
        print(
            "  replication sent by all gateways (KiB): " + ", ".join(f"{k} {v / 1024:.0f}" for k, v in sorted(replicated.items()))
        )
    if kill:
        for line in after_the_kill(stats.records, stats.errors, kill):
            print(line)
    if trace:
        logs = [path for path in logdir.glob(f"{name}-*.log") if path.stem[len(name) + 1 :].isdigit()]
        logs.sort(key=lambda path: int(path.stem[len(name) + 1 :]))
        for line in explain(stats.records, read_decisions(logs), prefills, args.slow_ms, logdir / f"{name}.jsonl"):
            print(line)
    return row


async def drive_and_kill(
    target: Callable[[int], str],
    systems: list[str],
    users: list[tuple[float, int, list[str]]],
    args: argparse.Namespace,
    procs: list[subprocess.Popen[bytes]],
    serving: list[str],
    kill: dict[str, float],
) -> Any:
    """`drive`, and `--kill-at` seconds in, SIGKILL the last gateway: the client's balancer stops
    sending to it at once (its requests in flight fail), and a survivor's view of it is polled:
    `kill` gets the wall-clock times it was killed, suspected and declared dead there."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_kill_later, args.kill_at, procs[-1], serving, kill)
        stats = await drive(target, systems, users, args)
        nursery.cancel_scope.cancel()
    return stats


async def _kill_later(at: float, proc: subprocess.Popen[bytes], serving: list[str], kill: dict[str, float]) -> None:
    await trio.sleep(at)
    victim, survivor = serving[-1], serving[0]
    async with httpx.AsyncClient(timeout=5) as client:
        name = (await client.get(victim + "/mesh/status")).json()["node_name"]
        proc.kill()
        kill["killed"] = time.time()
        serving.remove(victim)
        await trio.to_thread.run_sync(proc.wait)
        while "dead" not in kill:
            nodes = (await client.get(survivor + "/mesh/status")).json()["nodes"]
            status = next((n["status"] for n in nodes if n["name"] == name), "dead")  # (reaped: long dead)
            if status in ("suspect", "dead"):
                kill.setdefault(status, time.time())
            await trio.sleep(0.05)


def after_the_kill(records: list[dict[str, Any]], errors: int, kill: dict[str, float]) -> list[str]:
    """TTFT before the kill, in the 10 s after it, and later; when a survivor noticed."""
    killed = kill["killed"]
    spans = [("before", -math.inf, killed), ("first 10 s after", killed, killed + 10), ("later", killed + 10, math.inf)]
    lines = [
        f"  killed the last gateway; a survivor suspected it after {kill.get('suspect', math.nan) - killed:.2f} s "
        f"(its in-flight load left the survivors' view then) and declared it dead after {kill.get('dead', math.nan) - killed:.2f} s; "
        f"{errors} requests failed (in flight on it)"
    ]
    for label, begin, end in spans:
        ttfts = [r["ttft"] for r in records if begin <= r["at"] < end]
        lines.append(f"  requests sent {label}: {len(ttfts)}, TTFT p50 {pct(ttfts, 50):.1f} ms, p99 {pct(ttfts, 99):.1f} ms")
    return lines


def print_medians(runs: list[Run], rows: list[dict[str, Any]], repeat: int) -> None:
    """Per target, the median of each figure over the seeds, and every seed's p99 and max."""
    print(f"\nmedians of {repeat} runs (one per seed; each seed's figure in brackets)")
    print(f"{'target':<26}{'hit rate':>9}{'vs x1':>7}{'TTFT p50':>10}{'p99':>8}  {'(p99 per seed)':<22}{'max':>6}{'CPU %':>7}")
    for run in runs:
        mine = [r for r in rows if r["target"] == run.label]
        if not mine:
            continue

        def med(key: str, mine: list[dict[str, Any]] = mine) -> float:
            values = [r[key] for r in mine if r[key] is not None]
            return statistics.median(values) if values else float("nan")

        seeds = ", ".join(f"{r['ttft_p99_ms']:.0f}" for r in mine)
        print(
            f"{run.label:<26}{med('hit_rate'):>9.3f}{_ratio(med('vs_x1'))}{med('ttft_p50_ms'):>10.1f}{med('ttft_p99_ms'):>8.1f}"
            f"  {'(' + seeds + ')':<22}{med('ttft_max_ms'):>6.0f}{med('cpu'):>7.0f}"
        )


def replication_bytes(gateways: list[str]) -> dict[str, float]:
    """`smg_mesh_replication_bytes_sent` summed over the gateways, by store and kind (delta, full)."""
    sums: dict[str, float] = {}
    for gateway in gateways:
        for port in METRICS_PORTS.get(gateway, []):
            for line in httpx.get(f"http://{HOST}:{port}/metrics", timeout=5).text.splitlines():
                if line.startswith("smg_mesh_replication_bytes_sent"):
                    labels, _, value = line.rpartition(" ")
                    store = labels.split('store="')[1].split('"')[0]
                    kind = labels.split('kind="')[1].split('"')[0]
                    sums[f"{store}/{kind}"] = sums.get(f"{store}/{kind}", 0.0) + float(value)
    return sums


def _ratio(value: float) -> str:
    return f"{'':>7}" if value != value else f"{value:>6.2f}x"  # NaN: no x1 row to compare with


def _per_worker(before: list[dict], after: list[dict]) -> str:
    return "/".join(str(a["requests"] - b["requests"]) for a, b in zip(after, before, strict=True))


if __name__ == "__main__":
    main()
