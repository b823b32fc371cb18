"""Real mesh processes on loopback: join, kill -9 detection, restart, idle cost.

    python bench/mesh_real.py                 # 3 and 9 nodes, 5 repetitions each
    python bench/mesh_real.py --sizes 3 --repeat 3

Each node is `python -m smg.mesh` with default protocol settings and AES-GCM
on. Reported medians: time from the last start until every node sees every
other alive; after kill -9 of one node, time until each survivor marks it
dead (p50 over survivors) and whether any survivor flipped it back before
the restart; time from the restart until every survivor sees it alive;
idle CPU per node (%) and bytes sent per node per second over 10 s.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Node:
    def __init__(self, name: str, port: int, seeds: list[str], key: str, logdir: Path) -> None:
        self.name, self.port, self.seeds, self.key = name, port, seeds, key
        self.log = logdir / f"{name}.jsonl"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smg.mesh", "--name", self.name, "--port", str(self.port), "--key", self.key,
             "--label", "bench", "--seeds", *self.seeds],
            stdout=out, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def state_of(self, member: str, after: float = 0.0) -> str | None:
        states = [e["state"] for e in self.lines() if e.get("member") == member and e["t"] >= after]
        return states[-1] if states else None


def wait_for(predicate, limit: float) -> float | None:  # type: ignore[no-untyped-def]
    started = time.time()
    while time.time() - started < limit:
        if predicate():
            return time.time() - started
        time.sleep(0.02)
    return None


def run(n: int, logdir: Path) -> dict:
    key = base64.b64encode(os.urandom(32)).decode()
    ports = [free_port() for _ in range(n)]
    seeds = [f"127.0.0.1:{p}" for p in ports[:2]]
    nodes = [Node(f"n{i}", p, seeds, key, logdir) for i, p in enumerate(ports)]
    result: dict = {}
    try:
        for node in nodes:
            node.start()
        everyone = [node.name for node in nodes]
        result["join"] = wait_for(
            lambda: all(node.state_of(m) == "alive" for node in nodes for m in everyone if m != node.name), 30
        )
        time.sleep(2)
        victim, survivors = nodes[-1], nodes[:-1]
        killed = time.time()
        victim.kill()
        marks: list[float] = []

        def all_dead() -> bool:
            for node in survivors:
                dead = [
                    e["t"]
                    for e in node.lines()
                    if e.get("member") == victim.name and e.get("state") == "dead" and e["t"] >= killed
                ]
                if not dead:
                    return False
            return True

        wait_for(all_dead, 30)
        for node in survivors:
            dead = [
                e["t"] for e in node.lines() if e.get("member") == victim.name and e.get("state") == "dead" and e["t"] >= killed
            ]
            marks.append(dead[0] - killed if dead else float("nan"))
        result["dead_p50"] = statistics.median(marks)
        time.sleep(3)
        result["flapped"] = any(
            e.get("state") == "alive"
            for node in survivors
            for e in node.lines()
            if e.get("member") == victim.name and e["t"] > killed
        )
        restarted = time.time()
        victim.start()
        result["rejoin"] = wait_for(lambda: all(node.state_of(victim.name, restarted) == "alive" for node in survivors), 30)
        time.sleep(2)
        pids = [node.proc.pid for node in nodes if node.proc]
        before = [cpu_seconds(p) for p in pids]
        sent_before = [max([e["sent_bytes"] for e in node.lines() if "sent_bytes" in e] or [0]) for node in nodes]
        time.sleep(10)
        after = [cpu_seconds(p) for p in pids]
        sent_after = [max([e["sent_bytes"] for e in node.lines() if "sent_bytes" in e] or [0]) for node in nodes]
        result["idle_cpu_pct"] = statistics.median((a - b) / 10 * 100 for a, b in zip(after, before, strict=True))
        result["bytes_per_s"] = statistics.median((a - b) / 10 for a, b in zip(sent_after, sent_before, strict=True))
    finally:
        for node in nodes:
            if node.proc and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 9])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    logdir = Path(tempfile.mkdtemp(prefix="smg-mesh-real-"))
    print(f"{'nodes':>5}{'join s':>9}{'dead p50 s':>12}{'flapped':>9}{'rejoin s':>10}{'idle CPU %':>12}{'B/s/node':>10}")
    for n in args.sizes:
        runs = []
        for r in range(args.repeat):
            (logdir / f"{n}-{r}").mkdir()
            runs.append(run(n, logdir / f"{n}-{r}"))

        def med(key: str, runs: list[dict] = runs) -> float:
            values = [x[key] for x in runs if x.get(key) is not None]
            return statistics.median(values) if values else float("nan")

        flapped = sum(1 for x in runs if x.get("flapped"))
        print(f"{n:>5}{med('join'):>9.2f}{med('dead_p50'):>12.2f}{flapped:>6}/{len(runs):<2}{med('rejoin'):>10.2f}"
              f"{med('idle_cpu_pct'):>12.2f}{med('bytes_per_s'):>10.0f}")  # fmt: skip
    print(f"logs: {logdir}")


if __name__ == "__main__":
    main()
