"""`--health-check-port`: the probe routes on a listener of their own, in a real gateway process."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import Proc, start_gateway, start_sim, wait_until

PROBE_URL = re.compile(r"health probes \(/health, /liveness, /readiness\) also served on (http://[\d.]+:\d+)")
CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


@pytest.fixture(scope="module")
def sim() -> Iterator[Proc]:
    proc = start_sim(1, "--ttft-ms", "0", "--tpot-ms", "0")
    yield proc
    proc.stop()


def probe_url(gateway: Proc) -> str:
    match = PROBE_URL.search(gateway.log())
    assert match is not None, gateway.log()
    return match.group(1)


def refuses(url: str) -> bool:
    try:
        httpx.get(url + "/liveness", timeout=2)
    except httpx.ConnectError:
        return True
    return False


def test_probes_answer_on_the_probe_port_as_on_the_main_port_and_nothing_else_does(sim: Proc) -> None:
    gateway = start_gateway(sim.urls, "--health-check-port", "0", "--api-key", "secret")
    try:
        probes = probe_url(gateway)
        assert probes != gateway.url
        for path in ("/health", "/liveness"):
            r = httpx.get(probes + path)
            assert (r.status_code, r.text) == (200, "OK")
        r = httpx.get(probes + "/readiness")
        assert r.status_code == 200
        ready = {"status": "ready", "healthy_workers": 1, "total_workers": 1}
        assert r.json() == httpx.get(gateway.url + "/readiness").json() == ready
        assert r.headers["x-request-id"]
        # the data plane and the control plane are the main port's alone, key or no key
        auth = {"authorization": "Bearer secret"}
        r = httpx.post(probes + "/v1/chat/completions", json=CHAT, headers=auth)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert "--health-check-port" in r.json()["error"]["message"]
        for path in ("/v1/models", "/workers", "/get_loads", "/metrics", "/health_generate"):
            assert httpx.get(probes + path, headers=auth).status_code == 404, path
        assert httpx.post(probes + "/readiness").status_code == 405
        assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=auth).status_code == 200
    finally:
        gateway.stop()


def test_probes_answer_while_the_main_port_is_at_its_connection_cap(sim: Proc) -> None:
    gateway = start_gateway(sim.urls, "--health-check-port", "0", "--max-client-connections", "1")
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    try:
        probes = probe_url(gateway)
        with socket.create_connection((host, int(port))):  # takes the main port's only slot, sends nothing
            wait_until(lambda: "the limit (--max-client-connections)" in gateway.log(), "the main port to be full")
            with pytest.raises(httpx.TimeoutException):  # waits in the backlog while the slot is held
                httpx.get(gateway.url + "/liveness", timeout=1)
            assert httpx.get(probes + "/liveness", timeout=5).status_code == 200
            r = httpx.get(probes + "/readiness", timeout=5)
            assert r.status_code == 200 and r.json()["status"] == "ready"
    finally:
        gateway.stop()


def test_the_probe_port_reports_draining_through_the_shutdown_and_closes_with_the_node(sim: Proc) -> None:
    gateway = start_gateway(sim.urls, "--health-check-port", "0", "--shutdown-grace-period-secs", "4")
    try:
        probes = probe_url(gateway)
        gateway.signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(probes + "/readiness").status_code == 503, "readiness to flip on the probe port", 2)
        assert httpx.get(probes + "/readiness").json() == {"status": "not ready", "reason": "draining"}
        assert httpx.get(probes + "/liveness").status_code == 200
        assert gateway.popen.wait(timeout=15) == 0
        assert refuses(probes)
    finally:
        gateway.stop()


def test_a_taken_probe_port_ends_start_up_with_one_line() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "smg", "--host", "127.0.0.1", "--port", "0", "--health-check-port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("smg: error:")]
    assert errors == [f"smg: error: --health-check-port {port}: address already in use"], result.stderr
    assert "Traceback" not in result.stderr and result.stderr.rstrip().endswith(errors[0])
