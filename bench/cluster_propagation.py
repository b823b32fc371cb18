"""How fast a control-plane change reaches every gateway, and what an idle cluster costs.

    python bench/cluster_propagation.py                 # 3 smg gateways, and the reference's mesh if installed
    python bench/cluster_propagation.py --nodes 5 --repeat 20 --no-reference

`--nodes` gateways in one mesh (smg: `--ha-mesh`; the reference:
`--enable-mesh`). `--repeat` times, a simulated worker is added through `POST /workers`
on one gateway (in turn) and every other gateway's `/workers` is polled every
5 ms until it lists it: the time until all peers list it, p50 and max; then
the same for its deletion. Then the cluster sits idle for `--idle` seconds:
CPU per gateway process (from /proc) and mesh bytes sent per second (smg's
`smg_mesh_bytes_sent_total`).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import HOST, free_port, start, stop, wait_http

TICKS = 100  # clock ticks per second in /proc/<pid>/stat


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def start_mesh(count: int, reference: str | None, logdir: Path) -> tuple[list[str], list[str], list[subprocess.Popen[bytes]]]:
    urls, metrics, procs, seed = [], [], [], None
    for i in range(count):
        port, metrics_port, mesh_port = free_port(), free_port(), free_port()
        base = (
            [reference, "launch"]
            if reference
            else [sys.executable, "-m", "smg", "--log-level", "warn", "--history-backend", "memory"]
        )
        command = [*base, "--host", HOST, "--port", str(port), "--prometheus-host", HOST, "--prometheus-port", str(metrics_port),
                   "--enable-mesh" if reference else "--ha-mesh", "--mesh-host", HOST, "--mesh-port", str(mesh_port),
                   "--enable-igw"]  # fmt: skip
        if seed:
            command += ["--mesh-peer-urls", seed]
        seed = seed or f"{HOST}:{mesh_port}"
        procs.append(start(command, logdir / f"{'reference' if reference else 'smg'}-{i}.log"))
        urls.append(f"http://{HOST}:{port}")
        metrics.append(f"http://{HOST}:{metrics_port}/metrics")
    for url in urls:
        wait_http(url + "/health", 60)  # no workers yet: /readiness would say 503
    return urls, metrics, procs


def listed(url: str, worker: str) -> bool:
    return any(w.get("url", "").rstrip("/") == worker for w in httpx.get(url + "/workers", timeout=5).json().get("workers", []))


def until_all(urls: list[str], predicate, deadline: float = 30.0) -> float | None:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    pending = set(urls)
    while pending and time.perf_counter() - started < deadline:
        pending = {u for u in pending if not predicate(u)}
        if pending:
            time.sleep(0.005)
    return None if pending else time.perf_counter() - started


def measure(label: str, reference: str | None, workers: list[str], args: argparse.Namespace, logdir: Path) -> None:
    urls, metrics, procs = start_mesh(args.nodes, reference, logdir)
    adds, deletes = [], []
    try:
        time.sleep(3)  # let the mesh form
        for i in range(args.repeat):
            worker = workers[i]
            origin, others = urls[i % len(urls)], [u for j, u in enumerate(urls) if j != i % len(urls)]
            started = time.perf_counter()
            response = httpx.post(origin + "/workers", json={"url": worker}, timeout=5)
            if response.status_code >= 300:
                print(f"  {label}: POST /workers answered {response.status_code}: {response.text[:200]}")
                break
            took = until_all(others, lambda u, w=worker: listed(u, w))
            adds.append(None if took is None else time.perf_counter() - started)
            worker_id = response.json().get("worker_id")
            started = time.perf_counter()
            httpx.delete(f"{origin}/workers/{worker_id}", timeout=5)
            took = until_all(others, lambda u, w=worker: not listed(u, w))
            deletes.append(None if took is None else time.perf_counter() - started)
        bytes_before = [mesh_bytes(m) for m in metrics]
        cpu_before = [cpu_seconds(p.pid) for p in procs]
        time.sleep(args.idle)
        cpu = [(cpu_seconds(p.pid) - c) / args.idle * 100 for p, c in zip(procs, cpu_before, strict=True)]
        sent = [(mesh_bytes(m) - b) / args.idle if b is not None else None for m, b in zip(metrics, bytes_before, strict=True)]
    finally:
        stop(procs)
    known = [s for s in sent if s is not None]
    mesh_rate = f"{statistics.median(known):.0f}" if len(known) == len(sent) else "n/a"
    print(
        f"{label:<12}{fmt(adds, 50)}{fmt(adds, 100)}{fmt(deletes, 50)}{fmt(deletes, 100)}"
        f"{statistics.median(cpu):>10.2f} %{max(cpu):>8.2f} %{mesh_rate:>10}"
    )


def mesh_bytes(metrics_url: str) -> float | None:
    try:
        text = httpx.get(metrics_url, timeout=5).text
    except httpx.HTTPError:
        return None
    found = re.search(r"^smg_mesh_bytes_sent_total (\S+)", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def fmt(values: list[float | None], p: int) -> str:
    if not values or any(v is None for v in values):
        missed = sum(1 for v in values if v is None)
        return f"{f'{missed} missed' if values else 'n/a':>10}"
    ordered = sorted(v for v in values if v is not None)
    return f"{ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]:>9.3f}s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle measurement")
    parser.add_argument("--reference", help="path of the reference `smg` (default: .venv-reference/bin/smg when present)")
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args()
    default_ref = Path(".venv-reference/bin/smg")
    reference = None if args.no_reference else (args.reference or (str(default_ref) if default_ref.exists() else None))
    logdir = Path(tempfile.mkdtemp(prefix="smg-cluster-propagation-"))
    port = free_port()
    fleet = start(
        [sys.executable, "-m", "smg", "sim-worker", "--port", str(port), "--count", str(args.repeat), "--log-level", "warn"],
        logdir / "workers.log",
    )
    workers = [f"http://{HOST}:{port + i}" for i in range(args.repeat)]
    for worker in workers:
        wait_http(worker + "/health")
    print(f"{args.nodes} gateways, {args.repeat} adds and deletes, {args.idle:g} s idle")
    print(
        f"{'target':<12}{'add p50':>10}{'add max':>10}{'del p50':>10}{'del max':>10}{'idle CPU p50':>14}{'max':>10}{'mesh B/s':>10}"
    )
    try:
        measure("smg", None, workers, args, logdir)
        if reference:
            measure("reference", reference, workers, args, logdir)
    finally:
        stop([fleet])
        print(f"logs: {logdir}")


if __name__ == "__main__":
    main()
