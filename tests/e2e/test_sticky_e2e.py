"""--sticky-sessions through a real gateway and simulated workers: a routing key, and a Responses
conversation (its `previous_response_id` chain), each stay on one worker under round robin."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.helpers import Proc, routed_chat, start_gateway, start_sim


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Proc]]:
    sim = start_sim(3)
    db = tmp_path_factory.mktemp("sticky") / "history.db"
    gateway = start_gateway(sim.urls, "--policy", "round_robin", "--sticky-sessions", "--history-db-path", str(db))
    yield sim, gateway
    gateway.stop()
    sim.stop()


def received(sim: Proc) -> dict[str, int]:
    return {url: len(httpx.get(url + "/sim/requests").json()["requests"]) for url in sim.urls}


def test_a_routing_key_stays_on_its_worker_and_keyless_requests_round_robin(setup: tuple[Proc, Proc]) -> None:
    _sim, gateway = setup
    homes = {key: routed_chat(gateway, key=key) for key in ("alpha", "beta", "gamma")}
    assert len(set(homes.values())) == 3  # new keys delegated to round robin: spread
    for _ in range(3):
        assert {key: routed_chat(gateway, key=key) for key in homes} == homes
    assert len({routed_chat(gateway, key=None) for _ in range(3)}) == 3


def test_a_response_chain_stays_on_the_worker_of_its_first_response(setup: tuple[Proc, Proc]) -> None:
    sim, gateway = setup
    api = openai.OpenAI(base_url=gateway.url + "/v1", api_key="none", max_retries=0)
    before = received(sim)
    previous = api.responses.create(model="sim-model", input="turn 0")
    for turn in range(1, 5):
        previous = api.responses.create(model="sim-model", input=f"turn {turn}", previous_response_id=previous.id)
    after = received(sim)
    grew = {url: after[url] - before[url] for url in sim.urls if after[url] != before[url]}
    assert list(grew.values()) == [5]  # one worker served all five turns
