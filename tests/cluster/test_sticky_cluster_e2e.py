"""Sticky pins across the cluster: a key pinned through one gateway answers from the same worker
through another (the pins are a replicated store), and a third gateway joining later has them."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import Proc, routed_chat, start_mesh_cluster, start_mesh_gateway, start_sim, wait_until

CONVERGE = 10.0
KEYS = [f"session-{i}" for i in range(8)]
FLAGS = ("--policy", "round_robin", "--sticky-sessions")


def pins(node: Proc) -> dict:
    return httpx.get(node.url + "/mesh/status").json()["stores"].get("pins", {})


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[Proc, list[Proc]]]:
    sim = start_sim(4)
    nodes = start_mesh_cluster(sim.urls, 2, *FLAGS, deadline=CONVERGE)
    yield sim, nodes
    for node in nodes:
        node.stop()
    sim.stop()


def test_a_key_pinned_on_one_gateway_holds_on_every_gateway(setup: tuple[Proc, list[Proc]]) -> None:
    _sim, nodes = setup
    homes = {key: routed_chat(nodes[0], key=key) for key in KEYS}
    assert len(set(homes.values())) == 4  # round robin spread the new keys
    wait_until(lambda: pins(nodes[1]).get("entries") == len(KEYS), "the pins replicated", CONVERGE)
    routed_chat(nodes[1], key=None)  # shift the second gateway's round robin: it cannot repeat the first's by chance
    assert {key: routed_chat(nodes[1], key=key) for key in reversed(KEYS)} == homes
    late = start_mesh_gateway([], *FLAGS, seeds=[nodes[1].mesh_address])
    try:
        wait_until(lambda: httpx.get(late.url + "/readiness").status_code == 200, "the late gateway ready", CONVERGE)
        wait_until(lambda: len(httpx.get(late.url + "/workers").json()["workers"]) == 4, "its workers", CONVERGE)
        assert pins(late) == pins(nodes[0])
        assert {key: routed_chat(late, key=key) for key in KEYS} == homes
    finally:
        late.stop()
