"""Cluster-wide tenant rate limits: over-admission in steady state and during a partition.

    python bench/cluster_limits.py                  # 3 gateways, limit 600/min, offered 20 req/s
    python bench/cluster_limits.py --rate 60 --limit 1200 --independent

Three `--ha-mesh` gateways share one tenant limit (requests per minute). An
open-loop client offers `--rate` requests per second for one whole minute
(one window, aligned to the limiter's wall-clock minutes, so the sliding
window starts empty and the exact answer is the limit itself), spread over the gateways evenly or unevenly. Scenarios:
steady state (even, uneven), and a partition that cuts one gateway off
(mesh traffic dropped both ways through `--mesh-fault-injection`), measured
once both sides have declared the other dead, so each applies its share
(limit x alive / known). Reported: admitted requests, over-admission as a
percentage of the limit, and the split over gateways. `--independent` adds
three gateways without the mesh, each counting alone (what a gateway without
shared limits, like the reference, admits).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import HOST, free_port, start, stop, wait_http

WINDOW = 60.0
TENANT_KEY = "bench-key"
ADMIN = {"authorization": "Bearer bench-admin"}  # the control plane (/mesh/*) needs the admin key


def start_cluster(
    count: int, mesh: bool, worker: str, limits: Path, logdir: Path, label: str
) -> tuple[list[str], list[str], list[subprocess.Popen[bytes]]]:
    urls, mesh_addresses, procs = [], [], []
    for i in range(count):
        port, mesh_port = free_port(), free_port()
        command = [sys.executable, "-m", "smg", "--log-level", "warn", "--history-backend", "memory", "--host", HOST, "--port", str(port),
                   "--prometheus-host", HOST, "--prometheus-port", str(free_port()), "--worker-urls", worker,
                   "--tenant-api-key", f"bench:{TENANT_KEY}", "--tenant-rate-limit-config", str(limits),
                   "--api-key", "bench-admin"]  # fmt: skip
        if mesh:
            command += ["--ha-mesh", "--mesh-host", HOST, "--mesh-port", str(mesh_port), "--mesh-fault-injection"]
            if mesh_addresses:
                command += ["--seeds", mesh_addresses[0]]
        procs.append(start(command, logdir / f"{label}-{i}.log"))
        urls.append(f"http://{HOST}:{port}")
        mesh_addresses.append(f"{HOST}:{mesh_port}")
    for url in urls:
        wait_http(url + "/readiness", 60)
    if mesh:
        wait_for(
            lambda: all(httpx.get(u + "/mesh/status", headers=ADMIN).json().get("node_count") == count for u in urls), "members"
        )
    return urls, mesh_addresses, procs


def wait_for(predicate, what: str, deadline: float = 30.0) -> float:  # type: ignore[no-untyped-def]
    start_at = time.monotonic()
    while time.monotonic() - start_at < deadline:
        if predicate():
            return time.monotonic() - start_at
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


async def offer(urls: list[str], weights: list[float], rate: float, seconds: float, seed: int) -> list[tuple[int, int]]:
    """Open loop: one request every 1/rate s to a gateway drawn by weight; (gateway index, status) each."""
    rng = random.Random(seed)
    results: list[tuple[int, int]] = []
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    headers = {"authorization": f"Bearer {TENANT_KEY}"}
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=None)) as client:

        async def one(index: int) -> None:
            try:
                response = await client.post(urls[index] + "/v1/chat/completions", json=body, headers=headers)
                results.append((index, response.status_code))
            except httpx.HTTPError:
                results.append((index, 0))

        async with trio.open_nursery() as nursery:
            begin = trio.current_time()
            for i in range(int(rate * seconds)):
                await trio.sleep_until(begin + i / rate)
                nursery.start_soon(one, rng.choices(range(len(urls)), weights)[0])
    return results


def run_window(urls: list[str], weights: list[float], rate: float, seed: int) -> list[tuple[int, int]]:
    """Offer load for one whole window, starting at a window boundary (the limiter's windows are
    wall-clock minutes): then the exact answer is the limit, with no sliding-window blend."""
    time.sleep(WINDOW - time.time() % WINDOW + 0.05)
    return trio.run(offer, urls, weights, rate, WINDOW - 0.5, seed)


def report(label: str, results: list[tuple[int, int]], limit: int, nodes: int) -> dict:
    admitted = [i for i, status in results if status == 200]
    split = [admitted.count(i) for i in range(nodes)]
    other = sum(1 for _, status in results if status not in (200, 429))
    over = (len(admitted) - limit) / limit * 100
    print(f"{label:<44}{len(results):>8}{len(admitted):>10}{over:>+10.1f} %   {'/'.join(map(str, split)):<16}{other:>6}")
    return {"scenario": label, "offered": len(results), "admitted": len(admitted), "over_admission_pct": round(over, 2),
            "per_gateway": split, "errors": other}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=600, help="requests per minute for the tenant")
    parser.add_argument("--rate", type=float, default=20.0, help="offered requests per second")
    parser.add_argument("--independent", action="store_true", help="also run three gateways without the mesh")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--skip-steady", action="store_true", help="only the partition (and --independent) scenarios")
    args = parser.parse_args()
    logdir = Path(tempfile.mkdtemp(prefix="smg-cluster-limits-"))
    limits = logdir / "limits.json"
    limits.write_text(json.dumps({"tenants": {"bench": {"requests_per_minute": args.limit}}}))
    worker_port = free_port()
    sim = start(
        [sys.executable, "-m", "smg", "sim-worker", "--port", str(worker_port), "--ttft-ms", "1", "--tpot-ms", "1",
         "--max-running", "256", "--log-level", "warn"],
        logdir / "worker.log",
    )  # fmt: skip
    worker = f"http://{HOST}:{worker_port}"
    rows, procs = [], []
    print(f"limit {args.limit}/min, offered {args.rate:g} req/s for {WINDOW:g} s ({args.rate * WINDOW:.0f} requests)")
    print(f"{'scenario':<44}{'offered':>8}{'admitted':>10}{'over-admission':>16}   {'per gateway':<16}{'errors':>6}")
    try:
        wait_http(worker + "/health")
        steady = [] if args.skip_steady else [("steady, even spread", [1, 1, 1]), ("steady, uneven spread 70/20/10", [7, 2, 1])]
        for label, weights in steady:
            urls, _, procs = start_cluster(3, True, worker, limits, logdir, label.split(",")[0])
            rows.append(report(label, run_window(urls, weights, args.rate, args.seed), args.limit, 3))
            stop(procs)
        urls, addresses, procs = start_cluster(3, True, worker, limits, logdir, "partition")
        for i, url in enumerate(urls):
            others = [a for j, a in enumerate(addresses) if (j == 2) != (i == 2)]
            httpx.post(url + "/mesh/faults", json={"drop_to": others}, headers=ADMIN).raise_for_status()
        took = wait_for(
            lambda: (
                httpx.get(urls[0] + "/mesh/rate-limits", headers=ADMIN).json()["share"] < 0.7
                and httpx.get(urls[2] + "/mesh/rate-limits", headers=ADMIN).json()["share"] < 0.4
            ),
            "both sides to see the partition",
        )
        print(f"(partition: both sides applied their share {took:.1f} s after the cut)")
        rows.append(
            report("partition 2|1, even spread (shares 2/3, 1/3)", run_window(urls, [1, 1, 1], args.rate, args.seed),
                   args.limit, 3)
        )  # fmt: skip
        stop(procs)
        if args.independent:
            urls, _, procs = start_cluster(3, False, worker, limits, logdir, "independent")
            rows.append(
                report("3 independent gateways (no shared count)", run_window(urls, [1, 1, 1], args.rate, args.seed),
                       args.limit, 3)
            )  # fmt: skip
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
    finally:
        stop([*procs, sim])
        print(f"logs: {logdir}")


if __name__ == "__main__":
    main()
