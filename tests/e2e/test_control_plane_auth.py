"""Control-plane authentication against a real gateway process: role-bearing API keys, OIDC
bearer tokens verified against a local issuer (discovery document and JWKS served by the test
on 127.0.0.1), key rotation, the audit log, the metrics. Nothing reaches the internet."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.helpers import Proc, start_gateway, wait_until

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]}
ADMIN_KEY, USER_KEY, SHARED_KEY = "sk-admin-4f9a1c", "sk-reader-77e0b2", "sk-shared-0c3d5e"
AUDIENCE = "smg-gateway"
KEYS = ["ops:Ops Team:admin:" + ADMIN_KEY, "mon:Read Only:user:" + USER_KEY]
MAPPING = ["Gateway.Admin=admin", "Gateway.User=user"]


class Issuer:
    """An OIDC issuer on 127.0.0.1: `/.well-known/openid-configuration` and `/certs`; `jwks` can be
    swapped (key rotation); `hits` counts requests by path."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with issuer.lock:
                    issuer.hits[self.path] = issuer.hits.get(self.path, 0) + 1
                    if self.path == "/.well-known/openid-configuration":
                        body: Any = {"issuer": issuer.url, "jwks_uri": issuer.url + "/certs"}
                    elif self.path == "/certs":
                        body = issuer.jwks
                    else:
                        body = None
                data = json.dumps(body).encode()
                self.send_response(200 if body is not None else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def fetches(self) -> int:
        with self.lock:
            return self.hits.get("/certs", 0)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class SigningKey:
    def __init__(self, kid: str, kind: str = "RS256") -> None:
        self.kid, self.alg = kid, kind
        if kind == "RS256":
            self.private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk = {**self.jwk, "kid": kid, "use": "sig", "alg": kind}

    def token(self, issuer: str, roles: list[str], *, lifetime: float = 300, **claims: Any) -> str:
        now = time.time()
        payload = {"iss": issuer, "aud": AUDIENCE, "sub": "user-1", "iat": int(now), "exp": int(now + lifetime), "roles": roles}
        payload.update(claims)
        return pyjwt.encode(payload, self.private, algorithm=self.alg, headers={"kid": self.kid})


def bearer(credential: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"}


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    server = Issuer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def keyed(sim: Proc, issuer: Issuer) -> Iterator[tuple[Proc, SigningKey]]:
    """Keys, the shared --api-key, JWT through discovery, the audit log in text."""
    key = SigningKey("rsa-1")
    issuer.jwks = {"keys": [key.jwk]}
    gateway = start_gateway(
        [sim.urls[0]],
        "--api-key", SHARED_KEY,
        "--control-plane-api-keys", *KEYS,
        "--jwt-issuer", issuer.url, "--jwt-audience", AUDIENCE, "--jwt-role-mapping", *MAPPING,
        "--control-plane-audit-enabled",
        "--worker-startup-check-interval", "0.1",
    )  # fmt: skip
    yield gateway, key
    gateway.stop()


def test_keys_open_the_control_plane_by_role(sim: Proc, keyed: tuple[Proc, SigningKey]) -> None:
    gateway, _ = keyed
    added = httpx.post(gateway.url + "/workers", json={"url": sim.urls[1]}, headers=bearer(ADMIN_KEY))
    assert added.status_code == 202, added.text
    listing = httpx.get(gateway.url + "/workers", headers=bearer(USER_KEY))
    assert listing.status_code == 200 and listing.json()["total"] == 2
    assert httpx.get(gateway.url + "/workers/" + added.json()["worker_id"], headers=bearer(USER_KEY)).status_code == 200

    refused = httpx.post(gateway.url + "/workers", json={"url": "http://127.0.0.1:1"}, headers=bearer(USER_KEY))
    assert refused.status_code == 403
    assert refused.json()["code"] == "FORBIDDEN" and "admin role" in refused.json()["error"]  # the control-plane shape
    assert refused.headers["x-smg-error-code"] == "FORBIDDEN"
    deleted = httpx.delete(gateway.url + "/workers/" + added.json()["worker_id"], headers=bearer(USER_KEY))
    assert deleted.status_code == 403
    assert httpx.post(gateway.url + "/mesh/keys", json={}, headers=bearer(USER_KEY)).status_code == 403

    for headers in ({}, bearer("wrong-key"), {"authorization": "Basic " + ADMIN_KEY}, bearer("a.b.c")):
        answer = httpx.get(gateway.url + "/workers", headers=headers)
        assert answer.status_code == 401, (headers, answer.text)
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.json()["code"] == "UNAUTHORIZED" and answer.json()["error"]

    assert httpx.get(gateway.url + "/workers", headers=bearer(SHARED_KEY)).status_code == 200  # --api-key: admin
    assert httpx.get(gateway.url + "/workers", headers={"x-api-key": ADMIN_KEY}).status_code == 200


def test_the_data_plane_ignores_control_plane_keys(keyed: tuple[Proc, SigningKey]) -> None:
    gateway, _ = keyed
    assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=bearer(SHARED_KEY)).status_code == 200
    assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=bearer(ADMIN_KEY)).status_code == 401
    assert httpx.get(gateway.url + "/v1/models").status_code == 200
    assert httpx.get(gateway.url + "/health").status_code == 200


