"""What the gateway adds: the same load direct to a worker, through smg, and
through the reference gateway (when installed), in one run.

    python bench/overhead.py                     # smg (pool), smg (httpx), direct
    python bench/overhead.py --reference .venv-reference/bin/smg
    python bench/overhead.py --floor --upstream-clients pool --scenarios "tiny chat c=32" --rounds 5
    python bench/overhead.py --upstream-clients pool --processes 2     # also smg --processes 2
    git worktree add /tmp/before HEAD~3 && python bench/overhead.py --baseline /tmp/before --rounds 3

On a shared machine, `--rounds N` measures every target N times, interleaved,
and prints the median of each figure as well: a before/after comparison of one
change is only as good as its noise, so say how many rounds it took.

One simulated worker with zero artificial delay serves every target, so the
figures are the cost of the proxies (and of the worker itself, for direct).
Gateway CPU per request is read from /proc/<pid>/stat (user + system time of
all the gateway's threads) over each measured phase; with `--processes`, of the
parent and every gateway process under it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import Result, build_request, run_load

CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def family_cpu_seconds(pid: int) -> float:
    """CPU of `pid` and its children (the gateway processes of `--processes N`)."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in _children(pid))


def wakeups(pid: int) -> dict[int, int]:
    """Voluntary context switches of each thread of `pid`, by thread id: each is a time it blocked
    and was woken again. On a small virtual machine a wake-up from idle can cost more CPU than
    the work it wakes for, so their count explains CPU figures that the work alone does not.
    Compare two readings with `woken_since` (threads come and go)."""
    counts: dict[int, int] = {}
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:  # the thread ended meanwhile
            continue
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                counts[int(status.parent.name)] = int(line.split()[1])
    return counts


def family_wakeups(pid: int) -> dict[int, int]:
    """`wakeups` of `pid` and its children (see `family_cpu_seconds`), by thread id."""
    counts = wakeups(pid)
    for child in _children(pid):
        counts.update(wakeups(child))
    return counts


def woken_since(before: dict[int, int], after: dict[int, int]) -> int:
    """Wake-ups between two `family_wakeups` readings: a thread that started meanwhile counts in
    full; one that ended meanwhile is missing from `after` and its last wake-ups are lost (trio's
    idle worker threads end after 10 s), so the figure is a lower bound."""
    return sum(count - before.get(tid, 0) for tid, count in after.items())


