"""Graceful shutdown, TLS, metrics and the CLI's handling of bad flags."""

from __future__ import annotations

import datetime
import ipaddress
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import Proc, start_gateway, start_sim, wait_until


def test_sigterm_drains_in_flight_requests() -> None:
    sim = start_sim(1, "--ttft-ms", "0", "--tpot-ms", "20")
    gateway = start_gateway(sim.urls, "--shutdown-grace-period-secs", "4")  # the stream ends within the 2 s settle
    try:
        done: list[str] = []

        def stream() -> None:
            body = {"model": "sim-model", "messages": [], "stream": True, "max_tokens": 60}  # about 1.2 s
            with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=30) as r:
                done.extend(line for line in r.iter_lines() if line)

        client = threading.Thread(target=stream)
        client.start()
        wait_until(lambda: httpx.get(sim.url + "/sim/stats").json()["running"] == 1, "stream to start")
        gateway.signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(gateway.url + "/readiness").status_code == 503, "readiness to flip", 2)
        assert httpx.get(gateway.url + "/readiness").json() == {"status": "not ready", "reason": "draining"}
        assert httpx.get(gateway.url + "/liveness").status_code == 200
        client.join(timeout=20)
        assert done[-1] == "data: [DONE]" and len(done) == 63
        assert gateway.popen.wait(timeout=10) == 0
        assert "draining" in gateway.log()
    finally:
        gateway.stop()
        sim.stop()


def test_settle_window_keeps_serving_then_refuses_new_connections_while_in_flight_finishes() -> None:
    """SIGTERM: readiness 503 at once, liveness 200, new connections served for the settle window
    (grace 4 s: 2 s); then new connections are refused, idle keep-alive ones closed, and a stream
    under way still finishes. The stream is held open by a slow worker and released by the test,
    so no step depends on how fast this machine is."""
    sim = start_sim(1, "--ttft-ms", "0", "--tpot-ms", "100")
    gateway = start_gateway(sim.urls, "--shutdown-grace-period-secs", "4")
    grace, settle = 4.0, 2.0
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    idle: socket.socket | None = None
    try:
        lines: list[str] = []
        stream_ended = threading.Event()

        def stream() -> None:
            body = {"model": "sim-model", "messages": [], "stream": True, "max_tokens": 1000}  # 100 s at this pace
            try:
                with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=30) as r:
                    lines.extend(line for line in r.iter_lines() if line)
            finally:
                stream_ended.set()

        client = threading.Thread(target=stream)
        client.start()
        idle = socket.create_connection((host, int(port)), timeout=10)  # a keep-alive connection, idle from here on
        idle.sendall(b"GET /liveness HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"\r\n\r\nOK"):  # the socket's timeout bounds each read
            chunk = idle.recv(4096)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
        wait_until(lambda: len(lines) >= 2, "stream to start")  # lines are appended as they arrive
        chat = {"model": "sim-model", "messages": [], "max_tokens": 1}

        signalled = time.monotonic()
        gateway.signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(gateway.url + "/readiness").status_code == 503, "readiness to flip", 2)
        assert httpx.get(gateway.url + "/readiness").json() == {"status": "not ready", "reason": "draining"}
        assert httpx.get(gateway.url + "/liveness").status_code == 200
        assert httpx.post(gateway.url + "/v1/chat/completions", json=chat, timeout=10).status_code == 200  # a new connection
        time.sleep(max(0.0, signalled + settle / 2 - time.monotonic()))  # past the 0.5 s at which smg used to refuse
        assert httpx.post(gateway.url + "/v1/chat/completions", json=chat, timeout=10).status_code == 200

        def refused() -> bool:
            try:
                httpx.get(gateway.url + "/liveness", timeout=2)
            except httpx.ConnectError:
                return True
            return False

        wait_until(refused, "new connections refused", settle + 3)
        assert time.monotonic() - signalled >= settle
        assert idle.recv(4096) == b""  # the server closed the idle keep-alive connection
        assert not stream_ended.is_set() and gateway.popen.poll() is None  # the stream is still in flight
        httpx.post(sim.url + "/sim/config", json={"tpot_ms": 0}).raise_for_status()  # let it finish
        assert stream_ended.wait(grace)
        client.join(timeout=10)
        assert lines[-1] == "data: [DONE]" and len(lines) == 1003
        assert gateway.popen.wait(timeout=10) == 0
        assert "no longer accepting connections" in gateway.log()
    finally:
        if idle is not None:
            idle.close()
        gateway.stop()
        sim.stop()


