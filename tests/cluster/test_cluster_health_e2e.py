"""Health ownership and cluster-wide load on three real gateways in one mesh."""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections.abc import Iterator

import httpx
import pytest

from smg.cluster.ownership import owners
from tests.helpers import Proc, start_mesh_gateway, start_sim, wait_until

CONVERGE = 10.0


def checks(node: Proc, worker_url: str) -> int:
    text = httpx.get(node.metrics_url + "/metrics").text
    pattern = rf'smg_worker_health_checks_total\{{result="\w+",worker="{re.escape(worker_url)}"\}} (\d+)'
    return sum(int(float(n)) for n in re.findall(pattern, text))


def worker(node: Proc, worker_url: str) -> dict:
    return next(w for w in httpx.get(node.url + "/workers").json()["workers"] if w["url"] == worker_url)


def healthy_on(node: Proc, worker_url: str) -> bool:
    """Listed and healthy there (a member that has not yet heard of the worker: not yet)."""
    return any(w["url"] == worker_url and w["is_healthy"] for w in httpx.get(node.url + "/workers").json()["workers"])


def name_of(node: Proc) -> str:
    return httpx.get(node.url + "/mesh/status").json()["node_name"]


def _cluster() -> Iterator[tuple[Proc, list[Proc]]]:
    """One simulated worker and three meshed gateways that all see it healthy."""
    sim = start_sim(1, "--tpot-ms", "20")
    flags = ("--health-check-interval-secs", "0.3", "--health-failure-threshold", "2", "--mesh-health-owners", "2")
    first = start_mesh_gateway([sim.urls[0]], *flags)
    nodes = [first] + [start_mesh_gateway([], *flags, seeds=[first.mesh_address]) for _ in range(2)]
    try:
        wait_until(lambda: all(healthy_on(n, sim.urls[0]) for n in nodes), "the worker ready everywhere", CONVERGE)
        yield sim, list(nodes)
    finally:
        for node in nodes:
            node.stop()
        sim.stop()


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[Proc, list[Proc]]]:
    """Shared by the tests that leave the cluster as they found it."""
    yield from _cluster()


@pytest.fixture
def fresh() -> Iterator[tuple[Proc, list[Proc]]]:
    """A cluster of its own, for a test that kills or stops a gateway (no test depends on another's order)."""
    yield from _cluster()


def test_only_the_owners_probe_a_worker(setup: tuple[Proc, list[Proc]]) -> None:
    sim, nodes = setup
    url = sim.urls[0]
    names = {name_of(n): n for n in nodes}
    worker_id = worker(nodes[0], url)["id"]
    owner_names = owners(worker_id, list(names), 2)
    record = httpx.get(nodes[1].url + "/mesh/workers").json()["workers"][0]
    assert record["health_owners"] == owner_names
    before = {name: checks(node, url) for name, node in names.items()}
    wait_until(lambda: all(checks(names[o], url) >= before[o] + 3 for o in owner_names), "owners probing", CONVERGE)
    (other,) = set(names) - set(owner_names)
    assert checks(names[other], url) == before[other]  # the third gateway never probes it


def test_the_owners_verdict_holds_everywhere_and_a_dead_owner_is_replaced(fresh: tuple[Proc, list[Proc]]) -> None:
    sim, nodes = fresh
    url = sim.urls[0]
    httpx.post(url + "/sim/config", json={"unhealthy": True})
    wait_until(lambda: not any(worker(n, url)["is_healthy"] for n in nodes), "the worker down on every node", CONVERGE)
    httpx.post(url + "/sim/config", json={"unhealthy": False})
    wait_until(lambda: all(worker(n, url)["is_healthy"] for n in nodes), "the worker back on every node", CONVERGE)

    names = {name_of(n): n for n in nodes}
    worker_id = worker(nodes[0], url)["id"]
    first_owner = owners(worker_id, list(names), 2)[0]
    survivors = {name: node for name, node in names.items() if name != first_owner}
    names[first_owner].popen.kill()
    names[first_owner].popen.wait()
    nodes.remove(names[first_owner])
    before = {name: checks(node, url) for name, node in survivors.items()}
    # once the dead owner is known dead, both survivors own the worker and probe it
    wait_until(lambda: all(checks(n, url) >= before[name] + 3 for name, n in survivors.items()), "takeover", CONVERGE)


