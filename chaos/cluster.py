"""A real smg cluster for fault injection: gateways and simulated workers as processes.

Two network set-ups. `netns` (root with `ip` and `nft`): every node is its
own host in a network namespace on a private bridge (`chaos.netns`);
partitions and loss are nftables rules on real packets. `loopback`
(anywhere else): every node gets its own 127.0.0.x address, and the same
faults go through the gateways' `--mesh-fault-injection` filter, i.e. only
mesh traffic is affected and only above the socket. Either way a restarted
gateway comes back at the same address and mesh name and rejoins as itself,
latency comes from `chaos.delay_proxy`, process faults are signals, and
everything started or created is removed on `close()`, which `run` calls
on any exit.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from chaos import netns
from chaos.compose import databases
from chaos.compose import load as load_compose

# The machine's own PostgreSQL stands in for a compose file's postgres service: a database of
# its own per run, dropped at the end (as the tests' history backends do).
POSTGRES_ADMIN_URL = os.environ.get("SMG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
POSTGRES_PROXY_PORT = 15432  # in namespaces the gateways reach it through the harness's forwarder
ADMIN_KEY = "chaos-admin"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
LIMITED_TENANT, LIMITED_KEY, LIMIT_PER_MINUTE = "limited", "chaos-limited-key", 30  # a tenant held to a cluster-wide limit
GATEWAY_PORT, MESH_PORT, METRICS_PORT, WORKER_PORT = 30000, 39527, 29000, 8000
GRACE_SECS = 5  # --shutdown-grace-period-secs: a 2.5 s settle window, 5 balancer health checks long


GATEWAY_OCTET, WORKER_OCTET, PROXY_PORT = 20, 50, 18000  # gateway i at <base>.20+i, worker j at <base>.50+j


@dataclass
class Node:
    name: str
    command: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    prefix: list[str] = field(default_factory=list)  # e.g. `ip netns exec NS`
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = False  # SIGSTOP'd

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        out = self.log.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen([*self.prefix, *self.command], stdout=out, stderr=subprocess.STDOUT, env=env)
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
    net: str = "loopback"  # or "netns"
    logdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="smg-chaos-")))
    key: str = field(default_factory=lambda: base64.b64encode(os.urandom(32)).decode())
    compose: Path | None = None  # start the docker-compose topology instead of a generated one
    extra_gateway_flags: list[str] = field(default_factory=list)
    gateway_nodes: list[Node] = field(default_factory=list)
    worker_nodes: list[Node] = field(default_factory=list)
    proxies: dict[int, Node] = field(default_factory=dict)  # worker -> its delay proxy
    network: netns.Network | None = None
    _filters: dict[int, tuple[set[str], float]] = field(default_factory=dict)  # loopback: mesh filter per gateway
    events: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, what happened)
    timings: dict[str, float | None] = field(default_factory=dict)  # "kill -> dead everywhere": seconds
    database: str | None = None  # the PostgreSQL database made for a compose file's postgres service
    forwarder: Node | None = None  # in namespaces: the harness's way to the machine's PostgreSQL

    # -- addresses -------------------------------------------------------------------

    @property
    def base(self) -> str:
        return self.network.subnet if self.network is not None else "127.0.0"

    @property
    def client_host(self) -> str:
        """Where the harness's own listeners (delay proxies) go: reachable from every node."""
        return self.network.client if self.network is not None else "127.0.0.1"

    def gateway_host(self, i: int) -> str:
        return f"{self.base}.{GATEWAY_OCTET + i}"

    def worker_host(self, j: int) -> str:
        return f"{self.base}.{WORKER_OCTET + j}"

    def url(self, i: int) -> str:
        return f"http://{self.gateway_host(i)}:{GATEWAY_PORT}"

    def mesh_address(self, i: int) -> str:
        return f"{self.gateway_host(i)}:{MESH_PORT}"

    def worker_url(self, j: int) -> str:
        return f"http://{self.worker_host(j)}:{WORKER_PORT}"

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        limits = self.logdir / "tenant-limits.json"
        limits.write_text(json.dumps({"tenants": {LIMITED_TENANT: {"requests_per_minute": LIMIT_PER_MINUTE}}}))
        if self.net == "netns":
            self.network = netns.Network()
            self.network.create()
        gateway_env: list[dict[str, str]] = []
        if self.compose is not None:
            database_url = self._database() if databases(self.compose) else None
            gateways, workers = load_compose(self.compose, self.base, database_url)
            self.gateways, self.workers = len(gateways), len(workers)
            worker_commands = [w.command for w in workers]
            gateway_commands = [[*g.command, *self._test_flags(i)] for i, g in enumerate(gateways)]
            gateway_env = [g.env for g in gateways]
        else:
            worker_commands = [self._worker_command(j) for j in range(self.workers)]
            gateway_commands = [self._gateway_command(i) for i in range(self.gateways)]
        for j, command in enumerate(worker_commands):
            node = Node(f"worker-{j}", command, self.logdir / f"worker-{j}.log", prefix=self._host(f"w{j}", WORKER_OCTET + j))
            node.start()
            self.worker_nodes.append(node)
        for j in range(self.workers):
            self._wait(self.worker_url(j) + "/health", f"worker {j}")
        for i, command in enumerate(gateway_commands):
            # each its own history file (one host: the default path would be shared, and is locked)
            env = {"SMG_MESH_KEY": self.key, "SMG_HISTORY_DB_PATH": str(self.logdir / f"history-{i}.db")}
            env |= gateway_env[i] if gateway_env else {}
            node = Node(f"gateway-{i}", command, self.logdir / f"gateway-{i}.log", env, self._host(f"g{i}", GATEWAY_OCTET + i))
            node.start()
            self.gateway_nodes.append(node)
        for i in range(self.gateways):
            self._wait(self.url(i) + "/readiness", f"gateway {i}")

    def _host(self, name: str, octet: int) -> list[str]:
        """The command prefix that puts a node on its own host (nothing on loopback)."""
        if self.network is None:
            return []
        self.network.add_host(name, octet)
        return self.network.prefix(name)

    def _database(self) -> str:
        """A fresh database on the machine's PostgreSQL for the compose file's postgres service;
        in namespaces, reached through a forwarder on the harness's address."""
        import psycopg

        name = f"smg_chaos_{os.urandom(6).hex()}"
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        self.database = name
        server = POSTGRES_ADMIN_URL.split("@", 1)[1].split("/", 1)[0]
        if self.network is None:
            return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
        forwarder = Node("postgres-forwarder", [sys.executable, "-m", "chaos.delay_proxy", "--listen",
                         f"{self.client_host}:{POSTGRES_PROXY_PORT}", "--to", server, "--delay-ms", "0"],
                         self.logdir / "postgres-forwarder.log")  # fmt: skip
        forwarder.start()
        self.forwarder = forwarder
        self._wait_port(self.client_host, POSTGRES_PROXY_PORT, "the PostgreSQL forwarder")
        user = POSTGRES_ADMIN_URL.split("://", 1)[1].split("@", 1)[0]
        return f"postgresql://{user}@{self.client_host}:{POSTGRES_PROXY_PORT}/{name}"

    def close(self) -> None:
        for node in [*self.gateway_nodes, *self.worker_nodes, *self.proxies.values(), *filter(None, [self.forwarder])]:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                node.kill()
        if self.network is not None:
            self.network.close()
        if self.database is not None:
            import psycopg

            with contextlib.suppress(psycopg.Error), psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def _gateway_command(self, i: int) -> list[str]:
        host = self.gateway_host(i)
        command = [
            sys.executable, "-m", "smg", "--host", host, "--port", str(GATEWAY_PORT),
            "--prometheus-port", str(METRICS_PORT), "--ha-mesh", "--mesh-host", host,
            "--mesh-port", str(MESH_PORT), "--worker-urls", *[self.worker_url(j) for j in range(self.workers)],
        ]  # fmt: skip
        seeds = [self.mesh_address(k) for k in range(self.gateways) if k != i]
        return [*command, "--seeds", ",".join(seeds), *self._test_flags(i)]

    def _test_flags(self, i: int) -> list[str]:
        """Added to every gateway's command (generated or from the compose file): the admin key,
        the fault filter, its own metrics address, short timeouts so faults show within a run,
        and one tenant with a requests-per-minute limit.
        The mesh key comes from $SMG_MESH_KEY, as in the compose file's env file."""
        return [
            "--prometheus-host", self.gateway_host(i), "--api-key", ADMIN_KEY, "--mesh-fault-injection",
            "--health-check-interval-secs", "1", "--health-failure-threshold", "2",
            "--worker-first-byte-timeout-secs", "5", "--stream-stall-timeout-secs", "5",
            "--shutdown-grace-period-secs", str(GRACE_SECS), "--log-level", "info",
            "--tenant-api-key", f"{LIMITED_TENANT}:{LIMITED_KEY}",
            "--tenant-rate-limit-config", str(self.logdir / "tenant-limits.json"), *self.extra_gateway_flags,
        ]  # fmt: skip

    def _worker_command(self, j: int) -> list[str]:
        return [sys.executable, "-m", "smg", "sim-worker", "--host", self.worker_host(j), "--port", str(WORKER_PORT),
                "--seed", str(self.seed + j), "--ttft-ms", "20", "--tpot-ms", "5", "--log-level", "warn"]  # fmt: skip

    def _wait_port(self, host: str, port: int, what: str, deadline: float = 10.0) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
                return
            time.sleep(0.05)
        raise TimeoutError(f"{what} not listening after {deadline:g}s (logs: {self.logdir})")

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
        self._worst("restart -> alive on every peer", None if alive is None else round(time.monotonic() - started, 2))

    def terminate_gateway(self, i: int) -> None:
        """SIGTERM gateway `i` and wait for it to exit: the graceful path (settle window, drain,
        mesh leave), which must exit 0 within its grace period and leave, not die."""
        self.note(f"SIGTERM gateway {i}")
        node = self.gateway_nodes[i]
        started = time.monotonic()
        node.signal(signal.SIGTERM)
        code = node.proc.wait(timeout=GRACE_SECS + 10)  # type: ignore[union-attr]
        self.note(f"gateway {i} exited")
        self._worst("SIGTERM -> exit", round(time.monotonic() - started, 2))
        if code != 0:
            raise RuntimeError(f"gateway {i} exited with {code} after SIGTERM (logs: {self.logdir})")
        self._worst("exit -> left on every peer", self.time_until_seen(i, "left", 15))

    def rolling_restart(self) -> None:
        """Restart every gateway in turn, as a deployment does: SIGTERM, wait for the exit, start
        it again at the same address, and go on only once it is ready and alive on every peer."""
        for i in range(self.gateways):
            self.terminate_gateway(i)
            self.restart_gateway(i)
            if self.timings["restart -> alive on every peer"] is None:
                raise TimeoutError(f"gateway {i} not alive on every peer after its restart (logs: {self.logdir})")

    def _worst(self, what: str, seconds: float | None) -> None:
        """Keep the slowest of repeated measurements (None, never reached, is the worst)."""
        if what not in self.timings:
            self.timings[what] = seconds
            return
        before = self.timings[what]
        if before is not None and (seconds is None or seconds > before):
            self.timings[what] = seconds

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

    def drop(self, i: int, senders: Sequence[int], loss: float = 0.0) -> None:
        """Gateway `i` stops hearing `senders` and hears only `1 - loss` of the other gateways.

        On namespaces these are nftables rules on `i`'s input, so a sender sees nothing,
        as on a real network (dropping on output would fail its `send` with EPERM). On
        loopback the mesh fault filter does it; it drops what a node sends, so the rules
        go on the senders."""
        if self.network is not None:
            rules = [f"ip saddr {netns.addresses([self.gateway_host(k) for k in senders])} drop"] if senders else []
            if loss:
                others = netns.addresses([self.gateway_host(k) for k in range(self.gateways) if k != i])
                rules.append(f"ip saddr {others} numgen random mod 100 < {round(loss * 100)} drop")
            self.network.rules(f"g{i}", incoming=rules)
            return
        for k in senders:
            self._mesh_filter(k, drop_to=[i])
        if loss:
            self._mesh_filter(i, loss=loss)

    def _mesh_filter(self, k: int, drop_to: Sequence[int] = (), loss: float = 0.0) -> None:
        """Add to gateway `k`'s mesh fault filter (loopback set-up)."""
        dropped, lost = self._filters.get(k, (set(), 0.0))
        self._filters[k] = dropped | {self.mesh_address(j) for j in drop_to}, max(loss, lost)
        body = {"drop_to": sorted(self._filters[k][0]), "loss": self._filters[k][1]}
        httpx.post(self.url(k) + "/mesh/faults", json=body, headers=ADMIN, timeout=5).raise_for_status()

    def partition(self, side: list[int], one_way: bool = False) -> None:
        """Cut `side` off from the rest (with `one_way`, only what `side` sends is lost)."""
        rest = [k for k in range(self.gateways) if k not in side]
        self.note(f"partition {side} | {rest}" + (" one-way" if one_way else ""))
        for k in rest:
            self.drop(k, side)
        if not one_way:
            for i in side:
                self.drop(i, rest)
        self.timings["cut -> dead on the other side"] = self.time_until_seen(side[0], "dead", 20, rest)

    def lose(self, loss: float) -> None:
        self.note(f"packet loss {loss:.0%} between gateways")
        for i in range(self.gateways):
            self.drop(i, [], loss)

    def lag(self, delay_ms: float) -> None:
        """Every gateway delays what it sends to the others by `delay_ms`. No kernel tool here
        delays packets (no `tc netem`), so on namespaces too this is the mesh fault filter."""
        self.note(f"{delay_ms:g} ms one-way delay between gateways")
        for i in range(self.gateways):
            body = {"delay_ms": delay_ms}
            httpx.post(self.url(i) + "/mesh/faults", json=body, headers=ADMIN, timeout=5).raise_for_status()

    def heal(self) -> None:
        self.note("heal")
        self._filters.clear()
        for i in range(self.gateways):
            if self.network is not None:
                self.network.clear(f"g{i}")
            if self.gateway_nodes[i].alive and not self.gateway_nodes[i].stopped:
                httpx.post(self.url(i) + "/mesh/faults", json={}, headers=ADMIN, timeout=5)

    def delay_worker(self, j: int, delay_ms: float, seen_by: list[int] | None = None) -> None:
        """Put a delay proxy in front of worker `j` through the control plane: register the
        proxy's URL as a worker on gateway 0, then remove the direct URL; both changes replicate
        (waited for on `seen_by`, default every live gateway)."""
        port = PROXY_PORT + j
        proxy = Node(f"proxy-{j}", [sys.executable, "-m", "chaos.delay_proxy", "--listen", f"{self.client_host}:{port}",
                     "--to", f"{self.worker_host(j)}:{WORKER_PORT}", "--delay-ms", str(delay_ms)],
                     self.logdir / f"proxy-{j}.log")  # fmt: skip
        proxy.start()
        self.proxies[j] = proxy
        self.note(f"worker {j} behind a {delay_ms:g} ms delay proxy")
        self._wait(f"http://{self.client_host}:{port}/health", f"delay proxy {j}")
        self._swap_worker(f"http://{self.client_host}:{port}", self.worker_url(j), seen_by)

    def undelay_worker(self, j: int) -> None:
        self.note(f"worker {j} direct again")
        self._swap_worker(self.worker_url(j), f"http://{self.client_host}:{PROXY_PORT + j}")
        self.proxies.pop(j).kill()

    def _swap_worker(self, add: str, remove: str, seen_by: list[int] | None = None) -> None:
        def watchers() -> list[int]:
            return seen_by if seen_by is not None else self._live()

        httpx.post(self.url(0) + "/workers", json={"url": add}, headers=ADMIN, timeout=5).raise_for_status()
        self._until(lambda: all(self._has_worker(i, add) for i in watchers()), f"{add} registered everywhere")
        workers = httpx.get(self.url(0) + "/workers", headers=ADMIN, timeout=5).json()["workers"]
        for worker in workers:
            if worker["url"] == remove:
                httpx.delete(self.url(0) + f"/workers/{worker['id']}", headers=ADMIN, timeout=5).raise_for_status()
        self._until(lambda: not any(self._has_worker(i, remove) for i in watchers()), f"{remove} removed everywhere")

    def _has_worker(self, i: int, url: str) -> bool:
        try:
            workers = httpx.get(self.url(i) + "/workers", headers=ADMIN, timeout=2).json()["workers"]
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        return any(w["url"] == url and w.get("is_healthy") for w in workers)

    def _live(self) -> list[int]:
        return [i for i, node in enumerate(self.gateway_nodes) if node.alive and not node.stopped]

    def _until(self, done: Callable[[], bool], what: str, deadline: float = 20.0) -> None:
        end = time.monotonic() + deadline
        while not done():
            if time.monotonic() > end:
                raise TimeoutError(f"not done after {deadline:g}s: {what}")
            time.sleep(0.1)

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
