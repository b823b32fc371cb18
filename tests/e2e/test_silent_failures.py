"""Failures that used to be silent now say so: a mesh key or label mismatch, a worker that never
answers, two gateways on one default history file, an open control plane, a bad policy field."""

from __future__ import annotations

import base64
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from smg.app import GatewayApp, is_loopback
from smg.config import GatewayConfig
from smg.context import GatewayContext
from smg.mesh.diagnostics import MAX_TRACKED, Rejections, SeedWatch
from smg.mesh.keyring import KEY_OR_LABEL, NOT_MESH, PEER_ENCRYPTED, PEER_UNENCRYPTED, Keyring, SealError, open_frame, seal
from smg.routing.policies import PolicyConfig
from smg.storage import lock
from smg.workers.registrar import Registrar
from smg.workers.registry import Worker, WorkerRegistry
from tests.helpers import SPAWNED, Proc, start_mesh_gateway, wait_until

# -- the mesh: what a receiver can tell about a frame it cannot open ----------------------------


def cause_of(keyring: Keyring | None, frame: bytes) -> str:
    with pytest.raises(SealError) as caught:
        open_frame(keyring, frame)
    return caught.value.cause


def test_seal_errors_name_their_cause() -> None:
    ours, theirs = Keyring([b"k" * 32], "prod"), Keyring([b"x" * 32], "prod")
    assert cause_of(ours, seal(theirs, b"hello")) == KEY_OR_LABEL
    assert cause_of(ours, seal(Keyring([b"k" * 32], "staging"), b"hello")) == KEY_OR_LABEL  # indistinguishable
    assert cause_of(ours, seal(None, b"hello")) == PEER_UNENCRYPTED
    assert cause_of(None, seal(ours, b"hello")) == PEER_ENCRYPTED
    assert cause_of(ours, b"GET / HTTP/1.1") == NOT_MESH and cause_of(None, b"") == NOT_MESH


def test_rejections_warn_once_a_minute_per_host_within_a_budget() -> None:
    seen = Rejections(every=60.0, budget=3)
    first = seen.record("10.0.0.5", 40001, "udp", KEY_OR_LABEL, now=0.0)
    assert first == (
        "1 frame from 10.0.0.5:40001 (udp) could not be opened: wrong --mesh-key or --mesh-cluster-label? "
        "(a different key and a different label look the same here)"
    )
    assert seen.record("10.0.0.5", 51234, "tcp", KEY_OR_LABEL, now=1.0) is None  # same host, another port
    assert seen.record("10.0.0.5", 40001, "udp", KEY_OR_LABEL, now=59.0) is None
    again = seen.record("10.0.0.5", 40001, "udp", KEY_OR_LABEL, now=60.0)
    assert again is not None and again.startswith("3 frames from 10.0.0.5:40001")  # what came since the last line
    # forged UDP sources: at most `budget` lines a minute over every host
    lines = [seen.record(f"10.9.0.{i}", 1, "udp", NOT_MESH, now=61.0) for i in range(10)]
    assert sum(line is not None for line in lines) == 2  # 3 per window, one spent at t=60
    (latest, *_) = seen.report(now=61.0)
    assert latest["address"] == "10.9.0.9:1" and latest["frames"] == 1 and latest["cause"] == NOT_MESH
    host = next(p for p in seen.report(now=61.0) if p["address"].startswith("10.0.0.5"))
    assert host["frames"] == 4 and host["first_seen_secs_ago"] == 61.0 and host["last_seen_secs_ago"] == 1.0
    assert seen.report(now=61.0 + 601) == []  # only recent senders are reported


def test_rejections_remember_a_bounded_number_of_hosts() -> None:
    seen = Rejections()
    for i in range(MAX_TRACKED * 4):
        seen.record(f"10.{i // 250}.0.{i % 250}", 7946, "udp", KEY_OR_LABEL, now=float(i))
    last = MAX_TRACKED * 4 - 1
    report = seen.report(now=float(last))
    assert len(report) == MAX_TRACKED and report[0]["address"] == f"10.{last // 250}.0.{last % 250}:7946"


