"""Real processes for end-to-end tests: simulated workers and gateways on 127.0.0.1.

Every process binds port 0 and the test reads the bound address from its log,
so parallel runs never race for ports. Every wait has a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

STARTUP_DEADLINE = 20.0
_SIM_URL = re.compile(r"listening on ((?:http|grpc)://127\.0\.0\.1:\d+)")
_MESH_ADDRESS = re.compile(r"mesh node \S+ listening on ([\d.]+:\d+)")
_GATEWAY_URL = re.compile(r"smg gateway listening on (https?://[\d.]+:\d+) .*metrics (https?://[\d.]+:\d+|off)")


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log_path: Path
    urls: list[str] = field(default_factory=list)
    metrics_url: str | None = None
    mesh_address: str | None = None

    @property
    def url(self) -> str:
        return self.urls[0]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)
        if not os.environ.get("SMG_KEEP_TEST_LOGS"):
            self.log_path.unlink(missing_ok=True)
        for suffix in (".db", ".db-wal", ".db-shm"):
            self.log_path.with_suffix(suffix).unlink(missing_ok=True)


SPAWNED: list[Proc] = []  # every process a test started; the session kills leftovers


def _spawn(args: list[str]) -> Proc:
    fd, path = tempfile.mkstemp(prefix="smg-test-", suffix=".log")
    # each gateway its own SQLite history unless a test names one (--history-db-path)
    env = {"SMG_HISTORY_DB_PATH": path[: -len(".log")] + ".db", **os.environ, "PYTHONUNBUFFERED": "1"}
    popen = subprocess.Popen([sys.executable, "-m", "smg", *args], stdout=fd, stderr=fd, env=env)
    os.close(fd)
    proc = Proc(popen, Path(path))
    SPAWNED.append(proc)
    return proc


def _wait_for_log(proc: Proc, pattern: re.Pattern[str], count: int = 1) -> list[re.Match[str]]:
    deadline = time.monotonic() + STARTUP_DEADLINE
    while time.monotonic() < deadline:
        matches = list(pattern.finditer(proc.log()))
        if len(matches) >= count:
            return matches
        if proc.popen.poll() is not None:
            raise RuntimeError(f"process exited with {proc.popen.returncode}:\n{proc.log()}")
        time.sleep(0.02)
    proc.stop()
    raise TimeoutError(f"process did not start within {STARTUP_DEADLINE}s:\n{proc.log()}")


def start_sim(count: int = 1, *flags: str) -> Proc:
    proc = _spawn(["sim-worker", "--port", "0", "--count", str(count), *flags])
    proc.urls = [m.group(1) for m in _wait_for_log(proc, _SIM_URL, count)]
    return proc


def start_gateway(worker_urls: list[str], *flags: str, ready: bool = True, scheme: str = "http") -> Proc:
    args = ["--host", "127.0.0.1", "--port", "0", "--prometheus-host", "127.0.0.1", "--prometheus-port", "0"]
    if worker_urls:
        args += ["--worker-urls", *worker_urls]
    proc = _spawn([*args, *flags])
    match = _wait_for_log(proc, _GATEWAY_URL)[0]
    proc.urls = [match.group(1)]
    proc.metrics_url = None if match.group(2) == "off" else match.group(2)
    if ready:
        try:
            wait_until(lambda: httpx.get(proc.url + "/readiness", verify=False).status_code == 200, "gateway ready")
        except TimeoutError:
            proc.stop()
            raise
    return proc


def start_mesh_gateway(worker_urls: list[str], *flags: str, seeds: list[str] = (), mesh_port: int = 0) -> Proc:  # type: ignore[assignment]
    """A gateway with --ha-mesh on 127.0.0.1; `mesh_address` is read from its log."""
    mesh = ["--ha-mesh", "--mesh-host", "127.0.0.1", "--mesh-port", str(mesh_port)]
    if seeds:
        mesh += ["--seeds", ",".join(seeds)]
    proc = start_gateway(worker_urls, *mesh, *flags, ready=False)
    proc.mesh_address = _wait_for_log(proc, _MESH_ADDRESS)[0].group(1)
    return proc


def start_of_a_fresh_minute(needed: float = 20.0) -> None:
    """Rate-limit windows are wall-clock minutes and the estimate weighs the previous one: a
    test that counts admissions must not straddle a boundary. Sleeps (at most `needed`
    seconds) into the next minute when fewer than `needed` seconds are left in this one."""
    left = 60.0 - time.time() % 60.0
    if left < needed:
        time.sleep(left + 0.1)


def wait_until(predicate, what: str, deadline: float = STARTUP_DEADLINE, interval: float = 0.02) -> None:  # type: ignore[no-untyped-def]
    """Poll `predicate` every `interval` seconds until true; fail with `what` after `deadline` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def routed_chat(gateway: Proc, messages: list[dict] | None = None, *, key: str | None = None, max_tokens: int = 2) -> str:
    """A chat completion through `gateway` (with `key` as X-SMG-Routing-Key); the worker that served it."""
    headers = {"x-smg-routing-key": key} if key else {}
    body = {"model": "sim-model", "messages": messages or [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.headers["x-smg-routed-worker-id"]


def start_mesh_cluster(worker_urls: list[str], size: int, *flags: str, deadline: float = 10.0) -> list[Proc]:
    """`size` meshed gateways (the first given the workers, the rest seeded by it), each ready and
    seeing every worker."""
    first = start_mesh_gateway(worker_urls, *flags)
    nodes = [first] + [start_mesh_gateway([], *flags, seeds=[first.mesh_address]) for _ in range(size - 1)]
    count = len(worker_urls)
    wait_until(
        lambda: all(len(httpx.get(n.url + "/workers").json()["workers"]) == count for n in nodes),
        f"{count} workers on every gateway",
        deadline,
    )
    wait_until(lambda: all(httpx.get(n.url + "/readiness").status_code == 200 for n in nodes), "every gateway ready", deadline)
    return nodes


def free_ports(count: int) -> int:
    """The first of `count` consecutive ports free for TCP and UDP on 127.0.0.1 (checked now)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count > 65535:
            continue
        held = []
        try:
            for port in range(first, first + count):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    sock = socket.socket(socket.AF_INET, kind)
                    held.append(sock)
                    sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError("no run of free ports")
