"""What the cluster page costs the gateways: CPU per gateway with no page open, then with pages open.

    python bench/ui_cost.py                                   # 3 gateways, 60 s per phase
    python bench/ui_cost.py --gateways 3 --secs 120 --rps 20 --screenshot docs/cluster-page.png --kill-gateway

Starts simulated workers and `--gateways` meshed gateways (`smg launch --ha-mesh`), sends a light
steady load (`--rps` chat completions spread over the gateways, so the page has something to
show), and measures each gateway's CPU (utime + stime from /proc) over three phases of `--secs`
each: no page; one page open in headless chromium (polling `/ui/api/cluster` every 2 s, which
fans out to every gateway's `/ui/api/node`); `--pages` pages open at once. Also prints the size of
one `/ui/api/cluster` answer and the time a gateway takes to build it. `--screenshot` saves the
page at the end (the README's picture).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from overhead import HOST, cpu_seconds, free_port, start, stop, wait_http

ROOT = Path(__file__).resolve().parent.parent
KEY = base64.b64encode(os.urandom(32)).decode()


def start_cluster(count: int, workers: list[str], logdir: Path) -> tuple[list[str], list]:  # type: ignore[type-arg]
    urls, procs, seeds = [], [], []
    for i in range(count):
        port, mesh_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "smg", "launch", "--host", HOST, "--port", str(port),
               "--prometheus-port", str(free_port()), "--history-backend", "none",
               "--ha-mesh", "--mesh-host", HOST, "--mesh-port", str(mesh_port), "--mesh-key", KEY,
               "--mesh-server-name", f"gateway-{i}"]  # fmt: skip
        if i == 0:
            cmd += ["--worker-urls", *workers]
        else:
            cmd += ["--seeds", *seeds]
        procs.append(start(cmd, logdir / f"gateway-{i}.log", cwd=str(ROOT)))
        seeds.append(f"{HOST}:{mesh_port}")
        urls.append(f"http://{HOST}:{port}")
    for url in urls:
        wait_http(url + "/readiness")
    return urls, procs


def steady_load(urls: list[str], rps: float, stop_at: threading.Event) -> None:
    """`rps` chat completions per second, round robin over the gateways; 16 conversations of
    growing length, so the workers' prefix caches have something to hit."""
    client = httpx.Client(timeout=30)
    turn = 0
    while not stop_at.is_set():
        started = time.monotonic()
        user = turn % 16
        messages = [{"role": "system", "content": f"You are assistant {user % 4}. " * 40}]
        messages += [{"role": "user", "content": f"question {k} of user {user}"} for k in range(turn // 16 % 8 + 1)]
        body = {"model": "sim-model", "messages": messages, "max_tokens": 8}
        with contextlib.suppress(httpx.HTTPError):
            client.post(urls[turn % len(urls)] + "/v1/chat/completions", json=body)
        turn += 1
        stop_at.wait(max(0.0, 1 / rps - (time.monotonic() - started)))


def cpu_percent(procs: list, secs: float) -> list[float]:  # type: ignore[type-arg]
    before = [cpu_seconds(p.pid) for p in procs]
    time.sleep(secs)
    return [100 * (cpu_seconds(p.pid) - b) / secs for p, b in zip(procs, before, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateways", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--secs", type=float, default=60.0, help="length of each phase")
    parser.add_argument("--rps", type=float, default=20.0, help="steady load over the gateways (0: idle)")
    parser.add_argument("--pages", type=int, default=4, help="pages open at once in the last phase")
    parser.add_argument("--screenshot", type=Path, help="save the page here at the end")
    parser.add_argument("--kill-gateway", action="store_true", help="before the screenshot, kill -9 the last gateway")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("bench/ui_cost.py needs chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    logdir = Path(tempfile.mkdtemp(prefix="smg-ui-cost-"))
    sim_port = free_port()
    sim = start([sys.executable, "-m", "smg", "sim-worker", "--host", HOST, "--port", str(sim_port), "--count", str(args.workers)],
                logdir / "sim.log", cwd=str(ROOT))  # fmt: skip
    procs = [sim]
    stop_load = threading.Event()
    try:
        workers = []
        for i in range(args.workers):
            workers.append(f"http://{HOST}:{sim_port + i}")
            wait_http(workers[-1] + "/health")
        urls, gateways = start_cluster(args.gateways, workers, logdir)
        procs += gateways
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            views = httpx.get(urls[0] + "/ui/api/cluster", params={"series": "0"}).json()["views"]
            if len(views) == args.gateways and all(len(v.get("workers", [])) == args.workers for v in views.values()):
                break
            time.sleep(0.2)
        loader = threading.Thread(target=steady_load, args=(urls, args.rps, stop_load), daemon=True)
        if args.rps > 0:
            loader.start()
        time.sleep(min(10.0, args.secs))  # the load settles
        results = {"no page": cpu_percent(gateways, args.secs)}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            pages = [browser.new_page(viewport={"width": 1500, "height": 1100})]
            pages[0].goto(urls[0] + "/ui")
            pages[0].wait_for_selector("tr[data-worker]")
            results["1 page on gateway-0"] = cpu_percent(gateways, args.secs)
            for i in range(1, args.pages):
                page = browser.new_page()
                page.goto(urls[i % len(urls)] + "/ui")
                pages.append(page)
            results[f"{args.pages} pages over the gateways"] = cpu_percent(gateways, args.secs)
            if args.screenshot is not None:
                if args.kill_gateway:  # the picture shows what a fault looks like on the page
                    gateways[-1].kill()
                    pages[0].wait_for_selector(
                        f'tr[data-member="gateway-{args.gateways - 1}"][data-status="dead"]', timeout=90_000
                    )
                    time.sleep(10)
                pages[0].screenshot(path=str(args.screenshot), full_page=True)
                print(f"screenshot: {args.screenshot}")
            browser.close()
        sizes, times, node_times = [], [], []
        with httpx.Client() as client:  # one client: a new one per call would time its TLS set-up
            for _ in range(10):
                started = time.perf_counter()
                answer = client.get(urls[0] + "/ui/api/cluster")
                times.append(1000 * (time.perf_counter() - started))
                sizes.append(len(answer.content))
                started = time.perf_counter()
                client.get(urls[0] + "/ui/api/node")
                node_times.append(1000 * (time.perf_counter() - started))
    finally:
        stop_load.set()
        stop(procs)
    print(f"\n{args.gateways} gateways, {args.workers} simulated workers, {args.rps:g} req/s, {args.secs:g} s per phase")
    print(f"{'phase':<28} " + " ".join(f"{'gateway-' + str(i):>10}" for i in range(args.gateways)) + f" {'mean':>8}")
    base = statistics.mean(results["no page"])
    for phase, cpus in results.items():
        mean = statistics.mean(cpus)
        extra = "" if phase == "no page" else f"  (+{mean - base:.2f} points)"
        print(f"{phase:<28} " + " ".join(f"{c:>9.2f}%" for c in cpus) + f" {mean:>7.2f}%{extra}")
    print(f"/ui/api/cluster: {statistics.median(sizes) / 1024:.1f} KiB, {statistics.median(times):.1f} ms (median of 10)")
    print(f"/ui/api/node:    {statistics.median(node_times):.1f} ms (median of 10)")
    print(f"logs: {logdir}")


if __name__ == "__main__":
    main()
