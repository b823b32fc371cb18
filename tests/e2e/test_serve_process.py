"""`smg serve` as real processes (issue 13 §5): ports, the supervised child, and start-up errors.

Every listener whose port is taken ends start-up with one line naming its
flag and exit 2; the simulated workers bind free ports (never one the
gateway needs); a worker process that dies ends `smg serve` with one line;
a `kill -9` of `smg serve` takes its workers down with it; and the child
runs the installed package whatever folder `smg serve` was started from.
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
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import SPAWNED, STARTUP_DEADLINE, Proc, wait_until

SMG_SCRIPT = Path(sys.executable).parent / "smg"  # the console script `pip install` wrote
SERVE = ["serve", "--host", "127.0.0.1", "--prometheus-host", "127.0.0.1", "--history-backend", "memory"]
SIM = re.compile(r"simulated workers \(pid (\d+)\) listening on (\S+), (\S+)")
GATEWAY = re.compile(r"smg gateway listening on (http://[\d.]+:\d+)")
EXIT_DEADLINE = 15.0  # seconds for a process to exit once it should


def smg(*args: str) -> list[str]:
    return [sys.executable, "-m", "smg", *args]


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port held by a listening socket for the test's length (as an older process would hold it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def free_pair() -> int:
    """A port P with P + 1 free as well (the gateway on P, its metrics on P + 1, as in the issue)."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two consecutive free ports")


def start_serve(*args: str, command: list[str] | None = None, cwd: Path | None = None) -> tuple[Proc, int, list[str]]:
    """`smg serve` with two simulated workers; returns it once ready, with the child's pid and URLs."""
    fd, path = tempfile.mkstemp(prefix="smg-test-", suffix=".log")
    popen = subprocess.Popen(
        [*(command or smg()), *SERVE, "--sim-workers", "2", *args],
        stdout=fd,
        stderr=fd,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    os.close(fd)
    proc = Proc(popen, Path(path))
    SPAWNED.append(proc)
    wait_until(lambda: SIM.search(proc.log()) is not None or popen.poll() is not None, "simulated workers", STARTUP_DEADLINE)
    match = SIM.search(proc.log())
    assert match is not None, proc.log()
    proc.urls = [GATEWAY.findall(proc.log())[0]]
    wait_until(lambda: httpx.get(proc.url + "/readiness").json().get("healthy_workers") == 2, "two healthy workers")
    return proc, int(match.group(1)), [match.group(2), match.group(3)]


def gone(pid: int) -> bool:
    """No such process, or only its zombie (exited; whoever adopted it has not reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def refuses(url: str) -> bool:
    try:
        httpx.get(url + "/health", timeout=1)
    except httpx.ConnectError:
        return True
    return False


def one_error_line(stderr: str) -> str:
    """The single `smg: error:` line of a failed run (log lines may come before it; no traceback)."""
    errors = [line for line in stderr.splitlines() if line.startswith("smg: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    assert stderr.rstrip().endswith(errors[0]), stderr
    return errors[0]


@pytest.mark.parametrize("flag", ["--port", "--prometheus-port", "--mesh-port", "--sim-port"])
def test_a_taken_port_ends_start_up_with_one_line_naming_the_flag(flag: str, held_port: int) -> None:
    ports = {"--port": "0", "--prometheus-port": "0", flag: str(held_port)}
    args = [arg for item in ports.items() for arg in item]
    if flag == "--mesh-port":
        args += ["--ha-mesh", "--mesh-host", "127.0.0.1"]
    result = subprocess.run(smg(*SERVE, *args), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert one_error_line(result.stderr) == f"smg: error: {flag} {held_port}: address already in use"


def test_the_second_simulated_worker_s_port_is_named_too() -> None:
    first = free_pair()  # free, with the next one held: the port just below a held one may be anyone's
    with socket.socket() as held:
        held.bind(("127.0.0.1", first + 1))
        held.listen()
        args = ["--port", "0", "--prometheus-port", "0", "--sim-workers", "2", "--sim-port", str(first)]
        result = subprocess.run(smg(*SERVE, *args), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    expected = f"smg: error: --sim-port {first}: port {first + 1}: address already in use"
    assert one_error_line(result.stderr) == expected


@pytest.mark.skipif(not SMG_SCRIPT.exists(), reason="the smg console script is not installed next to this Python")
def test_serve_next_to_its_metrics_port_from_a_folder_holding_an_smg_package(tmp_path: Path) -> None:
    """The issue's command line (metrics on gateway port + 1), run where `./smg/` would shadow the package."""
    (tmp_path / "smg").mkdir()
    (tmp_path / "smg" / "__init__.py").write_text('raise ImportError("not the installed smg")\n')
    port = free_pair()
    proc, child, urls = start_serve(
        "--port",
        str(port),
        "--prometheus-port",
        str(port + 1),
        "--shutdown-grace-period-secs",
        "1",
        command=[str(SMG_SCRIPT)],
        cwd=tmp_path,
    )
    try:
        assert proc.url == f"http://127.0.0.1:{port}"
        assert all(not url.endswith((f":{port}", f":{port + 1}")) for url in urls)
        answer = httpx.post(proc.url + "/v1/completions", json={"model": "sim-model", "prompt": "hi", "max_tokens": 2})
        assert answer.status_code == 200 and httpx.get(f"http://127.0.0.1:{port + 1}/metrics").status_code == 200
        proc.signal(signal.SIGTERM)
        assert proc.popen.wait(timeout=EXIT_DEADLINE) == 0, proc.log()
        assert gone(child) and all(refuses(url) for url in urls)
    finally:
        proc.stop()


def test_a_simulated_worker_process_that_dies_ends_serve_with_one_line() -> None:
    proc, child, _ = start_serve("--port", "0", "--prometheus-port", "0")
    try:
        os.kill(child, signal.SIGKILL)
        assert proc.popen.wait(timeout=EXIT_DEADLINE) == 1, proc.log()
        line = one_error_line(proc.log())
        assert line == f"smg: error: the simulated workers (pid {child}) exited (killed by SIGKILL); stopping"
    finally:
        proc.stop()


def test_kill_9_of_serve_takes_its_simulated_workers_down() -> None:
    proc, child, urls = start_serve("--port", "0", "--prometheus-port", "0")
    try:
        proc.signal(signal.SIGKILL)
        proc.popen.wait(timeout=EXIT_DEADLINE)
        deadline = time.monotonic() + 5.0
        while not (gone(child) and all(refuses(url) for url in urls)):
            assert time.monotonic() < deadline, f"the simulated workers (pid {child}) outlived smg serve"
            time.sleep(0.05)
    finally:
        proc.stop()
        if not gone(child):
            os.kill(child, signal.SIGKILL)
