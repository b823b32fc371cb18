"""Retries, circuit breakers, health checks, admission, tenant keys and CORS, end to end."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import Proc, start_gateway, start_sim, wait_until

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
HEALTHY = {"fail_rate": 0.0, "unhealthy": False, "hang_rate": 0.0, "die_mid_stream_rate": 0.0, "tpot_ms": 0.0}


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Proc, Proc]]:
    sim = start_sim(2, "--ttft-ms", "0", "--tpot-ms", "0")
    gateway = start_gateway(
        sim.urls,
        "--policy", "round_robin", "--retry-initial-backoff-ms", "1", "--retry-max-backoff-ms", "5",
        "--health-check-interval-secs", "0.1", "--health-failure-threshold", "2", "--health-success-threshold", "2",
        "--cb-failure-threshold", "3", "--cb-success-threshold", "1", "--cb-timeout-duration-secs", "3",
        "--worker-first-byte-timeout-secs", "0.5", "--stream-stall-timeout-secs", "0.5",
    )  # fmt: skip
    yield sim, gateway
    gateway.stop()
    sim.stop()


@pytest.fixture
def cluster(pair: tuple[Proc, Proc]) -> tuple[Proc, Proc]:
    """Both workers healthy and routable again before each test."""
    sim, gateway = pair
    for url in sim.urls:
        httpx.post(url + "/sim/config", json=HEALTHY)

    def all_ready() -> bool:
        httpx.post(gateway.url + "/v1/chat/completions", json=CHAT)  # an open breaker closes only through probes
        workers = httpx.get(gateway.url + "/workers").json()["workers"]
        return all(w["status"] == "ready" and w["circuit_breaker"] == "closed" for w in workers)

    wait_until(all_ready, "workers ready with closed breakers", 10)
    return sim, gateway


def requests_seen(url: str) -> int:
    return httpx.get(url + "/sim/stats").json()["requests"]


def worker(gateway: Proc, url: str) -> dict:
    return next(w for w in httpx.get(gateway.url + "/workers").json()["workers"] if w["url"] == url)


def test_retry_moves_a_503_to_the_healthy_worker(cluster: tuple[Proc, Proc]) -> None:
    sim, gateway = cluster
    bad, good = sim.urls
    httpx.post(bad + "/sim/config", json={"fail_rate": 1.0, "fail_status": 503})
    for _ in range(2):
        r = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT)
        assert r.status_code == 200 and r.headers["x-smg-routed-worker-id"] == good
    assert requests_seen(bad) >= 1
    assert "smg_worker_retries_total" in httpx.get(gateway.metrics_url + "/metrics").text


def test_a_400_passes_through_after_exactly_one_attempt(cluster: tuple[Proc, Proc]) -> None:
    sim, gateway = cluster
    before = sum(requests_seen(u) for u in sim.urls)
    for url in sim.urls:
        httpx.post(url + "/sim/config", json={"fail_rate": 1.0, "fail_status": 400})
    r = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 400 and r.json()["error"]["code"] == "injected_failure"
    assert sum(requests_seen(u) for u in sim.urls) == before + 1


def test_exhausted_retries_pass_the_last_answer_through(cluster: tuple[Proc, Proc]) -> None:
    sim, gateway = cluster
    for url in sim.urls:
        httpx.post(url + "/sim/config", json={"fail_rate": 1.0, "fail_status": 502})
    r = httpx.post(gateway.url + "/v1/completions", json={"model": "sim-model", "prompt": "x"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "injected_failure"


def test_breaker_opens_after_the_threshold_and_recovers(cluster: tuple[Proc, Proc]) -> None:
    sim, gateway = cluster
    bad, good = sim.urls
    httpx.post(bad + "/sim/config", json={"fail_rate": 1.0, "fail_status": 500})
    before = requests_seen(bad)
    for _ in range(8):
        assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT).status_code == 200
    assert worker(gateway, bad)["circuit_breaker"] == "open"
    seen = requests_seen(bad)
    assert seen - before == 3  # the threshold, then no more attempts while open
    for _ in range(4):
        assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT).headers["x-smg-routed-worker-id"] == good
    assert requests_seen(bad) == seen
    httpx.post(bad + "/sim/config", json={"fail_rate": 0.0})

    def probed_and_closed() -> bool:
        httpx.post(gateway.url + "/v1/chat/completions", json=CHAT)
        return worker(gateway, bad)["circuit_breaker"] == "closed"

    wait_until(probed_and_closed, "breaker to close after a half-open probe", 10)
    assert "smg_worker_cb_transitions_total" in httpx.get(gateway.metrics_url + "/metrics").text


def test_failing_health_excludes_and_recovery_readmits(cluster: tuple[Proc, Proc]) -> None:
    sim, gateway = cluster
    sick, good = sim.urls
    httpx.post(sick + "/sim/config", json={"unhealthy": True})
    wait_until(lambda: worker(gateway, sick)["status"] == "not_ready", "worker to be taken out", 5)
    routed = {httpx.post(gateway.url + "/v1/chat/completions", json=CHAT).headers["x-smg-routed-worker-id"] for _ in range(4)}
    assert routed == {good}
    httpx.post(sick + "/sim/config", json={"unhealthy": False})
    wait_until(lambda: worker(gateway, sick)["status"] == "ready", "worker to be re-admitted", 5)
    routed = {httpx.post(gateway.url + "/v1/chat/completions", json=CHAT).headers["x-smg-routed-worker-id"] for _ in range(4)}
    assert routed == {sick, good}


def test_a_hanging_worker_is_retried_elsewhere_after_the_first_byte_timeout(cluster: tuple[Proc, Proc]) -> None:
    sim, gateway = cluster
    hung, good = sim.urls
    httpx.post(hung + "/sim/config", json={"hang_rate": 1.0})
    for _ in range(2):
        r = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, timeout=10)
        assert r.status_code == 200 and r.headers["x-smg-routed-worker-id"] == good


def test_a_stalled_stream_ends_with_an_error_event(cluster: tuple[Proc, Proc]) -> None:
    sim, gateway = cluster
    for url in sim.urls:
        httpx.post(url + "/sim/config", json={"tpot_ms": 2000.0})
    body = {**CHAT, "stream": True, "max_tokens": 3}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=10) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert '"code":"upstream_stream_stalled"' in lines[-1]


def test_admission_queue_full_and_timeout() -> None:
    sim = start_sim(1, "--ttft-ms", "0", "--tpot-ms", "100")
    full = start_gateway(sim.urls, "--max-concurrent-requests", "1", "--queue-size", "0")
    slow = start_gateway(sim.urls, "--max-concurrent-requests", "1", "--queue-size", "4", "--queue-timeout-secs", "0.2")
    try:
        for gateway, status, code in ((full, 429, "admission_queue_full"), (slow, 503, "admission_queue_timeout")):
            holder = threading.Thread(
                target=httpx.post,
                args=(gateway.url + "/v1/chat/completions",),
                kwargs={"json": {**CHAT, "max_tokens": 20}, "timeout": 30},
            )
            holder.start()  # holds the only permit for about 2 s
            wait_until(lambda: httpx.get(sim.url + "/sim/stats").json()["running"] == 1, "the permit to be taken", 5)
            r = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT)
            assert r.status_code == status and r.json()["error"]["code"] == code
            assert r.headers["retry-after"] == "1" and r.headers["x-smg-error-code"] == code
            holder.join(timeout=30)
            assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT).status_code == 200
        assert 'smg_http_rate_limit_total{result="admission_queue_full"} 1.0' in httpx.get(full.metrics_url + "/metrics").text
    finally:
        full.stop()
        slow.stop()
        sim.stop()


def test_tenant_keys_and_cors() -> None:
    sim = start_sim(1, "--ttft-ms", "0", "--tpot-ms", "0")
    gateway = start_gateway(
        sim.urls, "--api-key", "admin-key", "--tenant-api-key", "acme:acme-key", "--cors-allowed-origins", "https://app.example",
        ready=False,
    )  # fmt: skip
    try:
        wait_until(lambda: httpx.get(gateway.url + "/readiness").status_code == 200, "ready")
        tenant = {"authorization": "Bearer acme-key"}
        admin = {"authorization": "Bearer admin-key"}
        assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=tenant).status_code == 200
        assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=admin).status_code == 200
        assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT).status_code == 401
        r = httpx.get(gateway.url + "/workers", headers=tenant)
        assert r.status_code == 401 and "control-plane" in r.json()["error"]["message"]
        assert httpx.get(gateway.url + "/workers", headers=admin).status_code == 200
        assert httpx.get(gateway.url + "/v1/models").status_code == 200

        preflight = httpx.options(
            gateway.url + "/v1/chat/completions",
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        r = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers={**tenant, "origin": "https://app.example"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers={**tenant, "origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        assert "tenant=acme" in gateway.log()
    finally:
        gateway.stop()
        sim.stop()
