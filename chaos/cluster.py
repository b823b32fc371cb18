"""A real smg cluster for fault injection: gateways and simulated workers as processes.

Each gateway gets its own loopback address (127.0.0.2x) with the standard
ports, so a restarted gateway comes back at the same address and mesh name
and rejoins as itself; each worker is its own process (127.0.0.5x:8000) so
it can be killed alone. Mesh faults (partitions, loss) go through the
gateways' `--mesh-fault-injection` filter; process faults are signals.
Everything started is stopped on `close()`, which `run` calls on any exit.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from chaos.compose import load as load_compose

ADMIN_KEY = "chaos-admin"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
GATEWAY_PORT, MESH_PORT, METRICS_PORT, WORKER_PORT = 30000, 39527, 29000, 8000


def gateway_host(i: int) -> str:
    return f"127.0.0.{20 + i}"


def worker_host(j: int) -> str:
    return f"127.0.0.{50 + j}"


@dataclass
class Node:
    name: str
    command: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = False  # SIGSTOP'd

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        out = self.log.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=env)
        out.close()

    def signal(self, signum: int) -> None:
        if self.alive:
            self.proc.send_signal(signum)  # type: ignore[union-attr]

    def kill(self) -> None:
        if self.alive:
            if self.stopped:
                self.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
                self.stopped = False
            self.proc.kill()  # type: ignore[union-attr]
            self.proc.wait(timeout=10)  # type: ignore[union-attr]

    def rss_kb(self) -> int:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():  # type: ignore[union-attr]
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except (OSError, AttributeError):
            pass
        return 0


@dataclass
class Cluster:
    gateways: int = 3
    workers: int = 2
    seed: int = 1
    logdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="smg-chaos-")))
    key: str = field(default_factory=lambda: base64.b64encode(os.urandom(32)).decode())
    compose: Path | None = None  # start the docker-compose topology instead of a generated one
    gateway_nodes: list[Node] = field(default_factory=list)
    worker_nodes: list[Node] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, what happened)
    timings: dict[str, float | None] = field(default_factory=dict)  # "kill -> dead everywhere": seconds

    # -- addresses -------------------------------------------------------------------

    def url(self, i: int) -> str:
        return f"http://{gateway_host(i)}:{GATEWAY_PORT}"

    def mesh_address(self, i: int) -> str:
        return f"{gateway_host(i)}:{MESH_PORT}"

    def worker_url(self, j: int) -> str:
        return f"http://{worker_host(j)}:{WORKER_PORT}"

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self.compose is not None:
            gateways, workers = load_compose(self.compose)
            self.gateways, self.workers = len(gateways), len(workers)
            worker_commands = [w.command for w in workers]
            gateway_commands = [[*g.command, *self._test_flags(i)] for i, g in enumerate(gateways)]
        else:
            worker_commands = [self._worker_command(j) for j in range(self.workers)]
            gateway_commands = [self._gateway_command(i) for i in range(self.gateways)]
        for j, command in enumerate(worker_commands):
            node = Node(f"worker-{j}", command, self.logdir / f"worker-{j}.log")
            node.start()
            self.worker_nodes.append(node)
        for j in range(self.workers):
            self._wait(self.worker_url(j) + "/health", f"worker {j}")
        for i, command in enumerate(gateway_commands):
            node = Node(f"gateway-{i}", command, self.logdir / f"gateway-{i}.log", {"SMG_MESH_KEY": self.key})
            node.start()
            self.gateway_nodes.append(node)
        for i in range(self.gateways):
            self._wait(self.url(i) + "/readiness", f"gateway {i}")

    def close(self) -> None:
        for node in [*self.gateway_nodes, *self.worker_nodes]:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                node.kill()

    def _gateway_command(self, i: int) -> list[str]:
        command = [
            sys.executable, "-m", "smg", "--host", gateway_host(i), "--port", str(GATEWAY_PORT),
            "--prometheus-port", str(METRICS_PORT), "--ha-mesh", "--mesh-host", gateway_host(i),
            "--mesh-port", str(MESH_PORT), "--worker-urls", *[self.worker_url(j) for j in range(self.workers)],
        ]  # fmt: skip
        seeds = [self.mesh_address(k) for k in range(self.gateways) if k != i]
        return [*command, "--seeds", ",".join(seeds), *self._test_flags(i)]

    @staticmethod
    def _test_flags(i: int) -> list[str]:
        """Added to every gateway's command (generated or from the compose file): the admin key,
        the fault filter, its own metrics address, and short timeouts so faults show within a run.
        The mesh key comes from $SMG_MESH_KEY, as in the compose file's env file."""
        return [
            "--prometheus-host", gateway_host(i), "--api-key", ADMIN_KEY, "--mesh-fault-injection",
            "--health-check-interval-secs", "1", "--health-failure-threshold", "2",
            "--worker-first-byte-timeout-secs", "5", "--stream-stall-timeout-secs", "5",
            "--shutdown-grace-period-secs", "5", "--log-level", "info",
        ]  # fmt: skip

    def _worker_command(self, j: int) -> list[str]:
        return [sys.executable, "-m", "smg", "sim-worker", "--host", worker_host(j), "--port", str(WORKER_PORT),
                "--seed", str(self.seed + j), "--ttft-ms", "20", "--tpot-ms", "5", "--log-level", "warn"]  # fmt: skip

    def _wait(self, url: str, what: str, deadline: float = 60.0) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{what} not ready after {deadline:g}s (logs: {self.logdir})")

    def note(self, what: str) -> None:
        self.events.append((time.monotonic(), what))

    # -- faults ----------------------------------------------------------------------------

    def kill_gateway(self, i: int) -> None:
        self.note(f"kill -9 gateway {i}")
        self.gateway_nodes[i].kill()
        self.timings["kill -> dead on every peer"] = self.time_until_seen(i, "dead", 15)

    def restart_gateway(self, i: int) -> None:
        self.note(f"restart gateway {i}")
        started = time.monotonic()
        self.gateway_nodes[i].start()
        self._wait(self.url(i) + "/readiness", f"gateway {i}")
        alive = self.time_until_seen(i, "alive", 15)
        self.timings["restart -> alive on every peer"] = None if alive is None else round(time.monotonic() - started, 2)

    def pause_gateway(self, i: int) -> None:
        self.note(f"SIGSTOP gateway {i}")
        self.gateway_nodes[i].signal(signal.SIGSTOP)
        self.gateway_nodes[i].stopped = True

    def resume_gateway(self, i: int) -> None:
        self.note(f"SIGCONT gateway {i}")
        self.gateway_nodes[i].signal(signal.SIGCONT)
        self.gateway_nodes[i].stopped = False
        self.timings["SIGCONT -> alive on every peer"] = self.time_until_seen(i, "alive", 15)

    def member_name(self, i: int) -> str:
        return self.mesh_address(i)  # the default --mesh-server-name: ADVERTISE_HOST:MESH_PORT

    def time_until_seen(self, i: int, state: str, deadline: float, observers: list[int] | None = None) -> float | None:
        """Seconds until every other live gateway (or `observers`) reports gateway `i` as `state`."""
        started = time.monotonic()
        watchers = [k for k in (observers or range(self.gateways)) if k != i and self.gateway_nodes[k].alive]
        while time.monotonic() - started < deadline:
            views = [self.status(k) for k in watchers]
            if all(v is not None and any(n["name"] == self.member_name(i) and n["status"] == state for n in v["nodes"])
                   for v in views):  # fmt: skip
                return round(time.monotonic() - started, 2)
            time.sleep(0.05)
        return None

    def kill_worker(self, j: int) -> None:
        self.note(f"kill -9 worker {j}")
        self.worker_nodes[j].kill()

    def restart_worker(self, j: int) -> None:
        self.note(f"restart worker {j}")
        self.worker_nodes[j].start()
        self._wait(self.worker_url(j) + "/health", f"worker {j}")

    def worker_config(self, j: int, settings: dict[str, Any]) -> None:
        self.note(f"worker {j} config {settings}")
        httpx.post(self.worker_url(j) + "/sim/config", json=settings, timeout=5).raise_for_status()

    def mesh_faults(self, i: int, drop_to: list[int], loss: float = 0.0) -> None:
        body = {"drop_to": [self.mesh_address(k) for k in drop_to], "loss": loss}
        httpx.post(self.url(i) + "/mesh/faults", json=body, headers=ADMIN, timeout=5).raise_for_status()

    def partition(self, side: list[int], one_way: bool = False) -> None:
        """Cut `side` off from the rest (with `one_way`, only traffic from `side` is lost)."""
        rest = [k for k in range(self.gateways) if k not in side]
        self.note(f"partition {side} | {rest}" + (" one-way" if one_way else ""))
        for i in side:
            self.mesh_faults(i, rest)
        if not one_way:
            for i in rest:
                self.mesh_faults(i, side)
        self.timings["cut -> dead on the other side"] = self.time_until_seen(side[0], "dead", 20, rest)

    def lose(self, loss: float) -> None:
        self.note(f"mesh packet loss {loss:.0%}")
        for i in range(self.gateways):
            self.mesh_faults(i, [], loss)

    def heal(self) -> None:
        self.note("heal")
        for i in range(self.gateways):
            if self.gateway_nodes[i].alive and not self.gateway_nodes[i].stopped:
                httpx.post(self.url(i) + "/mesh/faults", json={}, headers=ADMIN, timeout=5)

    def rotate_key(self) -> dict[str, Any]:
        new = base64.b64encode(os.urandom(32)).decode()
        self.note("key rotation: install, use, remove")
        results = {}
        for op, key in (("install", new), ("use", new), ("remove", self.key)):
            response = httpx.post(self.url(0) + "/mesh/keys", json={"op": op, "key": key}, headers=ADMIN, timeout=15)
            results[op] = response.json().get("succeeded")
            response.raise_for_status()
        self.key = new
        for node in self.gateway_nodes:  # a restart must use the new key
            node.env["SMG_MESH_KEY"] = new
        return results

    # -- observations ---------------------------------------------------------------------

    def status(self, i: int) -> dict[str, Any] | None:
        try:
            return httpx.get(self.url(i) + "/mesh/status", headers=ADMIN, timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return None

    def worker_ids(self, i: int) -> set[str] | None:
        try:
            return {w["id"] for w in httpx.get(self.url(i) + "/workers", headers=ADMIN, timeout=2).json()["workers"]}
        except (httpx.HTTPError, ValueError, KeyError):
            return None
