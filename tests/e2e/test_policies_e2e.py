"""Policies through a real gateway: consistent hashing, targets, sticky keys."""

from __future__ import annotations

import httpx

from tests.helpers import start_gateway, start_sim

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def routed(url: str, headers: dict[str, str]) -> str:
    r = httpx.post(url + "/v1/chat/completions", json=CHAT, headers=headers)
    assert r.status_code == 200, r.text
    return r.headers["x-smg-routed-worker-id"]


def test_consistent_hashing_and_targets() -> None:
    sim = start_sim(3, "--ttft-ms", "0", "--tpot-ms", "0")
    gateway = start_gateway(sim.urls, "--policy", "consistent_hashing")
    try:
        for key in ("alice", "bob", "carol", "dave"):
            seen = {routed(gateway.url, {"x-smg-routing-key": key}) for _ in range(5)}
            assert len(seen) == 1
        spread = {routed(gateway.url, {"x-smg-routing-key": f"user-{i}"}) for i in range(30)}
        assert len(spread) == 3
        assert routed(gateway.url, {"x-smg-target-worker": "1"}) == sim.urls[1]
        r = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers={"x-smg-target-worker": "3"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_available_workers"
        r = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers={"x-smg-target-worker": "first"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_routing_header"
    finally:
        gateway.stop()
        sim.stop()


def test_manual_policy_is_sticky() -> None:
    sim = start_sim(2, "--ttft-ms", "0", "--tpot-ms", "0")
    gateway = start_gateway(sim.urls, "--policy", "manual")
    try:
        for key in ("k1", "k2", "k3"):
            assert len({routed(gateway.url, {"x-smg-routing-key": key}) for _ in range(4)}) == 1
    finally:
        gateway.stop()
        sim.stop()


def test_cache_aware_keeps_a_shared_prefix_on_one_worker_and_spreads_the_rest() -> None:
    sim = start_sim(3, "--ttft-ms", "0", "--tpot-ms", "0")
    gateway = start_gateway(sim.urls)  # cache_aware is the default
    try:
        system = {"role": "system", "content": "You are a careful assistant who answers briefly. " * 30}
        homes, cached = set(), []
        for i in range(6):
            body = {"model": "sim-model", "max_tokens": 1, "messages": [system, {"role": "user", "content": f"question {i}"}]}
            r = httpx.post(gateway.url + "/v1/chat/completions", json=body)
            homes.add(r.headers["x-smg-routed-worker-id"])
            cached.append(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])
        assert len(homes) == 1 and cached[0] == 0 and min(cached[1:]) > 200
        spread = set()
        for i in range(6):
            body = {"model": "sim-model", "max_tokens": 1, "messages": [{"role": "user", "content": f"topic {i} " * 80}]}
            spread.add(httpx.post(gateway.url + "/v1/chat/completions", json=body).headers["x-smg-routed-worker-id"])
        assert len(spread) >= 2
        metrics = httpx.get(gateway.metrics_url + "/metrics").text
        assert "smg_router_cache_match_ratio_count" in metrics
    finally:
        gateway.stop()
        sim.stop()
