"""Shared prefix summaries: a conversation keeps its worker whichever gateway its turns reach."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import Proc, routed_chat, start_mesh_cluster, start_mesh_gateway, start_sim, wait_until

CONVERGE = 10.0


def status(node: Proc) -> dict:
    return httpx.get(node.url + "/mesh/status").json()


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[Proc, list[Proc]]]:
    sim = start_sim(4)
    nodes = start_mesh_cluster(sim.urls, 3, deadline=CONVERGE)
    yield sim, nodes
    for node in nodes:
        node.stop()
    sim.stop()


def test_the_next_turn_on_another_gateway_goes_to_the_same_worker(setup: tuple[Proc, list[Proc]]) -> None:
    _sim, nodes = setup
    firsts, seconds = [], []
    for c in range(8):
        system = {"role": "system", "content": f"You are assistant number {c}. " + f"Background fact {c}. " * 60}
        turn1 = [system, {"role": "user", "content": f"question one of conversation {c}"}]
        firsts.append(routed_chat(nodes[0], turn1, max_tokens=8))
    wait_until(lambda: len({status(n)["stores"]["prefixes"]["digest"] for n in nodes}) == 1, "summaries merged", CONVERGE)
    for c in reversed(range(8)):  # another order: node 3's own tie-breaking would not repeat node 1's
        system = {"role": "system", "content": f"You are assistant number {c}. " + f"Background fact {c}. " * 60}
        turn2 = [
            system,
            {"role": "user", "content": f"question one of conversation {c}"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "and a follow-up"},
        ]
        seconds.insert(0, routed_chat(nodes[2], turn2, max_tokens=8))
    assert len(set(firsts)) > 1  # the conversations spread over the workers
    assert seconds == firsts  # and each followed its prefix to the other gateway


def test_a_joining_gateway_is_ready_only_with_the_summaries(setup: tuple[Proc, list[Proc]]) -> None:
    _sim, nodes = setup
    late = start_mesh_gateway([], seeds=[nodes[1].mesh_address])
    try:
        wait_until(lambda: httpx.get(late.url + "/readiness").status_code == 200, "the late node ready", CONVERGE)
        theirs = status(nodes[0])["stores"]["prefixes"]
        assert theirs["entries"] > 0 and status(late)["stores"]["prefixes"] == theirs
    finally:
        late.stop()


def test_grpc_workers_share_token_prefixes_across_gateways(tmp_path: Path) -> None:
    """With gRPC workers cache_aware routes on the engine's token ids; their chain hashes are the
    same on every gateway (same tokenizer, same template), so the summaries still carry a
    conversation to its worker through another gateway."""
    sim = start_sim(3, "--grpc", "--ttft-ms", "0", "--tpot-ms", "0")
    nodes = start_mesh_cluster(sim.urls, 2, "--tokenizer-cache-dir", str(tmp_path), deadline=CONVERGE)
    try:
        firsts, seconds = [], []
        for c in range(6):
            system = {"role": "system", "content": f"You are assistant number {c}. " + f"Background fact {c}. " * 60}
            firsts.append(routed_chat(nodes[0], [system, {"role": "user", "content": "question one"}], max_tokens=4))
        wait_until(lambda: len({status(n)["stores"]["prefixes"]["digest"] for n in nodes}) == 1, "summaries merged", CONVERGE)
        for c in reversed(range(6)):
            system = {"role": "system", "content": f"You are assistant number {c}. " + f"Background fact {c}. " * 60}
            turn2 = [system, {"role": "user", "content": "question one"}, {"role": "assistant", "content": "an answer"}]
            seconds.insert(0, routed_chat(nodes[1], [*turn2, {"role": "user", "content": "more"}], max_tokens=4))
        assert len(set(firsts)) > 1
        assert seconds == firsts
    finally:
        for node in nodes:
            node.stop()
        sim.stop()
