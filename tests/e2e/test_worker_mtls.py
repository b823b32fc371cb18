"""Mutual TLS toward workers (--client-cert-path, --client-key-path, --ca-cert-paths): a worker
behind a private CA that demands a client certificate is served with them and refused without."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from smg.config import GatewayConfig
from smg.http.server import serve_app, server_config
from smg.settings import ConfigError
from smg.simworker.app import SimWorker
from smg.simworker.engine import SimConfig
from tests.helpers import start_gateway, wait_until


@dataclass
class Pki:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_key: str  # a key that is not the client certificate's


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> str:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(path)


def _issue(
    tmp: Path, name: str, ca: x509.Certificate | None, ca_key: ec.EllipticCurvePrivateKey | None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject if ca is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if ca is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    elif name == "worker":
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = builder.sign(ca_key or key, hashes.SHA256())
    (tmp / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca, ca_key = _issue(tmp, "ca", None, None)
    _, server_key = _issue(tmp, "worker", ca, ca_key)
    _, client_key = _issue(tmp, "gateway", ca, ca_key)
    return Pki(
        ca=str(tmp / "ca.pem"),
        server_cert=str(tmp / "worker.pem"),
        server_key=_write_key(tmp / "worker-key.pem", server_key),
        client_cert=str(tmp / "gateway.pem"),
        client_key=_write_key(tmp / "gateway-key.pem", client_key),
        other_key=_write_key(tmp / "other-key.pem", ec.generate_private_key(ec.SECP256R1())),
    )


@pytest.fixture(scope="module")
def worker(pki: Pki) -> Iterator[str]:
    """A simulated worker on https that requires a client certificate from the private CA."""
    config = server_config("127.0.0.1", 0, certfile=pki.server_cert, keyfile=pki.server_key, graceful_timeout=0.5)
    config.ca_certs = pki.ca
    config.verify_mode = ssl.CERT_REQUIRED
    started: list[str] = []
    ready = threading.Event()
    control: dict[str, object] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            control["token"], control["scope"] = trio.lowlevel.current_trio_token(), nursery.cancel_scope
            started.extend(await nursery.start(serve_app, SimWorker(SimConfig()), config))
            ready.set()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert ready.wait(10), "the mTLS worker did not start"
    yield started[0]
    trio.from_thread.run_sync(control["scope"].cancel, trio_token=control["token"])  # type: ignore[attr-defined,arg-type]
    thread.join(10)


@pytest.mark.parametrize("client", ["pool", "httpx"])
def test_a_worker_demanding_a_client_certificate_is_served_with_one(pki: Pki, worker: str, client: str) -> None:
    assert worker.startswith("https://")
    gateway = start_gateway(
        [worker],
        *("--ca-cert-paths", pki.ca, "--client-cert-path", pki.client_cert, "--client-key-path", pki.client_key),
        *("--upstream-client", client),
    )
    try:
        body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        response = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30)
        assert response.status_code == 200, response.text
        assert response.headers["x-smg-routed-worker-id"] == worker
    finally:
        gateway.stop()


def test_without_the_client_certificate_the_worker_refuses_the_gateway(pki: Pki, worker: str) -> None:
    gateway = start_gateway([worker], "--ca-cert-paths", pki.ca, ready=False)
    try:

        def failed() -> bool:
            workers = httpx.get(gateway.url + "/workers").json()["workers"]
            return bool(workers) and workers[0].get("last_error") is not None

        wait_until(failed, "the start-up probe to fail", 15)
        error = httpx.get(gateway.url + "/workers").json()["workers"][0]["last_error"]
        # TLS 1.3: the worker checks the client's certificate after the handshake, and hangs up
        assert any(word in error.lower() for word in ("disconnected", "reset", "certificate")), error
        assert httpx.get(gateway.url + "/readiness").status_code == 503
    finally:
        gateway.stop()


def test_a_worker_behind_a_private_ca_is_not_trusted_without_ca_cert_paths(pki: Pki, worker: str) -> None:
    gateway = start_gateway([worker], "--client-cert-path", pki.client_cert, "--client-key-path", pki.client_key, ready=False)
    try:

        def failed() -> bool:
            workers = httpx.get(gateway.url + "/workers").json()["workers"]
            return bool(workers) and workers[0].get("last_error") is not None

        wait_until(failed, "the start-up probe to fail", 15)
        assert "certificate verify failed" in httpx.get(gateway.url + "/workers").json()["workers"][0]["last_error"]
    finally:
        gateway.stop()


def test_certificates_that_do_not_load_stop_the_start_with_one_line(pki: Pki) -> None:
    with pytest.raises(ConfigError, match=r"^--client-cert-path and --client-key-path must be given together$"):
        GatewayConfig(client_cert_path=pki.client_cert)
    with pytest.raises(ConfigError, match=r"^--client-cert-path: .* are not a PEM certificate and its unencrypted key"):
        GatewayConfig(client_cert_path=pki.client_cert, client_key_path=pki.other_key)
    with pytest.raises(ConfigError, match=r"^--ca-cert-paths: .* holds no PEM certificate"):
        GatewayConfig(ca_cert_paths=(pki.client_key,))
    assert GatewayConfig(ca_cert_paths=(pki.ca,)).worker_tls() is not None
    assert GatewayConfig().worker_tls() is None
