"""The gateway as the full server for a gRPC worker, side by side with the reference, in one run.

    python bench/grpc.py                               # smg and (when installed) the reference
    python bench/grpc.py --streams 400 --tokens 128 --concurrency 1 16

One simulated SGLang gRPC worker (`smg sim-worker --grpc`, no simulated prefill or decode time,
so the worker is as fast as it can be) serves every gRPC-mode gateway in turn; smg in HTTP mode over
the simulated HTTP worker is the yardstick of what the gateway costs without the gRPC pipeline. Each gateway tokenizes,
templates, calls Generate, detokenizes and streams; the load generator (`loadgen.py`, closed
loop, keep-alive connections) sends streamed chat completions of `--tokens` tokens
(`ignore_eos`) and, separately, tiny non-streamed ones. The figures: requests/s, latency
p50/p99, the median time to the first streamed token at concurrency 1 ("TTFT", the worker adds
none), and the gateway process's CPU (user + system from /proc) per request and per streamed
token. The worker's CPU is not counted; on a 2-core machine the worker, the gateway and the load
generator share the cores, so throughput is indicative and CPU per token is the figure to compare.

The reference (SMG from PyPI: `.venv-reference/bin/smg`, or `--reference PATH`) would look the
model up on the Hugging Face hub first: its environment points HTTPS at a closed local port, so
nothing leaves the machine and it fetches the tokenizer with GetTokenizer, as smg does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import build_request, run_load
from overhead import HOST, cpu_seconds, free_port, stop, wait_http

ROOT = Path(__file__).resolve().parent.parent


def start_worker(logdir: Path, *mode: str) -> tuple[subprocess.Popen[bytes], str]:
    """A simulated worker at full speed: `--grpc` for the gRPC one, nothing for the HTTP one."""
    log = logdir / f"worker{''.join(mode)}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "smg", "sim-worker", *mode, "--host", HOST, "--port", "0", "--ttft-ms", "0", "--tpot-ms", "0"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"((?:grpc|http)://[\d.]+:\d+)", log.read_text(errors="replace"))
        if match:
            return proc, match.group(1)
        time.sleep(0.1)
    stop([proc])
    raise TimeoutError("the simulated worker did not start")


def start_gateway(
    name: str, command: list[str], logdir: Path, env: dict[str, str] | None = None
) -> tuple[str, int, subprocess.Popen[bytes]]:
    port = free_port()
    proc = subprocess.Popen(
        [*command, "--host", HOST, "--port", str(port), "--prometheus-host", HOST, "--prometheus-port", str(free_port())],
        stdout=(logdir / f"{name}.log").open("wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=env,
    )
    wait_http(f"http://{HOST}:{port}/readiness", deadline=60)
    return name, port, proc


def ttft_p50(port: int, body: dict[str, object], count: int = 50) -> float:
    """Median milliseconds from sending a streamed request to its first `data:` line, one at a time."""
    samples = []
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            with client.stream("POST", "/v1/chat/completions", json=body) as answer:
                for line in answer.iter_lines():
                    if line.startswith("data: {"):
                        samples.append(time.perf_counter() - started)
                        break
    return statistics.median(samples) * 1000


def reference_binary(given: str | None) -> str | None:
    path = given or str(ROOT / ".venv-reference" / "bin" / "smg")
    return path if os.access(path, os.X_OK) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200, help="requests per cell")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per streamed answer")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--reference", help="the reference's smg binary (default: .venv-reference/bin/smg)")
    args = parser.parse_args()
    logdir = Path(tempfile.mkdtemp(prefix="smg-bench-grpc-"))
    worker, url = start_worker(logdir, "--grpc")
    http_worker, http_url = start_worker(logdir)
    procs = [worker, http_worker]
    try:
        gateways = [
            start_gateway(
                "smg",
                [sys.executable, "-m", "smg", "--worker-urls", url, "--log-level", "warn", "--history-backend", "memory",
                 "--tokenizer-cache-dir", str(logdir / "tokenizers")],
                logdir,
            )
        ]  # fmt: skip
        procs.append(gateways[0][2])
        gateways.append(
            start_gateway(
                "smg HTTP mode",
                [sys.executable, "-m", "smg", "--worker-urls", http_url, "--log-level", "warn", "--history-backend", "memory"],
                logdir,
            )
        )
        procs.append(gateways[-1][2])
        reference = reference_binary(args.reference)
        if reference:
            env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1"}
            gateways.append(
                start_gateway(
                    "reference",
                    [reference, "launch", "--worker-urls", url, "--model-path", "/nonexistent/sim-model"],
                    logdir,
                    env,
                )
            )
            procs.append(gateways[-1][2])
        else:
            print("(the reference is not installed: .venv-reference/bin/smg or --reference)")
        stream = {"model": "sim-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": args.tokens,
                  "ignore_eos": True, "stream": True}  # fmt: skip
        tiny = {"model": "sim-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        rows = []
        for scenario, body, tokens in (("stream", stream, args.tokens), ("tiny", tiny, 1)):
            for concurrency in args.concurrency:
                for name, port, proc in gateways:
                    request = build_request(HOST, port, "/v1/chat/completions", json.dumps(body).encode())
                    trio.run(run_load, HOST, port, request, concurrency, 20)  # warm-up
                    before = cpu_seconds(proc.pid)
                    result = trio.run(run_load, HOST, port, request, concurrency, args.streams)
                    cpu = cpu_seconds(proc.pid) - before
                    done = len(result.latencies)
                    rows.append(
                        {
                            "cell": f"{scenario} c={concurrency}",
                            "gateway": name,
                            "req/s": result.rate,
                            "p50 ms": result.percentile(50) * 1000,
                            "p99 ms": result.percentile(99) * 1000,
                            "cpu ms/req": cpu / max(done, 1) * 1000,
                            "cpu us/token": cpu / max(done * tokens, 1) * 1e6,
                            "errors": result.errors + sum(n for s, n in result.statuses.items() if s != 200),
                            "ttft": ttft_p50(port, body) if scenario == "stream" and concurrency == args.concurrency[0] else None,
                        }
                    )
        print(f"\n{args.streams} requests per cell, {args.tokens}-token streams, one simulated gRPC worker; logs in {logdir}\n")
        header = [
            "cell",
            "gateway",
            "req/s",
            "p50 ms",
            "p99 ms",
            "cpu ms/req",
            "cpu us/token",
            "TTFT p50 ms",
            "errors",
            "smg/ref cpu",
        ]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            ref = next((r for r in rows if r["cell"] == row["cell"] and r["gateway"] == "reference"), None)
            ratio = (
                f"{row['cpu ms/req'] / ref['cpu ms/req']:.2f}x" if ref and row["gateway"] == "smg" and ref["cpu ms/req"] else ""
            )
            ttft = "" if row["ttft"] is None else f"{row['ttft']:.2f}"
            print(
                f"| {row['cell']} | {row['gateway']} | {row['req/s']:.0f} | {row['p50 ms']:.2f} | {row['p99 ms']:.2f} | "
                f"{row['cpu ms/req']:.3f} | {row['cpu us/token']:.1f} | {ttft} | {row['errors']} | {ratio} |"
            )
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