def _children(pid: int) -> list[int]:
    found = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in path.read_text().split()]
        except OSError:  # the thread ended meanwhile
            continue
    return found


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (TCP and UDP), as checked now."""
    import socket

    for _ in range(100):
        first = free_port()
        socks = []
        try:
            for port in range(first, first + count):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    sock = socket.socket(socket.AF_INET, kind)
                    socks.append(sock)
                    sock.bind((HOST, port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no run of free ports")


def wait_http(url: str, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {deadline}s")


def stop(procs: list[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL whatever is still running after `grace` seconds (the reference's
    router does not always exit on SIGTERM, and a leftover process skews every later figure)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None  # None: the worker itself (direct)


def start(cmd: list[str], log: Path, cwd: str | None = None) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)


def start_targets(args: argparse.Namespace, worker_url: str, logdir: Path) -> list[Target]:
    targets = []
    # `python -m smg` imports the package of its working directory first: a baseline tree
    # (a `git worktree` of an earlier commit) runs from there, this checkout from here
    sources = [("smg", None)] + ([("base", args.baseline)] if args.baseline else [])
    for label, source in sources:
        for client in args.upstream_clients:
            port = free_port()
            proc = start(
                [sys.executable, "-m", "smg", "--host", HOST, "--port", str(port), "--worker-urls", worker_url,
                 "--policy", "round_robin", "--prometheus-host", HOST, "--prometheus-port", str(free_port()),
                 "--upstream-client", client, "--log-level", args.log_level, "--history-backend", "memory"],
                logdir / f"{label}-{client}.log",
                cwd=source or str(Path(__file__).resolve().parent.parent),
            )  # fmt: skip
            targets.append(Target(f"{label} ({client})", port, proc))
    for count in args.processes:
        port = free_port()
        proc = start(
            [sys.executable, "-m", "smg", "--host", HOST, "--port", str(port), "--worker-urls", worker_url,
             "--policy", "round_robin", "--prometheus-host", HOST, "--prometheus-port", str(free_ports(count)),
             "--mesh-port", str(free_ports(count)), "--processes", str(count), "--upstream-client", "pool",
             "--log-level", args.log_level, "--history-backend", "memory"],
            logdir / f"smg-x{count}.log",
            cwd=str(Path(__file__).resolve().parent.parent),
        )  # fmt: skip
        targets.append(Target(f"smg x{count}", port, proc))
    if args.reference:
        port = free_port()
        proc = start(
            [args.reference, "launch", "--host", HOST, "--port", str(port), "--worker-urls", worker_url,
             "--policy", "round_robin", "--prometheus-host", HOST, "--prometheus-port", str(free_port())],
            logdir / "reference.log",
        )  # fmt: skip
        targets.append(Target("reference", port, proc))
    if args.floor:
        port = free_port()
        floor = str(Path(__file__).parent / "server_floor.py")
        proc = start([sys.executable, floor, "--serve", "smg", str(port)], logdir / "floor.log")
        targets.append(Target("floor", port, proc))
    for target in targets:
        wait_http(f"http://{HOST}:{target.port}/readiness")
    return targets


SCENARIOS = {
    "tiny chat c=32": (32, {"model": "sim-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}),
    # 62 tokens + the role chunk + the finish chunk = 64 events, then [DONE]
    "stream 64 chunks c=32": (
        32,
        {"model": "sim-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 62, "stream": True},
    ),
    "tiny chat c=1": (1, {"model": "sim-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}),
}


async def measure(target: Target, concurrency: int, body: bytes, count: int, warmup: int) -> tuple[Result, float | None]:
    request = build_request(HOST, target.port, "/v1/chat/completions", body)
    await run_load(HOST, target.port, request, min(concurrency, 8), warmup)
    before = family_cpu_seconds(target.proc.pid) if target.proc else None
    result = await run_load(HOST, target.port, request, concurrency, count)
    after = family_cpu_seconds(target.proc.pid) if target.proc else None
    cpu = (after - before) / max(1, len(result.latencies)) if after is not None and before is not None else None
    return result, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="requests per target and scenario (c=1 uses a third)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--reference", help="path of the reference `smg` executable (its own venv)")
    parser.add_argument(
        "--baseline", metavar="DIR", help="also run smg from this source tree (e.g. a git worktree of an earlier commit)"
    )
    parser.add_argument("--upstream-clients", nargs="+", default=["pool", "httpx"])
    parser.add_argument("--log-level", default="info", help="smg log level during the run (default: info, as users run it)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--floor", action="store_true", help="also measure a trivial ASGI app on smg's HTTP server (non-streaming)"
    )
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS), metavar="NAME")
    parser.add_argument("--rounds", type=int, default=1, help="measure each target this many times, interleaved; medians")
    parser.add_argument(
        "--processes", type=int, nargs="*", default=[], metavar="N", help="also smg with --processes N (pool client), per N"
    )
    args = parser.parse_args()
    if args.reference is None and Path(".venv-reference/bin/smg").exists():
        args.reference = ".venv-reference/bin/smg"

    logdir = Path(tempfile.mkdtemp(prefix="smg-bench-"))
    worker_port = free_port()
    worker = start(
        [sys.executable, "-m", "smg", "sim-worker", "--port", str(worker_port), "--ttft-ms", "0", "--tpot-ms", "0",
         "--log-level", "warn"],
        logdir / "worker.log",
    )  # fmt: skip
    procs = [worker]
    rows = []
    try:
        worker_url = f"http://{HOST}:{worker_port}"
        wait_http(worker_url + "/health")
        targets = start_targets(args, worker_url, logdir)
        procs += [t.proc for t in targets if t.proc]
        targets.insert(0, Target("direct", worker_port, None))
        print(f"{'scenario':<24}{'target':<14}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'gw CPU ms/req':>15}{'errors':>8}")
        for scenario in args.scenarios:
            concurrency, payload = SCENARIOS[scenario]
            body = json.dumps(payload).encode()
            count = args.requests if concurrency > 1 else max(300, args.requests // 3)
            direct_p50 = None
            for target in [t for _ in range(args.rounds) for t in targets]:
                if target.name == "floor" and payload.get("stream"):
                    continue  # the floor app answers one JSON body; it has no stream to compare
                result, cpu = trio.run(measure, target, concurrency, body, count, args.warmup)
                p50, p99 = result.percentile(50) * 1000, result.percentile(99) * 1000
                direct_p50 = p50 if target.name == "direct" else direct_p50
                bad = result.errors + sum(n for s, n in result.statuses.items() if s != 200)
                cpu_text = f"{cpu * 1000:.3f}" if cpu is not None else "-"
                print(f"{scenario:<24}{target.name:<14}{result.rate:>9.0f}{p50:>9.2f}{p99:>9.2f}{cpu_text:>15}{bad:>8}")
                rows.append(
                    {"scenario": scenario, "target": target.name, "rps": round(result.rate, 1), "p50_ms": round(p50, 3),
                     "p99_ms": round(p99, 3), "cpu_ms_per_req": None if cpu is None else round(cpu * 1000, 4),
                     "added_p50_ms": None if direct_p50 is None or target.name == "direct" else round(p50 - direct_p50, 3),
                     "errors": bad}
                )  # fmt: skip
            print()
        if args.rounds > 1:
            rows = _medians(rows)
        _print_ratios(rows)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
    finally:
        stop(procs)
        print(f"logs: {logdir}")


def _medians(rows: list[dict]) -> list[dict]:
    """One row per scenario and target: the median of each figure over the rounds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["scenario"], row["target"]), []).append(row)
    print(f"medians over {len(next(iter(groups.values())))} rounds:")
    out = []
    for (scenario, target), group in groups.items():
        row = {"scenario": scenario, "target": target, "rounds": len(group)}
        for key in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req", "added_p50_ms", "errors"):
            values = [r[key] for r in group if r[key] is not None]
            row[key] = statistics.median(values) if values else None
        cpu = f"{row['cpu_ms_per_req']:.3f}" if row["cpu_ms_per_req"] is not None else "-"
        spread = [r["cpu_ms_per_req"] for r in group if r["cpu_ms_per_req"] is not None]
        spread_text = f"  (CPU {min(spread):.3f}-{max(spread):.3f})" if spread else ""
        print(f"{scenario:<24}{target:<14}{row['rps']:>9.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}{cpu:>15}{spread_text}")
        out.append(row)
    print()
    return out


def _print_ratios(rows: list[dict]) -> None:
    """smg against the reference, and against the baseline tree: gateway CPU per request, req/s, added p50."""
    by = {(r["scenario"], r["target"]): r for r in rows}
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    targets = {t for _, t in by}
    pairs = [("smg (pool)", "reference")] if "reference" in targets else []
    pairs += [(f"smg{t[4:]}", t) for t in sorted(targets) if t.startswith("base (")]
    for ours_name, theirs_name in pairs:
        print(f"ratios, {ours_name} / {theirs_name}:")
        for scenario in scenarios:
            ours, theirs = by.get((scenario, ours_name)), by.get((scenario, theirs_name))
            if ours and theirs and theirs["cpu_ms_per_req"]:
                print(
                    f"  {scenario:<24} CPU/req x{ours['cpu_ms_per_req'] / theirs['cpu_ms_per_req']:.2f}   "
                    f"req/s x{ours['rps'] / theirs['rps']:.2f}   "
                    f"added p50 {ours['added_p50_ms']:.2f} ms vs {theirs['added_p50_ms']:.2f} ms"
                )


if __name__ == "__main__":
    main()
