"""`/workers` CRUD, `/get_loads`, `/flush_cache` and the profile routes against real simulated workers.

Control-plane errors are the reference's `{"error": "<message>", "code": "<CODE>"}`, `code`
at the top level; the data plane keeps the OpenAI shape.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import Proc, start_gateway, start_sim, wait_until

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def igw() -> Iterator[tuple[Proc, Proc]]:
    sim = start_sim(3, "--ttft-ms", "0", "--tpot-ms", "0")
    gateway = start_gateway([], "--enable-igw", "--worker-startup-check-interval", "0.1")
    yield sim, gateway
    gateway.stop()
    sim.stop()


def worker_status(gateway: Proc, worker_id: str) -> str | None:
    r = httpx.get(f"{gateway.url}/workers/{worker_id}")
    return r.json()["status"] if r.status_code == 200 else None


def test_igw_starts_empty_and_serves_added_workers(igw: tuple[Proc, Proc]) -> None:
    sim, gateway = igw
    assert httpx.get(gateway.url + "/readiness").json()["status"] == "ready"
    r = httpx.post(gateway.url + "/workers", json={"url": sim.urls[0] + "/", "labels": {"zone": "a"}})
    assert r.status_code == 202
    body = r.json()
    assert body["status"] == "accepted" and body["location"] == f"/workers/{body['worker_id']}"
    assert body["url"] == sim.urls[0]  # normalised: trailing slash gone
    wait_until(lambda: worker_status(gateway, body["worker_id"]) == "ready", "worker ready")
    assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT).status_code == 200
    listing = httpx.get(gateway.url + "/workers").json()
    assert listing["total"] == 1 and listing["workers"][0]["labels"] == {"zone": "a"}
    assert listing["workers"][0]["models"] == ["sim-model"]
    assert {"prefill_count": 0, "decode_count": 0, "regular_count": 1}.items() <= listing["stats"].items()
    reference_fields = {"id", "url", "model_id", "models", "worker_type", "connection_mode", "runtime_type", "labels"}
    reference_fields |= {"priority", "cost", "is_healthy", "status", "load"}
    assert reference_fields <= listing["workers"][0].keys()


def bad_request(r: httpx.Response, words: str) -> bool:
    body = r.json()
    return r.status_code == 400 and body["code"] == "BAD_REQUEST" and words in body["error"]


def test_duplicate_unknown_and_bad_requests(igw: tuple[Proc, Proc]) -> None:
    sim, gateway = igw
    worker_id = httpx.get(gateway.url + "/workers").json()["workers"][0]["id"]
    r = httpx.post(gateway.url + "/workers", json={"url": sim.urls[0].replace("127.0.0.1", "127.0.0.1") + "/"})
    assert r.status_code == 409 and r.json()["code"] == "WORKER_ALREADY_EXISTS"  # clients read body["code"]
    assert r.json()["error"] == (
        f"Worker already exists at URL '{sim.urls[0]}' with ID {worker_id}. "
        f"Use PUT /workers/{worker_id} to replace or PATCH /workers/{worker_id} to update."
    )
    assert r.headers["x-smg-error-code"] == "WORKER_ALREADY_EXISTS"
    unknown = f"{gateway.url}/workers/ffffffffffffffff"
    for r in (httpx.get(unknown), httpx.delete(unknown), httpx.patch(unknown, json={}), httpx.put(unknown, json={})):
        assert r.status_code == 404
        assert r.json() == {"error": "Worker ffffffffffffffff not found", "code": "WORKER_NOT_FOUND"}
    assert bad_request(httpx.post(gateway.url + "/workers", json={"url": "ftp://x"}), "unsupported scheme")
    assert bad_request(httpx.post(gateway.url + "/workers", json={}), "'url'")
    assert bad_request(httpx.post(gateway.url + "/workers", content=b"{not json"), "not valid JSON")
    assert bad_request(httpx.put(f"{gateway.url}/workers/{worker_id}", json={"url": sim.urls[1]}), "URL mismatch")
    assert bad_request(httpx.patch(f"{gateway.url}/workers/{worker_id}", json={"priority": "high"}), "'priority'")
    # the data plane keeps the OpenAI shape
    r = httpx.post(gateway.url + "/v1/chat/completions", json={**CHAT, "model": "no-such-model"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_patch_put_and_delete(igw: tuple[Proc, Proc]) -> None:
    sim, gateway = igw
    r = httpx.post(gateway.url + "/workers", json={"url": sim.urls[1]})
    worker_id = r.json()["worker_id"]
    wait_until(lambda: worker_status(gateway, worker_id) == "ready", "second worker ready")
    r = httpx.patch(f"{gateway.url}/workers/{worker_id}", json={"priority": 7, "labels": {"tier": "x"}})
    assert r.status_code == 200 and r.json()["priority"] == 7 and r.json()["labels"] == {"tier": "x"}
    assert r.json()["worker_id"] == r.json()["id"] == worker_id
    r = httpx.put(f"{gateway.url}/workers/{worker_id}", json={"url": sim.urls[1], "cost": 2.5})
    assert r.status_code == 202 and r.json()["status"] == "accepted" and r.json()["worker_id"] == worker_id
    wait_until(lambda: worker_status(gateway, worker_id) == "ready", "re-probed worker ready")
    after = httpx.get(f"{gateway.url}/workers/{worker_id}").json()
    assert after["cost"] == 2.5 and after["priority"] == 50 and after["labels"] == {}
    r = httpx.delete(f"{gateway.url}/workers/{worker_id}")
    assert r.status_code == 202 and r.json()["status"] == "accepted" and r.json()["worker_id"] == worker_id
    wait_until(lambda: worker_status(gateway, worker_id) is None, "worker removed")
    routed = {httpx.post(gateway.url + "/v1/chat/completions", json=CHAT).headers["x-smg-routed-worker-id"] for _ in range(4)}
    assert routed == {sim.urls[0]}


def test_unreachable_worker_fails_registration() -> None:
    gateway = start_gateway([], "--enable-igw", "--worker-startup-timeout-secs", "0.5", "--worker-startup-check-interval", "0.1")
    try:
        worker_id = httpx.post(gateway.url + "/workers", json={"url": "http://127.0.0.1:9"}).json()["worker_id"]
        assert worker_status(gateway, worker_id) == "pending"
        wait_until(lambda: worker_status(gateway, worker_id) == "failed", "registration to give up", 5)
        assert "ConnectError" in httpx.get(f"{gateway.url}/workers/{worker_id}").json()["last_error"]
    finally:
        gateway.stop()


def test_loads_and_flush_cache(igw: tuple[Proc, Proc]) -> None:
    sim, gateway = igw
    prompt = " ".join(f"t{i}" for i in range(64))
    blocks_before = httpx.get(sim.urls[0] + "/sim/stats").json()["cache_blocks"]
    for _ in range(2):
        httpx.post(gateway.url + "/v1/completions", json={"model": "sim-model", "prompt": prompt, "max_tokens": 1})
    loads = httpx.get(gateway.url + "/get_loads").json()
    assert loads["total_workers"] == loads["successful"] == 1
    assert loads["loads"][0]["loads"][0]["num_running_reqs"] == 0
    assert loads["aggregate"]["num_waiting_reqs"] == 0
    # the reference's list: the worker, its KV tokens in use over its ranks, and its own report
    [report] = loads["workers"]
    assert report["worker"] == sim.urls[0] and report["details"]["loads"] == loads["loads"][0]["loads"]
    # KV tokens the running requests hold: none once both answered (cached prefixes are not "in use")
    assert report["load"] == report["details"]["loads"][0]["num_used_tokens"] == 0
    assert httpx.get(sim.urls[0] + "/sim/stats").json()["cache_blocks"] == blocks_before + 4  # 64 prompt tokens
    r = httpx.post(gateway.url + "/flush_cache")
    assert r.status_code == 200
    assert {"status": "success", "workers_flushed": 1, "total_workers": 1, "total_http_workers": 1}.items() <= r.json().items()
    assert httpx.get(sim.urls[0] + "/sim/stats").json()["cache_blocks"] == 0


def test_worker_urls_merge_without_duplicates() -> None:
    sim = start_sim(1, "--ttft-ms", "0")
    gateway = start_gateway([sim.url, sim.url + "/", sim.url.replace("http://", "")])
    try:
        workers = httpx.get(gateway.url + "/workers").json()["workers"]
        assert [w["url"] for w in workers] == [sim.url]
        assert "duplicate" in gateway.log()
    finally:
        gateway.stop()
        sim.stop()


def test_profile_routes(igw: tuple[Proc, Proc]) -> None:
    """The fan-out itself (options sent, success, one worker by URL) is in tests/unit/test_control_plane_shapes.py:
    the simulated workers have no profiler, so here every worker fails."""
    sim, gateway = igw
    httpx.post(gateway.url + "/workers", json={"url": sim.urls[0]})  # 202, or 409 when an earlier test added it
    r = httpx.post(gateway.url + "/start_profile", json={"url": "http://127.0.0.1:9"})
    assert r.status_code == 404 and r.json()["status"] == "error" and r.json()["workers_profiled"] == 0
    r = httpx.post(gateway.url + "/start_profile", content=b"{not json", headers={"content-type": "application/json"})
    assert bad_request(r, "not valid JSON")
    r = httpx.post(gateway.url + "/stop_profile", json={"url": sim.urls[0]})
    assert r.status_code == 502 and r.json()["status"] == "failed" and r.json()["workers_profiled"] == 0
    assert r.json()["failed"] == [{"worker": sim.urls[0], "error": "HTTP 404"}]