def test_tokens_open_the_control_plane_by_mapped_role(issuer: Issuer, keyed: tuple[Proc, SigningKey]) -> None:
    gateway, key = keyed
    admin = key.token(issuer.url, ["Gateway.Admin"], preferred_username="ada")
    assert httpx.get(gateway.url + "/workers", headers=bearer(admin)).status_code == 200
    assert httpx.post(gateway.url + "/flush_cache", headers=bearer(admin)).status_code == 200
    reader = key.token(issuer.url, ["Gateway.User"])
    assert httpx.get(gateway.url + "/get_loads", headers=bearer(reader)).status_code == 200
    assert httpx.post(gateway.url + "/flush_cache", headers=bearer(reader)).status_code == 403

    unmapped = httpx.get(gateway.url + "/workers", headers=bearer(key.token(issuer.url, ["Somebody.Else"])))
    assert unmapped.status_code == 403 and "--jwt-role-mapping" in unmapped.json()["error"]
    expired = httpx.get(gateway.url + "/workers", headers=bearer(key.token(issuer.url, ["Gateway.Admin"], lifetime=-120)))
    assert expired.status_code == 401 and "expired" in expired.json()["error"]
    assert 'error="invalid_token"' in expired.headers["www-authenticate"]
    for bad in (
        key.token("http://127.0.0.1:9/other", ["Gateway.Admin"]),  # another issuer
        key.token(issuer.url, ["Gateway.Admin"], aud="someone-else"),
        SigningKey("rsa-1").token(issuer.url, ["Gateway.Admin"]),  # right kid, wrong key
    ):
        assert httpx.get(gateway.url + "/workers", headers=bearer(bad)).status_code == 401


def test_the_audit_log_names_callers_and_never_their_secrets(issuer: Issuer, keyed: tuple[Proc, SigningKey], sim: Proc) -> None:
    gateway, key = keyed
    token = key.token(issuer.url, ["Gateway.Admin"], preferred_username="grace")
    request_id = "audit-check-1"
    assert httpx.get(gateway.url + "/workers", headers={**bearer(token), "x-request-id": request_id}).status_code == 200
    httpx.post(gateway.url + "/workers", json={"url": sim.urls[1]}, headers={**bearer(USER_KEY), "x-request-id": "audit-403"})
    httpx.get(gateway.url + "/workers", headers={"x-request-id": "audit-401"})
    wait_until(lambda: "audit-401" in gateway.log(), "audit lines written", deadline=10)
    lines = [line for line in gateway.log().splitlines() if "smg.audit" in line]
    by_id = {line.rsplit("request_id=", 1)[1]: line for line in lines}
    assert "who=grace" in by_id[request_id] and "sub=user-1" in by_id[request_id] and "auth=jwt" in by_id[request_id]
    assert "role=admin method=GET path=/workers status=200 outcome=ok" in by_id[request_id]
    assert 'who=mon name="Read Only" auth=api_key role=user method=POST' in by_id["audit-403"]
    assert "status=403 outcome=denied" in by_id["audit-403"]
    assert "who=anonymous" in by_id["audit-401"] and "status=401 outcome=denied" in by_id["audit-401"]
    assert not any("/v1/" in line for line in lines)  # data-plane calls are not audited
    log = gateway.log()
    for secret in (ADMIN_KEY, USER_KEY, SHARED_KEY, token, token.split(".")[2]):
        assert secret not in log