def test_load_is_summed_over_the_cluster(setup: tuple[Proc, list[Proc]]) -> None:
    sim, nodes = setup
    url = sim.urls[0]
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "long"}], "max_tokens": 150, "stream": True}
    done = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", nodes[0].url + "/v1/chat/completions", json=body, timeout=30) as response:
            for _ in response.iter_bytes():
                if done.is_set():
                    break

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: worker(nodes[-1], url)["cluster_load"] == 3, "three streams seen from another node", CONVERGE)
        assert worker(nodes[-1], url)["load"] == 0  # none of them is its own
    finally:
        done.set()
        for t in threads:
            t.join(30)
    wait_until(lambda: worker(nodes[-1], url)["cluster_load"] == 0, "load back to zero", CONVERGE)


def test_sigterm_drains_and_leaves_gracefully(fresh: tuple[Proc, list[Proc]]) -> None:
    _sim, nodes = fresh
    leaving, staying = nodes[-1], nodes[0]
    name = name_of(leaving)
    leaving.signal(signal.SIGTERM)
    assert leaving.popen.wait(timeout=30) == 0
    members = {n["name"]: n["status"] for n in httpx.get(staying.url + "/mesh/status").json()["nodes"]}
    wait_until(
        lambda: {n["name"]: n["status"] for n in httpx.get(staying.url + "/mesh/status").json()["nodes"]}[name] == "left",
        "the node left, not dead",
        CONVERGE,
    )
    assert members[name] in ("alive", "left")


def test_an_owners_removal_of_a_failed_worker_is_a_cluster_wide_delete() -> None:
    sim = start_sim(2)
    flags = (
        "--health-check-interval-secs", "0.2", "--health-failure-threshold", "2", "--health-failed-threshold", "4",
        "--remove-unhealthy-workers",
    )  # fmt: skip
    first = start_mesh_gateway(sim.urls, *flags)
    nodes = [first] + [start_mesh_gateway([], *flags, seeds=[first.mesh_address]) for _ in range(2)]
    try:
        wait_until(lambda: all(healthy_on(n, sim.urls[1]) for n in nodes), "both workers ready", CONVERGE)
        httpx.post(sim.urls[1] + "/sim/config", json={"unhealthy": True})

        def gone_everywhere() -> bool:
            return all(sim.urls[1] not in {w["url"] for w in httpx.get(n.url + "/workers").json()["workers"]} for n in nodes)

        wait_until(gone_everywhere, "the failed worker deleted on every node", CONVERGE)
        assert all(worker(n, sim.urls[0])["is_healthy"] for n in nodes)  # the healthy one stays
        record_ids = {w["worker_id"] for w in httpx.get(nodes[2].url + "/mesh/workers").json()["workers"]}
        assert len(record_ids) == 1  # a tombstone, not a record, for the removed worker
    finally:
        for node in nodes:
            node.stop()
        sim.stop()


def test_a_killed_gateways_load_leaves_the_others_view_once_it_is_suspected(fresh: tuple[Proc, list[Proc]]) -> None:
    sim, nodes = fresh
    url = sim.urls[0]
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "long"}], "max_tokens": 4000, "stream": True}
    victim, survivor = nodes[0], nodes[-1]
    name = name_of(victim)

    def stream() -> None:
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.stream("POST", victim.url + "/v1/chat/completions", json=body, timeout=30) as response,
        ):
            for _ in response.iter_bytes():
                pass  # until the gateway dies under it

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: worker(survivor, url)["cluster_load"] == 3, "three streams seen from another node", CONVERGE)
    victim.popen.kill()
    victim.popen.wait()
    nodes.remove(victim)
    seen: list[str] = []

    def load_gone() -> bool:
        gone = worker(survivor, url)["cluster_load"] == 0
        # read after the load: the status seen is the one it had when its load was already gone
        status = {n["name"]: n["status"] for n in httpx.get(survivor.url + "/mesh/status").json()["nodes"]}
        seen.append(status[name])
        return gone

    wait_until(load_gone, "the dead gateway's load out of the survivor's view", CONVERGE, interval=0.05)
    # gone while it was only suspected: Lifeguard's suspicion lasts seconds on 3 members, polled every 50 ms
    assert seen[-1] == "suspect", seen
    for t in threads:
        t.join(30)