def test_a_second_signal_stops_at_once() -> None:
    sim = start_sim(1)
    gateway = start_gateway(sim.urls, "--shutdown-grace-period-secs", "60")  # a 5 s settle window
    try:
        gateway.signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(gateway.url + "/readiness").status_code == 503, "readiness to flip", 2)
        signalled = time.monotonic()
        gateway.signal(signal.SIGINT)
        gateway.popen.wait(timeout=10)
        assert time.monotonic() - signalled < 5.0  # it did not wait for the settle window
        assert "again: stopping now" in gateway.log()
    finally:
        gateway.stop()
        sim.stop()


def test_metrics_endpoint(gateway: Proc) -> None:
    httpx.post(gateway.url + "/v1/chat/completions", json={"model": "sim-model", "messages": [], "stream": True})
    httpx.post(gateway.url + "/v1/chat/completions", json={"model": "nope", "messages": []})
    text = httpx.get(gateway.metrics_url + "/metrics").text
    for name in (
        "smg_http_requests_total",
        "smg_http_request_duration_seconds_bucket",
        "smg_http_responses_total",
        "smg_router_requests_total",
        "smg_router_request_errors_total",
        "smg_router_upstream_responses_total",
        "smg_router_ttft_seconds_bucket",
        "smg_worker_requests_active",
        "smg_worker_health",
        "smg_worker_pool_size 2.0",
    ):
        assert name in text, name
    assert 'smg_router_request_errors_total{error_code="model_not_found",route="/v1/chat/completions"}' in text
    assert httpx.get(gateway.url + "/metrics").status_code == 404  # metrics live on their own port only


def _self_signed(tmp: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


def test_tls(sim: Proc, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    gateway = start_gateway(sim.urls, "--tls-cert-path", cert, "--tls-key-path", key, ready=False)
    trusted = ssl.create_default_context(cafile=cert)
    try:
        assert gateway.url.startswith("https://")
        wait_until(lambda: httpx.get(gateway.url + "/readiness", verify=trusted).status_code == 200, "TLS gateway ready")
        r = httpx.post(gateway.url + "/v1/chat/completions", json={"model": "sim-model", "messages": []}, verify=trusted)
        assert r.status_code == 200
    finally:
        gateway.stop()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smg", *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--port", "70000"], "--port"),
        (["--policy", "fastest"], "--policy"),
        (["--worker-urls", "ftp://x"], "unsupported scheme"),
        (["--tls-cert-path", "/nonexistent"], "together"),
        (["--request-timeout-secs", "0"], "--request-timeout-secs"),
        (["--max-payload-size", "abc"], "--max-payload-size"),
        (["--no-such-flag"], "unrecognized"),
        (["sim-worker", "--fail-rate", "2"], "fail_rate"),
        (["serve", "--sim-workers", "0"], "--sim-workers"),
        (["--cb-failure-threshold", "0"], "circuit breaker"),
        (["--retry-backoff-multiplier", "0.5"], "--retry-backoff-multiplier"),
        (["--cache-threshold", "2"], "--cache-threshold"),
        (["--tenant-api-key", "nocolon"], "TENANT:KEY"),
        (["--health-failure-threshold", "0"], "health thresholds"),
        (["--worker-urls", "grpc://w"], "needs a port"),
        (["--max-concurrent-requests", "0"], "--max-concurrent-requests"),
        (["--tokenizer-path", "/nonexistent"], "--tokenizer-path"),
        (["--history-backend", "postgres"], "--postgres-db-url"),
        (["--history-backend", "redis"], "--redis-url"),
        (["--history-backend", "files"], "--history-backend"),
        (["--history-db-path", "/etc/hostname/history.db"], "not a writable folder"),
        (["--max-background-responses", "-1"], "--max-background-responses"),
        (["--postgres-op-timeout-secs", "0"], "--postgres-op-timeout-secs"),
    ],
)
def test_bad_flags_exit_with_one_line(args: list[str], words: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smg: error:") and words in lines[0], result.stderr


def test_help_documents_every_flag() -> None:
    text = run_cli("--help").stdout
    for flag in (
        "--host", "--port", "--worker-urls", "--policy", "--api-key", "--tls-cert-path", "--tls-key-path",
        "--max-payload-size", "--request-timeout-secs", "--log-level", "--log-json", "--prometheus-host",
        "--prometheus-port", "--shutdown-grace-period-secs", "--request-id-headers", "--enable-igw",
    ):  # fmt: skip
        assert flag in text, flag
    assert "smg serve" in text and "smg sim-worker" in text
    assert "--sim-fail-rate" in run_cli("serve", "--help").stdout
    assert run_cli("launch", "--help").returncode == 0


def test_every_config_field_has_a_flag() -> None:
    from smg.cli import build_parser, gateway_config_from
    from smg.config import GatewayConfig

    for command in ("launch", "serve"):
        assert gateway_config_from(build_parser(command).parse_args([])) == GatewayConfig()
