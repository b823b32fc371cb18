"""Every core of the host: smg with 1 and N gateway processes (`--processes N`), the reference,
and the worker direct, under the same load from the same generator, in one run.

    python bench/cores.py                          # smg x1 and x2, the reference when installed
    python bench/cores.py --processes 1 2 4 --duration 20

The worker must never be the limit, or more gateway processes cannot show anything: it is nginx
answering a fixed chat completion (`/v1/models`, `/health` and `/v1/chat/completions`; about
150,000 requests/s on one core here), started from a generated config when `nginx` is on the
PATH (Debian's `nginx-light`), else the simulated worker (a Python process, then the limit).
The load is `wrk` (C, one thread, keep-alive connections) when installed, else `loadgen.py`.

Figures per target: requests/s and p50/p99 at 32 connections, gateway CPU (user + system of the
parent and every gateway process) per request, and the p50 added to the direct one at 1
connection. Only tiny non-streamed chats: `bench/overhead.py` measures streams (and `--processes`
there too, against the simulated worker).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import build_request, run_load
from overhead import HOST, family_cpu_seconds, free_port, free_ports, start, stop, wait_http

ROOT = Path(__file__).resolve().parent.parent
BODY = {"model": "sim-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
COMPLETION = {
    "id": "c",
    "object": "chat.completion",
    "created": 0,
    "model": "sim-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
MODELS = {"object": "list", "data": [{"id": "sim-model", "object": "model", "owned_by": "mock"}]}


def nginx_config(directory: Path, port: int) -> Path:
    def fixed(value: object) -> str:
        return "'" + json.dumps(value, separators=(",", ":")) + "'"

    temp = " ".join(f"{kind}_temp_path {directory / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    config = directory / "nginx.conf"
    config.write_text(
        f"""worker_processes 1; daemon off; pid {directory / "nginx.pid"}; error_log {directory / "nginx.err"} warn;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 1000000; default_type application/json; {temp}
  server {{
    listen {HOST}:{port};
    location = /health {{ return 200 '{{}}'; }}
    location = /v1/models {{ return 200 {fixed(MODELS)}; }}
    location = /v1/chat/completions {{ return 200 {fixed(COMPLETION)}; }}
  }}
}}
"""
    )
    return config


def wrk(port: int, connections: int, seconds: float, script: Path) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, requests) from wrk --latency."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            f"http://{HOST}:{port}/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{errors.group(1)} failed requests through port {port}:\n{out}")

    def quantile(name: str) -> float:
        value, unit = re.search(rf"{name}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return rate, quantile("50"), quantile("99"), count


def loadgen(port: int, connections: int, seconds: float) -> tuple[float, float, float, int]:
    request = build_request(HOST, port, "/v1/chat/completions", json.dumps(BODY).encode())
    count = max(200, int(seconds * (2000 if connections > 1 else 400)))
    result = trio.run(run_load, HOST, port, request, connections, count)
    return result.rate, result.percentile(50) * 1000, result.percentile(99) * 1000, len(result.latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="smg process counts to measure")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per target and scenario")
    parser.add_argument("--reference", help="the reference's `smg` (default: .venv-reference/bin/smg when present)")
    args = parser.parse_args()
    reference = args.reference or (str(ROOT / ".venv-reference/bin/smg") if (ROOT / ".venv-reference/bin/smg").exists() else None)
    logdir = Path(tempfile.mkdtemp(prefix="smg-bench-cores-"))
    script = logdir / "post.lua"
    script.write_text(f"wrk.method = 'POST'\nwrk.body = '{json.dumps(BODY)}'\nwrk.headers['Content-Type'] = 'application/json'\n")
    use_wrk = shutil.which("wrk") is not None
    worker_port = free_port()
    if shutil.which("nginx"):
        worker = start(["nginx", "-c", str(nginx_config(logdir, worker_port))], logdir / "nginx.log")
        worker_kind = "nginx"
    else:
        worker = start(
            [sys.executable, "-m", "smg", "sim-worker", "--port", str(worker_port), "--ttft-ms", "0", "--tpot-ms", "0",
             "--log-level", "warn"],
            logdir / "worker.log",
        )  # fmt: skip
        worker_kind = "simulated worker (the limit)"
    procs = [worker]

    def measure(port: int, connections: int, seconds: float = args.duration) -> tuple[float, float, float, int]:
        return wrk(port, connections, seconds, script) if use_wrk else loadgen(port, connections, seconds)

    try:
        wait_http(f"http://{HOST}:{worker_port}/health")
        targets: list[tuple[str, int, subprocess.Popen[bytes] | None]] = [("direct", worker_port, None)]
        for count in args.processes:
            port = free_port()
            proc = start(
                [sys.executable, "-m", "smg", "launch", "--host", HOST, "--port", str(port), "--worker-urls",
                 f"http://{HOST}:{worker_port}", "--policy", "round_robin", "--processes", str(count),
                 "--prometheus-host", HOST, "--prometheus-port", str(free_ports(count)), "--mesh-port",
                 str(free_ports(count)), "--history-backend", "memory", "--log-level", "warn"],
                logdir / f"smg-x{count}.log",
                cwd=str(ROOT),
            )  # fmt: skip
            procs.append(proc)
            targets.append((f"smg x{count}", port, proc))
        if reference:
            port = free_port()
            proc = start(
                [reference, "launch", "--host", HOST, "--port", str(port), "--worker-urls", f"http://{HOST}:{worker_port}",
                 "--policy", "round_robin", "--prometheus-host", HOST, "--prometheus-port", str(free_port())],
                logdir / "reference.log",
            )  # fmt: skip
            procs.append(proc)
            targets.append(("reference", port, proc))
        for _, port, _ in targets:
            wait_http(f"http://{HOST}:{port}/readiness" if port != worker_port else f"http://{HOST}:{port}/health", 60)
        time.sleep(1.0)  # every process of each --processes target listening (they bind once ready)
        print(f"worker: {worker_kind}; load: {'wrk' if use_wrk else 'loadgen.py'}, {args.duration:g}s per cell")
        print(f"{'target':<12}{'req/s c=32':>12}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/req':>12}{'p50 c=1':>9}{'added c=1':>11}")
        direct_c1 = None
        rows = {}
        for name, port, proc in targets:
            measure(port, 8, 2.0)  # warm-up: connections, code paths
            before = family_cpu_seconds(proc.pid) if proc else None
            rate, p50, p99, count = measure(port, 32)
            cpu = (family_cpu_seconds(proc.pid) - before) / count * 1000 if proc and before is not None else None
            _, c1_p50, _, _ = measure(port, 1)
            direct_c1 = c1_p50 if name == "direct" else direct_c1
            added = c1_p50 - direct_c1 if direct_c1 is not None and name != "direct" else None
            rows[name] = rate
            cpu_text = f"{cpu:.3f}" if cpu is not None else "-"
            added_text = f"{added:.2f}" if added is not None else "-"
            print(f"{name:<12}{rate:>12.0f}{p50:>9.2f}{p99:>9.2f}{cpu_text:>12}{c1_p50:>9.2f}{added_text:>11}")
        if "smg x1" in rows:
            for name, rate in rows.items():
                if name.startswith("smg x") and name != "smg x1":
                    print(f"{name} / smg x1 requests/s: x{rate / rows['smg x1']:.2f}")
    finally:
        stop(procs)
        print(f"logs: {logdir}")


if __name__ == "__main__":
    main()
