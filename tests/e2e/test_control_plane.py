"""`/workers` CRUD, `/get_loads` and `/flush_cache` against real simulated workers."""

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


def test_duplicate_unknown_and_bad_requests(igw: tuple[Proc, Proc]) -> None:
    sim, gateway = igw
    r = httpx.post(gateway.url + "/workers", json={"url": sim.urls[0].replace("127.0.0.1", "127.0.0.1") + "/"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "WORKER_ALREADY_EXISTS"
    assert httpx.get(gateway.url + "/workers/ffffffffffffffff").status_code == 404
    assert httpx.delete(gateway.url + "/workers/ffffffffffffffff").status_code == 404
    assert httpx.post(gateway.url + "/workers", json={"url": "ftp://x"}).status_code == 400
    assert httpx.post(gateway.url + "/workers", json={}).json()["error"]["code"] == "missing_required_parameter"
    worker_id = httpx.get(gateway.url + "/workers").json()["workers"][0]["id"]
    r = httpx.put(f"{gateway.url}/workers/{worker_id}", json={"url": sim.urls[1]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "WORKER_URL_MISMATCH"
    r = httpx.patch(f"{gateway.url}/workers/{worker_id}", json={"priority": "high"})
    assert r.status_code == 400


def test_patch_put_and_delete(igw: tuple[Proc, Proc]) -> None:
    sim, gateway = igw
    r = httpx.post(gateway.url + "/workers", json={"url": sim.urls[1]})
    worker_id = r.json()["worker_id"]
    wait_until(lambda: worker_status(gateway, worker_id) == "ready", "second worker ready")
    r = httpx.patch(f"{gateway.url}/workers/{worker_id}", json={"priority": 7, "labels": {"tier": "x"}})
    assert r.status_code == 200 and r.json()["priority"] == 7 and r.json()["labels"] == {"tier": "x"}
    r = httpx.put(f"{gateway.url}/workers/{worker_id}", json={"url": sim.urls[1], "cost": 2.5})
    assert r.status_code == 202
    wait_until(lambda: worker_status(gateway, worker_id) == "ready", "re-probed worker ready")
    after = httpx.get(f"{gateway.url}/workers/{worker_id}").json()
    assert after["cost"] == 2.5 and after["priority"] == 50 and after["labels"] == {}
    assert httpx.delete(f"{gateway.url}/workers/{worker_id}").status_code == 202
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
    assert httpx.get(sim.urls[0] + "/sim/stats").json()["cache_blocks"] == blocks_before + 4  # 64 prompt tokens
    r = httpx.post(gateway.url + "/flush_cache")
    assert r.status_code == 200 and r.json()["status"] == "success" and r.json()["workers_flushed"] == 1
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