def test_auth_results_are_counted(keyed: tuple[Proc, SigningKey]) -> None:
    gateway, _ = keyed
    httpx.get(gateway.url + "/workers", headers=bearer("nope"))
    assert gateway.metrics_url is not None
    text = httpx.get(gateway.metrics_url + "/metrics").text
    counts = {
        line.split('result="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("smg_http_control_plane_auth_total{")
    }
    assert counts["invalid"] >= 1 and counts["missing"] >= 1 and counts["allowed"] >= 1 and counts["forbidden"] >= 1


def test_a_rotated_key_is_fetched_once_and_floods_do_not_hammer_the_issuer(sim: Proc) -> None:
    """A second issuer and gateway: --jwt-jwks-uri given (no discovery), --log-json, no data-plane key."""
    issuer = Issuer()
    old, new = SigningKey("old-rsa"), SigningKey("new-ec", "ES256")
    issuer.jwks = {"keys": [old.jwk]}
    gateway = None
    try:
        gateway = start_gateway(
            [sim.urls[0]],
            "--jwt-issuer", issuer.url, "--jwt-jwks-uri", issuer.url + "/certs", "--jwt-audience", AUDIENCE,
            "--jwt-role-mapping", *MAPPING, "--control-plane-audit-enabled", "--log-json",
        )  # fmt: skip
        wait_until(lambda: issuer.fetches() >= 1, "the first JWKS fetch", deadline=10)
        assert issuer.hits.get("/.well-known/openid-configuration", 0) == 0
        assert httpx.get(gateway.url + "/workers", headers=bearer(old.token(issuer.url, ["Gateway.Admin"]))).status_code == 200
        assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT).status_code == 200  # the data plane stays open

        rotated = new.token(issuer.url, ["Gateway.Admin"])
        fetched = issuer.fetches()
        issuer.jwks = {"keys": [old.jwk, new.jwk]}  # the issuer rotates: the gateway has not seen new-ec yet
        answer = httpx.get(gateway.url + "/workers", headers=bearer(rotated), timeout=15)
        assert answer.status_code == 200, answer.text
        assert issuer.fetches() == fetched + 1

        fetched = issuer.fetches()
        strangers = [SigningKey(f"made-up-{n}", "ES256").token(issuer.url, ["Gateway.Admin"]) for n in range(20)]
        for token in strangers:
            assert httpx.get(gateway.url + "/workers", headers=bearer(token), timeout=15).status_code == 401
        assert issuer.fetches() - fetched <= 1  # rate-limited: at most one fetch for the whole flood

        wait_until(lambda: '"logger":"smg.audit"' in gateway.log(), "JSON audit lines", deadline=10)
        audits = [json.loads(line) for line in gateway.log().splitlines() if '"logger":"smg.audit"' in line]
        assert {"who", "auth", "role", "method", "path", "status", "outcome", "request_id"} <= audits[0].keys()
        assert any(entry["status"] == 200 and entry["auth"] == "jwt" and entry["role"] == "admin" for entry in audits)
        assert not any(token in gateway.log() for token in [rotated, *strangers])
    finally:
        if gateway is not None:
            gateway.stop()
        issuer.close()
