"""Every error case answers with the right status, an OpenAI error body and x-smg-error-code."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.helpers import Proc, start_gateway, start_sim, wait_until

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]}


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["x-smg-error-code"] == code
    error = r.json()["error"]
    assert error["code"] == code
    assert set(error) == {"type", "code", "message", "param"}
    assert error["message"]
    return error


def test_malformed_json(gateway: Proc) -> None:
    r = httpx.post(gateway.url + "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"})
    assert assert_error(r, 400, "invalid_json")["type"] == "invalid_request_error"
    r = httpx.post(gateway.url + "/v1/chat/completions", json=[1, 2])
    assert_error(r, 400, "invalid_json")


def test_missing_and_unknown_model(gateway: Proc) -> None:
    r = httpx.post(gateway.url + "/v1/chat/completions", json={"messages": []})
    assert assert_error(r, 400, "missing_required_parameter")["param"] == "model"
    r = httpx.post(gateway.url + "/v1/completions", json={"model": "no-such-model", "prompt": "x"})
    assert assert_error(r, 404, "model_not_found")["param"] == "model"
    r = httpx.post(gateway.url + "/v1/embeddings", json={"model": 7, "input": "x"})
    assert_error(r, 400, "invalid_value")


def test_body_over_limit(gateway: Proc) -> None:
    r = httpx.post(gateway.url + "/v1/chat/completions", json={**CHAT, "pad": "x" * 200_000})
    assert_error(r, 413, "request_body_too_large")

    def chunked():  # no content-length: the limit is enforced while reading
        for _ in range(30):
            yield b"x" * 10_000

    r = httpx.post(gateway.url + "/v1/chat/completions", content=chunked())
    assert_error(r, 413, "request_body_too_large")


def test_unknown_route_and_method(gateway: Proc) -> None:
    assert_error(httpx.get(gateway.url + "/v2/nothing"), 404, "not_found")
    assert_error(httpx.get(gateway.url + "/v1/chat/completions"), 405, "method_not_allowed")


def test_openai_client_sees_errors(gateway: Proc) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-nothing", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"


def test_no_available_workers() -> None:
    gateway = start_gateway(["http://127.0.0.1:9"], "--worker-startup-check-interval", "0.2", ready=False)
    try:
        r = httpx.get(gateway.url + "/readiness")
        assert r.status_code == 503 and r.json()["status"] == "not ready"
        r = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT)
        assert_error(r, 503, "no_available_workers")
        assert httpx.get(gateway.url + "/liveness").status_code == 200
    finally:
        gateway.stop()


@pytest.fixture
def faulty() -> Iterator[tuple[Proc, Proc]]:
    sim = start_sim(1, "--ttft-ms", "0", "--tpot-ms", "5")
    gateway = start_gateway(sim.urls, "--request-timeout-secs", "1", "--log-level", "debug")
    yield sim, gateway
    gateway.stop()
    sim.stop()


def set_faults(sim: Proc, **knobs: object) -> None:
    assert httpx.post(sim.url + "/sim/config", json=knobs).status_code == 200


def test_upstream_status_timeout_and_mid_stream_death(faulty: tuple[Proc, Proc]) -> None:
    sim, gateway = faulty
    set_faults(sim, fail_rate=1.0, fail_status=500)
    r = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 500 and r.json()["error"]["code"] == "injected_failure"

    set_faults(sim, fail_rate=0.0, hang_rate=1.0)
    r = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert_error(r, 504, "upstream_timeout")

    set_faults(sim, hang_rate=0.0, die_mid_stream_rate=1.0)
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": 20}) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[0].startswith('data: {"id"')
    assert '"code":"upstream_stream_error"' in events[-1]

    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="sim-model", messages=CHAT["messages"], stream=True):
            pass

    set_faults(sim, die_mid_stream_rate=0.0)
    assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT).status_code == 200
    assert "Traceback" not in gateway.log()


def test_upstream_connect_failure(faulty: tuple[Proc, Proc]) -> None:
    sim, gateway = faulty
    sim.stop()
    r = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT)
    assert_error(r, 502, "upstream_connect_error")
    metrics = httpx.get(gateway.metrics_url + "/metrics").text
    assert 'smg_router_request_errors_total{error_code="upstream_connect_error",route="/v1/chat/completions"} 1.0' in metrics


def test_client_disconnect_cancels_the_upstream_request(faulty: tuple[Proc, Proc]) -> None:
    sim, gateway = faulty
    body = {**CHAT, "stream": True, "max_tokens": 2000}  # 10 s of tokens at 5 ms each
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()  # keep a reference: a collected iterator closes the response
        assert next(lines).startswith("data: ")
        assert httpx.get(sim.url + "/sim/stats").json()["running"] == 1
    wait_until(lambda: httpx.get(sim.url + "/sim/stats").json()["running"] == 0, "worker to see the disconnect", 5)


def test_api_key() -> None:
    sim = start_sim(1, "--ttft-ms", "0", "--tpot-ms", "0")
    gateway = start_gateway(sim.urls, "--api-key", "sekret", ready=False)
    try:
        wait_until(lambda: httpx.get(gateway.url + "/readiness").status_code == 200, "ready")
        assert httpx.get(gateway.url + "/health").status_code == 200
        assert httpx.get(gateway.url + "/v1/models").status_code == 200
        assert_error(httpx.post(gateway.url + "/v1/chat/completions", json=CHAT), 401, "invalid_api_key")
        assert_error(httpx.get(gateway.url + "/workers", headers={"authorization": "Bearer wrong"}), 401, "invalid_api_key")
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sekret", max_retries=0)
        assert client.chat.completions.create(model="sim-model", messages=CHAT["messages"]).choices
        assert httpx.get(gateway.url + "/workers", headers={"authorization": "Bearer sekret"}).status_code == 200
    finally:
        gateway.stop()
        sim.stop()