def test_a_seed_watch_waits_then_names_each_seed_once_a_minute() -> None:
    watch = SeedWatch(["10.0.0.1:39527", "10.0.0.2:39527"], "10.0.0.9:39527", now=0.0, warn_after=5.0)
    watch.delivered("10.0.0.1:39527", None)
    watch.delivered("10.0.0.2:39527", "Connection refused")
    watch.delivered("10.0.0.3:39527", None)  # not a seed: ignored
    assert watch.check(now=4.0, alone=True) == []  # a join takes a moment
    lines = watch.check(now=5.0, alone=True)
    assert lines[0].startswith("seed 10.0.0.1:39527 accepts connections but has not answered in 5s: a different --mesh-key")
    assert "10.0.0.9:39527" in lines[0]  # or the seed cannot reach us back
    assert lines[1] == "seed 10.0.0.2:39527 is unreachable: Connection refused"
    assert watch.check(now=30.0, alone=True) == [] and len(watch.check(now=65.0, alone=True)) == 2
    assert watch.check(now=200.0, alone=False) == []
    assert watch.reason(now=6.0).startswith("no seed answered yet: seed 10.0.0.1:39527 accepts connections")
    assert [s["reachable"] for s in watch.report()] == [True, False]


MESH_KEY, OTHER_KEY = base64.b64encode(b"a" * 32).decode(), base64.b64encode(b"b" * 32).decode()


def mesh_health(node: Proc) -> dict:
    return httpx.get(node.url + "/mesh/health").json()


@pytest.mark.parametrize(
    "joiner_flags",
    [("--mesh-key", OTHER_KEY, "--mesh-cluster-label", "test"), ("--mesh-key", MESH_KEY, "--mesh-cluster-label", "prod")],
    ids=["key", "label"],
)
def test_gateways_with_another_key_or_label_both_say_so(joiner_flags: tuple[str, ...]) -> None:
    seed = start_mesh_gateway([], "--mesh-key", MESH_KEY, "--mesh-cluster-label", "test")
    joiner = start_mesh_gateway([], *joiner_flags, seeds=[seed.mesh_address])  # type: ignore[list-item]
    try:
        wait_until(lambda: "could not be opened" in seed.log(), "the seed's warning", 15)
        wait_until(lambda: "accepts connections but has not answered" in joiner.log(), "the joiner's warning", 15)
        seed_line = next(line for line in seed.log().splitlines() if "could not be opened" in line)
        assert "from 127.0.0.1:" in seed_line and "wrong --mesh-key or --mesh-cluster-label?" in seed_line
        joiner_line = next(line for line in joiner.log().splitlines() if "has not answered" in line)
        assert f"seed {seed.mesh_address} accepts connections" in joiner_line and "--mesh-cluster-label" in joiner_line
        peers = mesh_health(seed)["unauthenticated_peers"]
        assert peers[0]["address"].startswith("127.0.0.1:") and peers[0]["frames"] >= 1 and peers[0]["cause"] == KEY_OR_LABEL
        assert mesh_health(seed)["status"] == "healthy"  # a stray sender does not degrade the seed's cluster
        health = mesh_health(joiner)
        assert health["status"] == "degraded" and health["cluster_size"] == 1
        assert health["reason"].startswith(f"no seed answered yet: seed {seed.mesh_address} accepts connections")
        assert health["seeds"][0]["address"] == seed.mesh_address and health["seeds"][0]["reachable"] is True
    finally:
        joiner.stop()
        seed.stop()


# -- a worker that never answers -----------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_an_unreachable_worker_is_logged_at_once_and_then_periodically(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="smg.workers")
    registry = WorkerRegistry()
    registrar = Registrar(registry, startup_timeout=60.0, check_interval=0.1, health_checks=False, startup_log_secs=0.5)
    worker = Worker.from_url(f"http://127.0.0.1:{closed_port()}")
    registry.add(worker)
    async with trio.open_nursery() as nursery:
        await nursery.start(registrar.run)
        registrar.register(worker)

        def records() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.getMessage().startswith(f"worker {worker.url} not ready")]

        with trio.fail_after(5):
            while len(records()) < 2:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    first, second = (r.getMessage() for r in records()[:2])
    assert "after 1 attempts: discovery" in first or "after 1 attempts: health probe" in first, first
    assert "ConnectError" in first and "--worker-startup-timeout-secs" in first
    # not every retry: the next line comes a whole interval later, after several more attempts
    assert records()[1].created - records()[0].created >= 0.5 - 0.01
    assert int(second.split(" after ")[1].split()[0]) > 2, second


# -- the default SQLite history file --------------------------------------------------------


def test_the_default_history_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    db = str(tmp_path / "history.db")
    assert lock.check(db) is None and not os.path.exists(lock.lock_path(db))  # checking creates nothing
    fd = lock.acquire(db)
    try:
        problem = lock.check(db)
        assert problem is not None and f"in use by pid {os.getpid()}" in problem and "--history-db-path" in problem
        with pytest.raises(lock.HistoryLocked):
            lock.acquire(db)
    finally:
        lock.release(fd)
    assert lock.check(db) is None
    lock.release(lock.acquire(db))


