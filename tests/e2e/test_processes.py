"""`smg launch --processes N` (issue 18): N gateway processes share the client port, each a mesh
member with its own mesh and metrics port; the parent restarts one that dies and stops them all
on SIGTERM; a start-up error stops everything with the child's one line."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from smg.supervisor import Supervisor
from tests.helpers import Proc, _spawn, free_ports, start_of_a_fresh_minute, start_sim, wait_until

DEADLINE = 20.0


def children_of(parent: int) -> list[int]:
    text = " ".join(p.read_text() for p in Path(f"/proc/{parent}/task").glob("*/children"))
    return [int(pid) for pid in text.split()]


def members(url: str, headers: dict[str, str] | None = None) -> dict[str, tuple[str, int]]:
    """The mesh as whichever process answers sees it (none yet from one that is still starting)."""
    nodes = httpx.get(url + "/mesh/status", timeout=5, headers=headers).json().get("nodes", [])
    return {n["name"]: (n["status"], n["incarnation"]) for n in nodes}


@pytest.fixture(scope="module")
def worker() -> Iterator[Proc]:
    sim = start_sim(1, "--ttft-ms", "0", "--tpot-ms", "0")
    yield sim
    sim.stop()


def launch(worker: Proc, *flags: str) -> tuple[Proc, str, int, int]:
    port, mesh, metrics = free_ports(1), free_ports(2), free_ports(2)
    args = ["launch", "--processes", "2", "--host", "127.0.0.1", "--port", str(port), "--mesh-port", str(mesh)]
    args += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics), "--worker-urls", worker.url, *flags]
    proc = _spawn(args)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: len(re.findall(r"smg gateway listening on", proc.log())) >= 2, "two processes listening", DEADLINE)
    return proc, url, mesh, metrics


def test_processes_share_the_port_form_a_mesh_and_survive_a_kill(worker: Proc) -> None:
    parent, url, mesh, metrics = launch(worker)
    try:
        assert "smg.server[0]: smg gateway listening" in parent.log()  # each process's lines name it
        assert "smg.server[1]: smg gateway listening" in parent.log()
        names = {f"127.0.0.1:{mesh}", f"127.0.0.1:{mesh + 1}"}
        wait_until(lambda: {n for n, (s, _) in members(url).items() if s == "alive"} == names, "both members alive", DEADLINE)
        table = subprocess.run(
            [sys.executable, "-m", "smg", "mesh", "status", "--url", url], capture_output=True, text=True, timeout=30
        ).stdout
        host = socket.gethostname()
        assert f"{host} (process 0)" in table and f"{host} (process 1)" in table  # members of their host
        body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        for _ in range(40):  # a new connection each: the kernel spreads connections over the processes
            assert httpx.post(url + "/v1/chat/completions", json=body, timeout=10).status_code == 200
        for port in (metrics, metrics + 1):  # each process has its own metrics port, and served some
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            assert re.search(r"smg_router_requests_total\{[^}]*\} [1-9]", text), f"process on metrics port {port} served nothing"

        first, second = children_of(parent.popen.pid)
        index = int(re.findall(rf"gateway process (\d) started \(pid {first}\)", parent.log())[0])
        name = f"127.0.0.1:{mesh + index}"  # the killed process's member name
        incarnation = members(url)[name][1]
        subprocess.run(["kill", "-9", str(first)], check=True)
        wait_until(
            lambda: first not in children_of(parent.popen.pid) and len(children_of(parent.popen.pid)) == 2,
            "the killed process restarted",
            DEADLINE,
        )
        wait_until(  # alive again, as a new life, in the view of whichever process answers
            lambda: (view := members(url).get(name, ("", -1)))[0] == "alive" and view[1] > incarnation,
            "the restarted process alive with a higher incarnation",
            DEADLINE,
        )
        assert second in children_of(parent.popen.pid)  # the other one was never touched
        assert f"gateway process {index} (pid {first}) exited with signal SIGKILL; restarting it" in parent.log()
        assert httpx.post(url + "/v1/chat/completions", json=body, timeout=10).status_code == 200

        parent.signal(signal.SIGTERM)
        assert parent.popen.wait(timeout=30) == 0
        # each stopped: drained (status 0), or by the signal itself if it came before the process's
        # handler was installed (a process still starting has no requests to drain)
        assert len(re.findall(r"stopped \((status 0|signal SIGTERM)\)", parent.log())) == 2
    finally:
        parent.stop()


def test_a_tenant_limit_holds_across_the_processes(worker: Proc, tmp_path: Path) -> None:
    limit = 20
    limits = tmp_path / "limits.json"
    limits.write_text(json.dumps({"tenants": {"team": {"requests_per_minute": limit}}}))
    flags = ("--api-key", "admin-key", "--tenant-api-key", "team:team-key", "--tenant-rate-limit-config", str(limits))
    parent, url, mesh, _ = launch(worker, *flags)
    try:
        names = {f"127.0.0.1:{mesh}", f"127.0.0.1:{mesh + 1}"}
        admin = {"authorization": "Bearer admin-key"}
        wait_until(
            lambda: {n for n, (s, _) in members(url, admin).items() if s == "alive"} == names, "both members alive", DEADLINE
        )
        chat = {"model": "sim-model", "messages": [{"role": "user", "content": "limit me"}], "max_tokens": 2}
        start_of_a_fresh_minute()  # a window boundary mid-test would age the counts being checked
        admitted = refused = 0
        for _ in range(limit + 12):  # a new connection each: the kernel spreads them over the two processes
            response = httpx.post(url + "/v1/chat/completions", json=chat, headers={"authorization": "Bearer team-key"})
            if response.status_code == 429:
                assert response.json()["error"]["code"] == "rate_limit_exceeded"
                refused += 1
            else:
                assert response.status_code == 200, response.text
                admitted += 1
        # as between separate gateways: sequential requests over-admit by a few at most, never under-admit
        assert limit <= admitted <= limit + 3, (admitted, refused)
    finally:
        parent.stop()


def test_a_start_up_error_stops_every_process_with_its_one_line(worker: Proc) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        mesh = free_ports(2)
        args = ["launch", "--processes", "2", "--host", "127.0.0.1", "--port", str(port), "--mesh-port", str(mesh)]
        proc = _spawn([*args, "--prometheus-port", "0", "--worker-urls", worker.url])
        try:
            assert proc.popen.wait(timeout=30) == 2
            assert f"--port {port}" in proc.log() and "could not start" in proc.log()
        finally:
            proc.stop()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--processes", "0"], "--processes must be a positive number or 'auto'"),
        (["--processes", "2", "--mesh-port", "0"], "--processes needs a fixed --mesh-port"),
        (["--processes", "2", "--port", "0"], "--processes needs a fixed --port"),
    ],
)
def test_bad_process_flags_are_one_line(flags: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "smg", "launch", *flags], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1


def test_serve_refuses_processes() -> None:
    done = subprocess.run([sys.executable, "-m", "smg", "serve", "--processes", "2"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--processes is for smg launch" in done.stderr


async def test_a_process_that_keeps_dying_stops_the_parent_with_1() -> None:
    supervisor = Supervisor(2, [sys.executable, "-c", "import sys; sys.exit(3)"], {})
    assert await supervisor.run() == 1
    assert len(supervisor.processes) == 2  # the other one was stopped with it


async def test_a_start_up_error_is_not_retried() -> None:
    supervisor = Supervisor(3, [sys.executable, "-c", "import sys; sys.exit(2)"], {})
    assert await supervisor.run() == 2


def test_killing_one_process_under_traffic_fails_only_its_requests_in_flight() -> None:
    """8 clients, each one request at a time (a new connection each), while one of the two
    processes is killed: at most the 8 requests in flight at that instant can fail (those the
    dead process held, accepted or still in its listen queue); everything after goes to the
    live one, then to both again."""
    sim = start_sim(1, "--ttft-ms", "20", "--tpot-ms", "0")
    parent, url, _, _ = launch(sim)
    clients = 8
    try:
        wait_until(lambda: sum(s == "alive" for s, _ in members(url).values()) == 2, "both members alive", DEADLINE)
        body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        stop_at = [float("inf")]
        outcomes: list[bool] = []
        lock = threading.Lock()

        def client() -> None:
            while time.monotonic() < stop_at[0]:
                try:
                    ok = httpx.post(url + "/v1/chat/completions", json=body, timeout=10).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    outcomes.append(ok)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(outcomes) > 50, "traffic flowing", DEADLINE)
        victim = children_of(parent.popen.pid)[0]
        subprocess.run(["kill", "-9", str(victim)], check=True)
        wait_until(
            lambda: len(children_of(parent.popen.pid)) == 2 and victim not in children_of(parent.popen.pid), "restarted", DEADLINE
        )
        wait_until(lambda: sum(s == "alive" for s, _ in members(url).values()) == 2, "both alive again", DEADLINE)
        served = len(outcomes)
        wait_until(lambda: len(outcomes) > served + 50, "traffic after the restart", DEADLINE)
        stop_at[0] = time.monotonic()
        for thread in threads:
            thread.join(timeout=20)
        failed = outcomes.count(False)
        assert failed <= clients, f"{failed} of {len(outcomes)} requests failed"
        assert all(outcomes[-40:])  # the restarted process serves its share
    finally:
        stop_at[0] = 0.0
        parent.stop()
        sim.stop()
