"""Sticky pins across the cluster: a key pinned through one gateway answers from the same worker
through another (the pins are a replicated store), and a third gateway joining later has them."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import Proc, start_mesh_gateway, start_sim, wait_until

CONVERGE = 10.0
KEYS = [f"session-{i}" for i in range(8)]


def chat(node: Proc, key: str | None) -> str:
    headers = {"x-smg-routing-key": key} if key else {}
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    response = httpx.post(node.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.headers["x-smg-routed-worker-id"]


def pins(node: Proc) -> dict:
    return httpx.get(node.url + "/mesh/status").json()["stores"].get("pins", {})


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[Proc, list[Proc]]]:
    sim = start_sim(4)
    flags = ("--policy", "round_robin", "--sticky-sessions")
    first = start_mesh_gateway(sim.urls, *flags)
    nodes = [first, start_mesh_gateway([], *flags, seeds=[first.mesh_address])]
    wait_until(
        lambda: all(len(httpx.get(n.url + "/workers").json()["workers"]) == 4 for n in nodes), "4 workers everywhere", CONVERGE
    )
    wait_until(lambda: all(httpx.get(n.url + "/readiness").status_code == 200 for n in nodes), "all ready", CONVERGE)
    yield sim, nodes
    for node in nodes:
        node.stop()
    sim.stop()


def test_a_key_pinned_on_one_gateway_holds_on_every_gateway(setup: tuple[Proc, list[Proc]]) -> None:
    _sim, nodes = setup
    homes = {key: chat(nodes[0], key) for key in KEYS}
    assert len(set(homes.values())) == 4  # round robin spread the new keys
    wait_until(lambda: pins(nodes[1]).get("entries") == len(KEYS), "the pins replicated", CONVERGE)
    chat(nodes[1], None)  # shift the second gateway's round robin: it cannot repeat the first's by chance
    assert {key: chat(nodes[1], key) for key in reversed(KEYS)} == homes
    late = start_mesh_gateway([], "--policy", "round_robin", "--sticky-sessions", seeds=[nodes[1].mesh_address])
    try:
        wait_until(lambda: httpx.get(late.url + "/readiness").status_code == 200, "the late gateway ready", CONVERGE)
        wait_until(lambda: len(httpx.get(late.url + "/workers").json()["workers"]) == 4, "its workers", CONVERGE)
        assert pins(late) == pins(nodes[0])
        assert {key: chat(late, key) for key in KEYS} == homes
    finally:
        late.stop()