def spawn_default_gateway(tmp_path: Path, name: str, *flags: str) -> Proc:
    """A gateway whose history path is the default one under `tmp_path` (no $SMG_HISTORY_DB_PATH)."""
    env = {k: v for k, v in os.environ.items() if k != "SMG_HISTORY_DB_PATH"}
    env.update(XDG_DATA_HOME=str(tmp_path), PYTHONUNBUFFERED="1")
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "smg", "--host", "127.0.0.1", "--port", "0", "--prometheus-port", "0", "--enable-igw", *flags],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    proc = Proc(popen, log_path)
    SPAWNED.append(proc)
    return proc


def test_two_gateways_cannot_share_the_default_history_file_unknowingly(tmp_path: Path) -> None:
    default = tmp_path / "smg" / "history.db"
    first = spawn_default_gateway(tmp_path, "first")
    try:
        wait_until(lambda: "smg gateway listening" in first.log(), "the first gateway")
        env = {k: v for k, v in os.environ.items() if k != "SMG_HISTORY_DB_PATH"} | {"XDG_DATA_HOME": str(tmp_path)}
        second = subprocess.run(
            [sys.executable, "-m", "smg", "--host", "127.0.0.1", "--port", "0"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert second.returncode == 2 and len(second.stderr.splitlines()) == 1, second.stderr
        assert f"history database {default} is in use by pid {first.popen.pid}" in second.stderr
        # naming the file is a choice: SQLite's WAL mode serves two processes on one host
        shared = spawn_default_gateway(tmp_path, "shared", "--history-db-path", str(default))
        try:
            wait_until(lambda: "smg gateway listening" in shared.log(), "a gateway sharing the file on purpose")
        finally:
            shared.stop()
        first.popen.send_signal(signal.SIGKILL)  # the kernel releases the lock with the process
        first.popen.wait(timeout=10)
        third = spawn_default_gateway(tmp_path, "third")
        try:
            wait_until(lambda: "smg gateway listening" in third.log(), "a gateway after the first died")
        finally:
            third.stop()
    finally:
        first.stop()


# -- an open control plane -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        ({"host": "0.0.0.0"}, True),
        ({"host": "10.1.2.3", "tenant_api_keys": ()}, True),
        ({"host": "127.0.0.1"}, False),
        ({"host": "localhost"}, False),
        ({"host": "::1"}, False),
        ({"host": "0.0.0.0", "api_key": "secret"}, False),
        ({"host": "0.0.0.0", "tenant_api_keys": ("team:key",)}, False),  # closed to everyone: no admin key exists
    ],
)
def test_an_unauthenticated_control_plane_on_the_network_is_warned_about(
    caplog: pytest.LogCaptureFixture, settings: dict, warned: bool
) -> None:
    caplog.set_level(logging.WARNING, logger="smg.router")
    GatewayApp(GatewayContext.create(GatewayConfig(history_backend="none", **settings)))
    lines = [r.getMessage() for r in caplog.records if "control plane" in r.getMessage()]
    assert bool(lines) is warned, lines
    if warned:
        assert f"unauthenticated on {settings['host']}" in lines[0] and "--api-key" in lines[0]


def test_is_loopback() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.4.5", "::1", "[::1]", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "gateway.internal"))


# -- policy configuration -------------------------------------------------------------------


def test_a_bad_virtual_nodes_value_names_its_own_field() -> None:
    with pytest.raises(ValueError, match=r"^virtual_nodes must be at least 1, got 0$"):
        PolicyConfig(virtual_nodes=0)
    with pytest.raises(ValueError, match=r"^--prefix-token-count must be at least 1, got 0$"):
        PolicyConfig(prefix_token_count=0)


def test_the_metrics_listener_follows_host_unless_told_otherwise(tmp_path: Path) -> None:
    """`--host 127.0.0.1` kept /metrics on 0.0.0.0 before: a loopback gateway published its metrics."""
    assert GatewayConfig(host="127.0.0.1").metrics_host == "127.0.0.1"
    assert GatewayConfig(host="::1").metrics_host == "::1"
    assert GatewayConfig(host="127.0.0.1", prometheus_host="0.0.0.0").metrics_host == "0.0.0.0"
    command = [sys.executable, "-m", "smg", "--host", "127.0.0.1", "--port", "0", "--prometheus-port", "0",
               "--history-backend", "memory"]  # fmt: skip
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "listening on" in line:
                break
        metrics = line.split("metrics ")[1].rstrip(")\n")
        assert metrics.startswith("http://127.0.0.1:"), line
        assert httpx.get(metrics + "/metrics", timeout=10).status_code == 200
    finally:
        proc.kill()  # nothing in flight, nothing to drain
        proc.wait(20)
