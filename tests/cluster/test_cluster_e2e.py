"""Three real gateway processes in one HA mesh on 127.0.0.1: the replicated worker registry."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.helpers import Proc, start_gateway, start_mesh_gateway, start_of_a_fresh_minute, wait_until

KEY = base64.b64encode(b"k" * 32).decode()
ADMIN = "admin-key"
LIMIT = 30  # requests per minute for tenant "team", across the cluster
NEW_KEY = base64.b64encode(b"n" * 32).decode()
CONVERGE = 10.0  # seconds: a bound for propagation on a loaded 2-core CI machine
api = httpx.Client(headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)


def status(node: Proc) -> dict:
    return api.get(node.url + "/mesh/status").json()


def worker_ids(node: Proc) -> set[str]:
    return {w["id"] for w in api.get(node.url + "/workers").json()["workers"]}


def states(node: Proc) -> dict[str, str]:
    return {n["name"]: n["status"] for n in status(node)["nodes"]}


@pytest.fixture(scope="module")
def cluster(workers: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Proc]]:
    limits = tmp_path_factory.mktemp("limits") / "limits.json"
    limits.write_text(json.dumps({"tenants": {"team": {"requests_per_minute": LIMIT}}}))
    flags = (
        "--mesh-key", KEY, "--health-check-interval-secs", "1", "--mesh-fault-injection",
        "--api-key", ADMIN, "--tenant-api-key", "team:team-key", "--tenant-rate-limit-config", str(limits),
    )  # fmt: skip
    first = start_mesh_gateway([workers.urls[0]], *flags, seeds=["127.0.0.1:1"])  # a dead seed first: still starts
    second = start_mesh_gateway([], *flags, "--enable-igw", seeds=["127.0.0.1:1", first.mesh_address])
    third = start_mesh_gateway([workers.urls[0]], *flags, seeds=[second.mesh_address])
    nodes = [first, second, third]
    wait_until(lambda: all(status(n)["node_count"] == 3 for n in nodes), "three members everywhere", CONVERGE)
    yield nodes
    for node in nodes:
        node.stop()


def test_members_and_the_same_worker_urls_on_two_nodes_merge(cluster: list[Proc], workers: Proc) -> None:
    for node in cluster:
        body = status(node)
        assert {n["status"] for n in body["nodes"]} == {"alive"}
        assert {n["http_address"] for n in body["nodes"]} == {n.url for n in cluster}
    wait_until(lambda: all(len(worker_ids(n)) == 1 for n in cluster), "one worker record everywhere", CONVERGE)
    wait_until(lambda: len({status(n)["stores"]["workers"]["digest"] for n in cluster}) == 1, "equal digests", CONVERGE)
    health = api.get(cluster[1].url + "/mesh/health").json()
    assert health["status"] == "healthy" and health["cluster_size"] == 3 and health["stores_healthy"]
    table = subprocess.run(
        [sys.executable, "-m", "smg", "mesh", "status", "--url", cluster[0].url, "--api-key", ADMIN],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert table.returncode == 0, table.stderr
    assert table.stdout.count(" alive ") == 3 and "3 live of 3 known members" in table.stdout


def test_a_worker_added_on_one_node_is_routable_from_the_others(cluster: list[Proc], workers: Proc) -> None:
    added = api.post(cluster[0].url + "/workers", json={"url": workers.urls[1], "labels": {"pool": "b"}})
    assert added.status_code == 202
    worker_id = added.json()["worker_id"]
    wait_until(lambda: all(worker_id in worker_ids(n) for n in cluster), "the worker on every node", CONVERGE)
    record = next(w for w in api.get(cluster[2].url + "/mesh/workers").json()["workers"] if w["worker_id"] == worker_id)
    assert record["labels"] == {"pool": "b"} and record["written_by"].startswith(status(cluster[0])["node_name"] + "#")
    wait_until(
        lambda: api.get(f"{cluster[2].url}/workers/{worker_id}").json()["is_healthy"], "the worker ready on node 3", CONVERGE
    )
    client = openai.OpenAI(base_url=cluster[2].url + "/v1", api_key=ADMIN, max_retries=0)
    seen = set()
    for i in range(12):
        raw = client.chat.completions.with_raw_response.create(
            model="sim-model", messages=[{"role": "user", "content": f"spread me {i} " * 20}]
        )
        seen.add(raw.headers["x-smg-routed-worker-id"])
    assert workers.urls[1] in seen

    removed = api.delete(f"{cluster[1].url}/workers/{worker_id}")
    assert removed.status_code == 202
    wait_until(lambda: all(worker_id not in worker_ids(n) for n in cluster), "the worker gone everywhere", CONVERGE)
    wait_until(lambda: len({status(n)["stores"]["workers"]["digest"] for n in cluster}) == 1, "equal digests", CONVERGE)


def test_a_tenant_limit_holds_across_the_cluster_with_uneven_spread(cluster: list[Proc]) -> None:
    pattern = [0, 0, 0, 1, 2, 2]  # node 1 takes half, node 2 a sixth, node 3 a third
    chat = {"model": "sim-model", "messages": [{"role": "user", "content": "limit me"}], "max_tokens": 2}
    team = {"authorization": "Bearer team-key"}
    admitted = refused = 0
    start_of_a_fresh_minute()  # a boundary mid-test would age the counts being checked
    for i in range(LIMIT + 15):
        response = httpx.post(cluster[pattern[i % len(pattern)]].url + "/v1/chat/completions", json=chat, headers=team)
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "rate_limit_exceeded" and "retry-after" in response.headers
            refused += 1
        else:
            assert response.status_code == 200, response.text
            admitted += 1
    # the contract: over-admission at most nodes x rate x replication delay; sequential requests: a few at most
    assert LIMIT <= admitted <= LIMIT + 3, (admitted, refused)
    report = api.get(cluster[1].url + "/mesh/rate-limits").json()
    entry = report["tenants"]["team"]["requests_per_minute"]
    assert entry["limit"] == LIMIT and report["share"] == 1.0
    wait_until(
        lambda: (
            api.get(cluster[1].url + "/mesh/rate-limits").json()["tenants"]["team"]["requests_per_minute"]["used"] >= admitted
        ),
        "every node's count merged",
        CONVERGE,
    )


def test_cluster_wide_key_rotation_answers_each_member(cluster: list[Proc]) -> None:
    bad = api.post(cluster[0].url + "/mesh/keys", json={"op": "rotate", "key": NEW_KEY})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "op"
    short = api.post(cluster[0].url + "/mesh/keys", json={"op": "install", "key": base64.b64encode(b"x").decode()})
    assert short.status_code == 400
    for op in ("install", "use"):
        response = api.post(cluster[0].url + "/mesh/keys", json={"op": op, "key": NEW_KEY}, timeout=10)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["members"] == 3 and body["succeeded"] == 3
    refused = api.post(cluster[1].url + "/mesh/keys", json={"op": "remove", "key": NEW_KEY}, timeout=10)
    assert refused.status_code == 502 and refused.json()["error"]["code"] == "key_operation_failed"
    assert api.post(cluster[2].url + "/mesh/keys", json={"op": "remove", "key": KEY}, timeout=10).status_code == 200
    # still one cluster, on the new key alone
    added = api.post(cluster[2].url + "/workers", json={"url": "http://127.0.0.1:9"})
    wait_until(lambda: all(added.json()["worker_id"] in worker_ids(n) for n in cluster), "replication on the new key", CONVERGE)
    api.delete(f"{cluster[2].url}/workers/{added.json()['worker_id']}")


def test_a_partitioned_minority_keeps_its_share_and_the_cluster_heals(cluster: list[Proc]) -> None:
    names = [status(n)["node_name"] for n in cluster]
    minority, majority = cluster[2], cluster[:2]
    assert api.post(
        minority.url + "/mesh/faults", json={"drop_to": [cluster[0].mesh_address, cluster[1].mesh_address]}
    ).is_success
    for node in majority:
        assert api.post(node.url + "/mesh/faults", json={"drop_to": [minority.mesh_address]}).is_success
    wait_until(lambda: all(states(n)[names[2]] == "dead" for n in majority), "the minority dead on the majority side", 20)
    wait_until(lambda: states(minority)[names[0]] == "dead" == states(minority)[names[1]], "the majority dead for it", 20)
    # each side keeps to its share of a cluster-wide limit: 2/3 and 1/3
    assert api.get(cluster[0].url + "/mesh/rate-limits").json()["share"] == pytest.approx(2 / 3)
    assert api.get(minority.url + "/mesh/rate-limits").json()["share"] == pytest.approx(1 / 3)
    added = api.post(cluster[0].url + "/workers", json={"url": "http://127.0.0.1:11"}).json()["worker_id"]
    for node in cluster:
        assert api.post(node.url + "/mesh/faults", json={}).is_success
    wait_until(lambda: all(set(states(n).values()) == {"alive"} for n in cluster), "healed: all alive", 25)
    wait_until(lambda: added in worker_ids(minority), "the change made during the partition reached the minority", CONVERGE)
    try:
        wait_until(lambda: len({json.dumps(status(n)["stores"]) for n in cluster}) == 1, "identical stores", CONVERGE)
    except TimeoutError:
        raise AssertionError([status(n)["stores"] for n in cluster]) from None
    api.delete(f"{cluster[0].url}/workers/{added}")
    metrics = httpx.get(cluster[0].metrics_url + "/metrics").text
    assert 'smg_mesh_members{state="alive"} 3.0' in metrics and "smg_mesh_replication_lag_seconds_count" in metrics


def test_a_mesh_port_in_use_ends_start_up_with_one_line(workers: Proc) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        args = ["--host", "127.0.0.1", "--port", "0", "--prometheus-port", "0", "--worker-urls", workers.urls[0]]
        args += ["--ha-mesh", "--mesh-host", "127.0.0.1", "--mesh-port", str(port), "--history-backend", "none"]
        result = subprocess.run([sys.executable, "-m", "smg", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("smg: error:")]
    assert errors == [f"smg: error: --mesh-port {port}: address already in use"] and "Traceback" not in result.stderr


def probe_rtt(node: Proc) -> tuple[float, float]:
    metrics = httpx.get(node.metrics_url + "/metrics").text  # type: ignore[operator]
    total = re.search(r"^smg_mesh_probe_rtt_seconds_sum (\S+)", metrics, re.MULTILINE)
    count = re.search(r"^smg_mesh_probe_rtt_seconds_count (\S+)", metrics, re.MULTILINE)
    assert total and count, "no probe RTT histogram"
    return float(total.group(1)), float(count.group(1))


def test_an_added_delay_slows_every_probe_and_kills_nobody(cluster: list[Proc]) -> None:
    assert api.post(cluster[0].url + "/mesh/faults", json={"delay_ms": "slow"}).status_code == 400
    try:
        for node in cluster:
            assert api.post(node.url + "/mesh/faults", json={"delay_ms": 100}).json()["delay_ms"] == 100
        started = probe_rtt(cluster[0])[1]
        wait_until(lambda: probe_rtt(cluster[0])[1] > started + 1, "probes sent under the delay", CONVERGE)
        before = probe_rtt(cluster[0])
        wait_until(lambda: probe_rtt(cluster[0])[1] >= before[1] + 6, "six more probes", CONVERGE)
        after = probe_rtt(cluster[0])
        assert (after[0] - before[0]) / (after[1] - before[1]) >= 0.19  # each probe's round trip: two 100 ms legs
        assert all(set(states(n).values()) == {"alive"} for n in cluster)
    finally:
        for node in cluster:
            api.post(node.url + "/mesh/faults", json={})


def test_fault_injection_needs_its_flag(workers: Proc) -> None:
    gateway = start_mesh_gateway([workers.urls[0]])
    try:
        response = httpx.post(gateway.url + "/mesh/faults", json={"loss": 0.5})
        assert response.status_code == 403 and response.json()["error"]["code"] == "fault_injection_disabled"
    finally:
        gateway.stop()


def test_a_killed_node_is_marked_dead_and_rejoins_as_itself(cluster: list[Proc], workers: Proc) -> None:
    third = cluster[2]
    name, port = status(third)["node_name"], third.mesh_address.rpartition(":")[2]
    third.popen.kill()
    third.popen.wait()
    wait_until(lambda: all(states(n)[name] == "dead" for n in cluster[:2]), "the killed node dead", CONVERGE)
    # meanwhile a worker is added: the restarted node catches up
    added = api.post(cluster[0].url + "/workers", json={"url": "http://127.0.0.1:7"}).json()["worker_id"]
    reborn = start_mesh_gateway([], "--mesh-key", NEW_KEY, seeds=[cluster[0].mesh_address], mesh_port=int(port))
    cluster[2] = reborn
    wait_until(lambda: all(states(n)[name] == "alive" for n in cluster), "the node alive again", CONVERGE)
    nodes = {n["name"]: n for n in status(cluster[0])["nodes"]}
    assert nodes[name]["incarnation"] >= 1 and len(nodes) == 3
    wait_until(lambda: added in worker_ids(reborn), "the restarted node caught up", CONVERGE)


def test_without_ha_mesh_the_mesh_routes_say_so(workers: Proc) -> None:
    gateway = start_gateway([workers.urls[0]])
    try:
        response = api.get(gateway.url + "/mesh/status")
        assert response.status_code == 404 and response.json()["error"]["code"] == "mesh_not_enabled"
    finally:
        gateway.stop()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seeds", "nohost"], "--seeds: 'nohost' is not HOST:PORT"),
        (["--mesh-key", "not-base64!"], "--mesh-key: mesh keys are base64"),
        (["--mesh-server-name", "a#b"], "--mesh-server-name"),
    ],
)
def test_bad_mesh_flags_are_one_line_errors(flags: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "smg", "--ha-mesh", "--mesh-host", "127.0.0.1", *flags], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1
