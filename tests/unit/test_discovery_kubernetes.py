"""Kubernetes discovery: which pods are workers and what they become (the sans-IO core, fed LIST
answers and WATCH events, malformed ones included), how the shell reaches the API server (in-cluster
configuration, token rotation, TLS), the shell against a scripted API server on trio's mock clock,
`--model-id-from` through the data plane, and the flags' cross-checks."""

from __future__ import annotations

import json
import logging
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import certifi
import httpx
import pytest
import trio
import trio.testing

from smg.config import GatewayConfig
from smg.context import GatewayContext
from smg.discovery.apply import Callbacks, Discovered
from smg.discovery.kubernetes import (
    ApiAccess,
    KubernetesApi,
    KubernetesDiscovery,
    Token,
    api_access,
    tls_context,
)
from smg.discovery.manifest import WorkerSpec
from smg.discovery.pods import (
    ApiError,
    PodError,
    PodSet,
    Step,
    WatchLines,
    WorkerRules,
    matches,
    model_id_of,
    parse_list,
    parse_selector,
    router_of,
    selector_query,
    worker_of,
)
from smg.gateway import discovered_by, kubernetes_discovery
from smg.mesh.seeds import DiscoveredSeeds, resolve_seeds
from smg.settings import ConfigError
from tests.fakes import FakeUpstream, add_ready_worker, call, gateway
from tests.unit.test_model_alias import echo_model

RULES = WorkerRules({"app": "llm"}, 8000)


def pod(
    name: str,
    ip: str | None = "10.0.0.1",
    *,
    labels: dict[str, str] | None = None,
    ready: bool = True,
    phase: str = "Running",
    namespace: str = "inference",
    deleting: bool = False,
    annotations: dict[str, str] | None = None,
    version: str = "1",
) -> dict[str, Any]:
    """A Kubernetes v1 Pod, as the API server sends it (the fields discovery reads)."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {"app": "llm"} if labels is None else labels,
        "resourceVersion": version,
    }
    if annotations is not None:
        meta["annotations"] = annotations
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True" if ready else "False"},
        ],
    }
    if ip is not None:
        status["podIP"] = ip
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": {}, "status": status}


def event(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode()


def workers() -> PodSet[WorkerSpec]:
    return PodSet(lambda p, notes: worker_of(p, RULES, notes), identity=lambda spec: spec.url)


def urls(pods: PodSet[WorkerSpec]) -> list[str]:
    return [spec.url for spec in pods.wanted()]


# -- selectors --------------------------------------------------------------------------------


def test_a_selector_is_key_value_terms_that_must_all_hold() -> None:
    selector = parse_selector(["app=llm", "example.com/tier=gpu", "empty="])
    assert selector == {"app": "llm", "example.com/tier": "gpu", "empty": ""}
    assert selector_query(selector) == "app=llm,empty=,example.com/tier=gpu"
    assert matches({"app": "llm", "example.com/tier": "gpu", "empty": "", "more": "x"}, selector)
    assert not matches({"app": "llm", "example.com/tier": "cpu", "empty": ""}, selector)
    assert matches({"anything": "x"}, {})  # no selector: every pod


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        (["app"], "'app' is not key=value"),
        (["=x"], "'=x' is not key=value"),
        (["app=a,b"], "is not key=value"),  # would smuggle a second term into labelSelector
        (["app=llm", "app=other"], "'app' is given two values"),
        (["a b=c"], "is not key=value"),
    ],
)
def test_a_bad_selector_is_refused_with_the_term(terms: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_selector(terms)


# -- one pod ----------------------------------------------------------------------------------


def test_a_running_ready_matching_pod_is_a_worker_at_its_ip_and_port() -> None:
    notes: list[str] = []
    spec = worker_of(pod("llm-0", labels={"app": "llm", "zone": "a"}), RULES, notes)
    assert spec == WorkerSpec("http://10.0.0.1:8000", {"labels": {"app": "llm", "zone": "a"}})
    assert spec.origin == "pod inference/llm-0" and notes == []
    v6 = worker_of(pod("llm-1", "fd00::0001"), RULES, notes)
    assert v6 is not None and v6.url == "http://[fd00::1]:8000"


@pytest.mark.parametrize(
    "unusable",
    [
        pod("p", None),  # no IP yet
        pod("p", ""),
        pod("p", phase="Pending"),
        pod("p", phase="Succeeded"),
        pod("p", ready=False),  # its readiness probe fails
        pod("p", deleting=True),  # terminating: it is draining
        pod("p", labels={"app": "other"}),  # out of the selector
        pod("p", labels={}),
        {"metadata": {"name": "p", "namespace": "n"}, "status": {"phase": "Running", "podIP": "10.0.0.1"}},  # no conditions
    ],
)
def test_a_pod_that_is_not_serving_is_not_a_worker(unusable: dict[str, Any]) -> None:
    assert worker_of(unusable, RULES, []) is None


@pytest.mark.parametrize(
    ("malformed", "message"),
    [
        ([], "not an object"),
        ({"metadata": {}}, "no metadata.name"),
        ({"metadata": {"name": 3}}, "no metadata.name"),
        ({"metadata": "x"}, "metadata is not an object"),
        ({"metadata": {"name": "p", "labels": ["app"]}}, "metadata.labels is not an object"),
        ({"metadata": {"name": "p", "labels": {"app": 1}}}, "must map strings to strings"),
        (pod("p", "10.0.0.300"), "is not an IP address"),
        (pod("p", "http://evil/"), "is not an IP address"),
        ({**pod("p"), "status": {"phase": "Running", "podIP": "10.0.0.1", "conditions": "Ready"}}, "not a list"),
        ({**pod("p"), "status": "Running"}, "status is not an object"),
    ],
)
def test_a_malformed_pod_raises_pod_error_saying_what(malformed: Any, message: str) -> None:
    with pytest.raises(PodError, match=message):
        worker_of(malformed, RULES, [])


def test_model_id_from_reads_the_namespace_a_label_or_an_annotation() -> None:
    p = pod("p", labels={"app": "llm", "model": "llama-8b"}, annotations={"smg.ai/model": " team/llama "})
    assert model_id_of(p, "namespace") == "inference"
    assert model_id_of(p, "label:model") == "llama-8b"
    assert model_id_of(p, "annotation:smg.ai/model") == "team/llama"
    assert model_id_of(p, "label:absent") is None
    with pytest.raises(PodError, match="longer than 256"):
        model_id_of(pod("p", annotations={"m": "x" * 300}), "annotation:m")

    notes: list[str] = []
    rules = replace(RULES, model_id_from="label:model")
    spec = worker_of(p, rules, notes)
    assert spec is not None and spec.model_id == "llama-8b"
    spec = worker_of(pod("q"), rules, notes)  # no such label: it serves what it reports, and that is said
    assert spec is not None and spec.model_id is None
    assert notes == ["pod inference/q has no label:model (--model-id-from): its worker serves the models it reports"]


def test_a_gateway_pod_is_a_seed_once_running_with_an_ip_ready_or_not() -> None:
    selector = {"app": "smg"}
    assert router_of(pod("g", "10.0.0.9", labels={"app": "smg"}, ready=False), selector, []) == "10.0.0.9"
    assert router_of(pod("g", None, labels={"app": "smg"}), selector, []) is None
    assert router_of(pod("g", labels={"app": "smg"}, deleting=True), selector, []) is None
    assert router_of(pod("g", labels={"app": "llm"}), selector, []) is None


# -- the set, from LIST and WATCH -------------------------------------------------------------


def test_a_list_then_watch_events_keep_the_wanted_workers() -> None:
    pods = workers()
    pods.listed([pod("a", "10.0.0.1"), pod("b", "10.0.0.2", ready=False)], "100")
    assert urls(pods) == ["http://10.0.0.1:8000"] and pods.resource_version == "100"

    assert pods.event(event("MODIFIED", pod("b", "10.0.0.2", version="101"))) is Step.CONTINUE  # b is ready now
    assert urls(pods) == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"] and pods.resource_version == "101"
    pods.event(event("ADDED", pod("c", "10.0.0.3", ready=False, version="102")))  # not ready yet: not a worker
    assert len(urls(pods)) == 2
    pods.event(event("MODIFIED", pod("a", "10.0.0.1", ready=False, version="103")))  # a's readiness fails
    assert urls(pods) == ["http://10.0.0.2:8000"]
    pods.event(event("MODIFIED", pod("b", "10.0.0.2", labels={"app": "other"}, version="104")))  # relabelled out
    assert urls(pods) == []
    pods.event(event("MODIFIED", pod("c", "10.0.0.3", version="105")))
    pods.event(event("MODIFIED", pod("c", "10.0.0.3", deleting=True, version="106")))  # terminating
    assert urls(pods) == []
    pods.event(event("ADDED", pod("d", "10.0.0.4", version="107")))
    pods.event(event("DELETED", pod("d", "10.0.0.4", version="108")))
    assert urls(pods) == [] and pods.resource_version == "108"
    assert pods.event(event("BOOKMARK", {"kind": "Pod", "metadata": {"resourceVersion": "200"}})) is Step.CONTINUE
    assert pods.resource_version == "200" and pods.take_problems() == []


def test_a_new_list_replaces_what_the_events_said() -> None:
    pods = workers()
    pods.listed([pod("a", "10.0.0.1")], "1")
    pods.event(event("ADDED", pod("b", "10.0.0.2", version="2")))
    pods.listed([pod("b", "10.0.0.2"), pod("c", "10.0.0.3")], "50")  # a's deletion was missed: the list knows
    assert urls(pods) == ["http://10.0.0.2:8000", "http://10.0.0.3:8000"] and pods.resource_version == "50"


def test_gone_means_list_again_and_other_errors_watch_again() -> None:
    pods = workers()
    pods.listed([pod("a")], "7")
    gone = {
        "kind": "Status",
        "status": "Failure",
        "message": "too old resource version: 7 (80)",
        "reason": "Expired",
        "code": 410,
    }
    assert pods.event(event("ERROR", gone)) is Step.RELIST
    assert pods.resource_version is None and len(pods) == 1  # the workers stay until the new list says otherwise
    pods.listed([pod("a")], "90")
    assert pods.event(event("ERROR", {"kind": "Status", "code": 500, "message": "etcd timeout"})) is Step.REWATCH
    assert pods.resource_version == "90"
    assert pods.take_problems() == ["the watch ended with an error (500: etcd timeout); watching again"]
    pods.expired()  # a 410 answer to the watch request itself
    assert pods.resource_version is None


def test_malformed_events_and_pods_are_skipped_and_reported_and_the_rest_counts() -> None:
    pods = workers()
    pods.listed([pod("a", "10.0.0.1"), {"metadata": {"name": "bad", "labels": "x"}}, 42], "1")
    assert urls(pods) == ["http://10.0.0.1:8000"]
    assert pods.take_problems() == [
        "pod /bad skipped: metadata.labels is not an object",
        "pod list item 2 skipped: not an object",
    ]
    for line in (
        b"{not json",
        b"[1, 2]",
        json.dumps({"type": "ADDED"}).encode(),
        json.dumps({"type": "ADDED", "object": "pod"}).encode(),
        event("RESIZED", pod("b")),
        event("ADDED", {"kind": "Service", "metadata": {"name": "s", "resourceVersion": "5"}}),
        event("ADDED", {"metadata": {"resourceVersion": "6"}}),
        event("MODIFIED", pod("b", "nope", version="7")),
        json.dumps({"type": "ERROR", "object": {"code": "weird"}}).encode(),
    ):
        assert pods.event(line) in (Step.CONTINUE, Step.REWATCH), line
    assert urls(pods) == ["http://10.0.0.1:8000"] and pods.resource_version == "7"
    problems = pods.take_problems()
    assert len(problems) == 9 and problems[0].startswith("watch event skipped: not JSON")
    assert "pod inference/b skipped: status.podIP 'nope' is not an IP address" in problems
    pods.event(event("ADDED", pod("b", "10.0.0.2", version="8")))  # the next good event still counts
    assert urls(pods) == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]


def test_two_pods_at_one_address_give_one_worker_said_once() -> None:
    pods = workers()
    pods.listed([pod("b", "10.0.0.1"), pod("a", "10.0.0.1")], "1")  # host-network pods on one node
    assert urls(pods) == ["http://10.0.0.1:8000"]
    assert pods.wanted()[0].origin == "pod inference/a"  # the first by name, whatever the order
    pods.wanted()
    assert pods.take_problems() == ["pods inference/a and inference/b are both http://10.0.0.1:8000: inference/a is used"]


def test_a_pod_list_page_is_checked_and_a_non_list_refused() -> None:
    page = parse_list(
        json.dumps({"kind": "PodList", "metadata": {"resourceVersion": "9", "continue": "t"}, "items": None}).encode()
    )
    assert page.items == [] and page.resource_version == "9" and page.next_page == "t"
    for bad, message in (
        (b"<html>", "not JSON"),
        (b"[]", "not a pod list"),
        (b'{"items": 3, "metadata": {"resourceVersion": "1"}}', "not a pod list"),
        (b'{"items": []}', "no metadata.resourceVersion"),
    ):
        with pytest.raises(ApiError, match=message):
            parse_list(bad)


def test_a_watch_stream_is_cut_into_bounded_events() -> None:
    lines = WatchLines(max_line=20)
    assert lines.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert lines.feed(b":2}\n\n") == [b'{"b":2}']
    with pytest.raises(ApiError, match="longer than 20 bytes"):
        lines.feed(b"x" * 21)
    with pytest.raises(ApiError, match="longer than 20 bytes"):
        WatchLines(max_line=20).feed(b"y" * 30 + b"\n")


# -- reaching the API server ------------------------------------------------------------------


@pytest.fixture
def account(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text("token-1\n")
    (tmp_path / "ca.crt").write_text(Path(certifi.where()).read_text())
    return tmp_path


def test_in_a_pod_the_api_server_comes_from_the_environment_and_the_service_account(account: Path) -> None:
    environ = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    access = api_access(None, str(account), environ)
    assert access == ApiAccess("https://10.96.0.1:443", str(account / "token"), str(account / "ca.crt"))
    v6 = api_access(None, str(account), {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"})
    assert v6.url == "https://[fd00::1]:6443"
    context = tls_context(access)
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    os.unlink(account / "ca.crt")
    assert api_access(None, str(account), environ).ca_file is None  # the system's CAs then


def test_outside_a_pod_or_without_a_token_the_start_stops_with_one_line(account: Path) -> None:
    with pytest.raises(ConfigError, match=r"not running in a Kubernetes pod \(\$KUBERNETES_SERVICE_HOST"):
        api_access(None, str(account), {})
    os.unlink(account / "token")
    with pytest.raises(ConfigError, match=r"no service account token at .*automountServiceAccountToken"):
        api_access(None, str(account), {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"})


def test_a_given_api_url_uses_the_account_files_it_finds(account: Path, tmp_path: Path) -> None:
    plain = api_access("http://127.0.0.1:8001/", str(account), {})
    assert plain == ApiAccess("http://127.0.0.1:8001", str(account / "token"), None) and tls_context(plain) is None
    assert api_access("https://k8s.example:6443", str(account), {}).ca_file == str(account / "ca.crt")
    assert api_access("http://127.0.0.1:8001", str(tmp_path / "none"), {}) == ApiAccess("http://127.0.0.1:8001", None, None)
    (account / "ca.crt").write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot use the CA certificate"):
        tls_context(ApiAccess("https://k8s.example", None, str(account / "ca.crt")))


async def test_the_token_is_read_again_as_it_rotates(account: Path, autojump_clock: trio.testing.MockClock) -> None:
    token = Token(str(account / "token"), reread=60.0)
    assert token.headers(0.0) == {"authorization": "Bearer token-1"}
    (account / "token").write_text("token-2")
    assert token.headers(59.0)["authorization"] == "Bearer token-1"  # read again once a minute
    assert token.headers(60.0)["authorization"] == "Bearer token-2"
    (account / "token").write_text("token-3")
    token.refused()  # a 401: read at once
    assert token.headers(61.0)["authorization"] == "Bearer token-3"
    os.unlink(account / "token")
    token.refused()
    assert token.headers(62.0)["authorization"] == "Bearer token-3"  # unreadable for a moment: the last one serves
    assert Token(None).headers(0.0) == {}


# -- the shell, against a scripted API server -------------------------------------------------


class FakeApi:
    """The pod LIST and WATCH of an API server, scripted: the test sets pods and sends events."""

    def __init__(self) -> None:
        self.pods: list[dict[str, Any]] = []
        self.version = 100
        self.requests: list[httpx.Request] = []
        self.down = False
        self.list_status = 200
        self.watch_status = 200
        self.watches: list[trio.MemorySendChannel[bytes]] = []
        self.deadlines: list[tuple[float, trio.MemorySendChannel[bytes]]] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.down:
            raise httpx.ConnectError("connection refused")
        if request.url.params.get("watch") != "1":
            if self.list_status != 200:
                return httpx.Response(self.list_status, json={"kind": "Status", "message": 'pods is forbidden: User "x"'})
            meta = {"resourceVersion": str(self.version)}
            return httpx.Response(200, json={"kind": "PodList", "metadata": meta, "items": self.pods})
        if self.watch_status != 200:
            return httpx.Response(self.watch_status, json={"kind": "Status", "code": self.watch_status})
        send, receive = trio.open_memory_channel[bytes](100)
        self.watches.append(send)
        self.deadlines.append((trio.current_time() + int(request.url.params["timeoutSeconds"]), send))

        async def body() -> AsyncIterator[bytes]:
            async with receive:
                async for line in receive:
                    yield line

        return httpx.Response(200, content=body())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """End each watch at its timeoutSeconds, as the server does."""
        task_status.started()
        while True:
            await trio.sleep(0.5)
            for deadline, send in self.deadlines:
                if trio.current_time() >= deadline:
                    send.close()

    async def send(self, kind: str, obj: dict[str, Any]) -> None:
        await self.watches[-1].send(event(kind, obj) + b"\n")
        await trio.sleep(0.1)

    def lists(self) -> int:
        return sum(1 for r in self.requests if r.url.params.get("watch") != "1")


class Registry:
    """The gateway's side of discovery: what is registered, by URL."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerSpec] = {}

    def callbacks(self) -> Callbacks:
        def add(spec: WorkerSpec) -> None:
            self.workers[spec.url] = spec

        def remove(url: str) -> None:
            del self.workers[url]

        return Callbacks(add=add, update=add, remove=remove, present=lambda url: url in self.workers)


def shell(api: FakeApi, registry: Registry, *, resync: float = 30.0, **more: Any) -> KubernetesDiscovery:
    client = KubernetesApi(ApiAccess("http://k8s.test", None, None), transport=httpx.MockTransport(api.handle))
    return KubernetesDiscovery(client, RULES, registry.callbacks(), namespace="inference", resync=resync, **more)


async def test_the_shell_lists_watches_and_applies(autojump_clock: trio.testing.MockClock) -> None:
    api, registry = FakeApi(), Registry()
    api.pods = [pod("a", "10.0.0.1"), pod("b", "10.0.0.2", ready=False)]
    async with trio.open_nursery() as nursery:
        await nursery.start(api.run)
        await nursery.start(shell(api, registry).run)
        await trio.sleep(1)
        assert set(registry.workers) == {"http://10.0.0.1:8000"}
        listed, watch = api.requests[0], api.requests[1]
        assert listed.url.path == "/api/v1/namespaces/inference/pods"
        assert listed.url.params["labelSelector"] == "app=llm" and listed.url.params["limit"] == "500"
        assert watch.url.params["resourceVersion"] == "100" and watch.url.params["allowWatchBookmarks"] == "true"
        assert watch.url.params["labelSelector"] == "app=llm" and int(watch.url.params["timeoutSeconds"]) <= 30

        await api.send("MODIFIED", pod("b", "10.0.0.2", version="101"))
        assert set(registry.workers) == {"http://10.0.0.1:8000", "http://10.0.0.2:8000"}
        await api.send("DELETED", pod("a", "10.0.0.1", version="102"))
        assert set(registry.workers) == {"http://10.0.0.2:8000"}

        del registry.workers["http://10.0.0.2:8000"]  # removed behind discovery's back (failing): back at the next list
        api.pods = [pod("b", "10.0.0.2")]
        await trio.sleep(31)
        assert set(registry.workers) == {"http://10.0.0.2:8000"} and api.lists() == 2
        nursery.cancel_scope.cancel()


async def test_an_expired_version_means_a_new_list(autojump_clock: trio.testing.MockClock) -> None:
    api, registry = FakeApi(), Registry()
    api.pods = [pod("a", "10.0.0.1")]
    async with trio.open_nursery() as nursery:
        await nursery.start(api.run)
        await nursery.start(shell(api, registry).run)
        await trio.sleep(1)
        api.pods, api.version = [pod("c", "10.0.0.3")], 500  # a's deletion happened while we could not see it
        await api.send("ERROR", {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"})
        await trio.sleep(1)
        assert set(registry.workers) == {"http://10.0.0.3:8000"} and api.lists() == 2
        assert api.requests[-1].url.params["resourceVersion"] == "500"

        api.watch_status = 410  # refused outright, before any event: list again too
        api.watches[-1].close()
        await trio.sleep(1)
        assert api.lists() >= 3
        nursery.cancel_scope.cancel()


async def test_an_unreachable_api_server_changes_nothing_and_is_said_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "smg.workers")
    api, registry = FakeApi(), Registry()
    api.pods = [pod("a", "10.0.0.1")]
    async with trio.open_nursery() as nursery:
        await nursery.start(api.run)
        await nursery.start(shell(api, registry, resync=5.0).run)
        await trio.sleep(1)
        api.down = True
        api.watches[-1].close()  # the connection drops
        await trio.sleep(120)
        assert set(registry.workers) == {"http://10.0.0.1:8000"}  # kept while the server is away
        assert caplog.text.count("Kubernetes discovery: cannot watch worker pods") == 1
        assert caplog.text.count("Kubernetes discovery: cannot list worker pods") == 1
        attempts = len(api.requests)
        assert 5 < attempts < 20  # backing off to BACKOFF_MAX_SECS, not hammering
        api.down, api.pods = False, []
        await trio.sleep(40)
        assert registry.workers == {} and "the API server answers again (worker pods)" in caplog.text
        nursery.cancel_scope.cancel()


async def test_a_refusal_says_which_permission_is_missing(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    api, registry = FakeApi(), Registry()
    api.list_status = 403
    async with trio.open_nursery() as nursery:
        await nursery.start(api.run)
        await nursery.start(shell(api, registry).run)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert (
        'cannot list worker pods at http://k8s.test: 403 pods is forbidden: User "x" (the service account needs get, list'
        in caplog.text
    )
    assert "a Role in namespace inference" in caplog.text
    assert caplog.text.count("403 pods is forbidden") == 1


async def test_gateway_pods_feed_the_mesh_seeds(autojump_clock: trio.testing.MockClock) -> None:
    api, registry = FakeApi(), Registry()
    api.pods = [pod("smg-0", "10.0.1.1", labels={"app": "smg"}), pod("smg-1", "10.0.1.2", labels={"app": "smg"})]
    seeds = DiscoveredSeeds(39527)
    discovery = shell(api, registry, router_selector={"app": "smg"}, on_routers=seeds.set)
    async with trio.open_nursery() as nursery:
        await nursery.start(api.run)
        await nursery.start(discovery.run)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert seeds.hosts == ["10.0.1.1", "10.0.1.2"]
    assert registry.workers == {}  # the gateways are not workers (the worker selector does not match them)

    async def dns(host: str, port: int) -> list[str]:
        return {"gw.test": ["10.0.2.1"]}[host]

    resolved = await resolve_seeds(["gw.test:39527", seeds.seed], seeds.resolver(dns))
    assert resolved == ["10.0.2.1:39527", "10.0.1.1:39527", "10.0.1.2:39527"]
    seeds.set([])
    assert await resolve_seeds([seeds.seed], seeds.resolver(dns)) == []


def test_applying_is_shared_and_owns_only_what_it_added() -> None:
    registry = Registry()
    registry.workers["http://flag:1"] = WorkerSpec("http://flag:1")  # registered by --worker-urls
    discovered = Discovered(registry.callbacks(), gone="its pod is gone")
    discovered.apply([WorkerSpec("http://a:1", model_id="m")])
    discovered.apply([WorkerSpec("http://a:1", model_id="n")])  # the pod's model id changed: an update
    assert registry.workers["http://a:1"].model_id == "n"
    discovered.apply([])
    assert set(registry.workers) == {"http://flag:1"}


async def test_the_gateway_turns_worker_removal_on_under_kubernetes_discovery_unless_told_not_to(account: Path) -> None:
    base: dict[str, Any] = {
        "history_backend": "none",
        "discovery_provider": "kubernetes",
        "kubernetes_api_url": "http://127.0.0.1:1",
    }
    for flag, removes in ((None, True), (False, False), (True, True)):
        config = GatewayConfig(**base, remove_unhealthy_workers=flag)
        ctx = GatewayContext.create(config)
        assert ctx.registrar.remove_failed is bool(flag)  # as built: the flag alone
        discovery = kubernetes_discovery(ctx, config)
        assert ctx.registrar.remove_failed is removes, flag
        assert discovery.routers is None  # no --router-selector: no gateway pods to seed the mesh with
        await discovery.api.aclose()
    with pytest.raises(ConfigError, match=r"^--router-selector finds the gateway pods of a mesh: it needs --ha-mesh$"):
        GatewayConfig(**base, router_selector=("app=smg",))


# -- --model-id-from through the data plane -------------------------------------------------


async def test_a_discovered_model_id_is_served_and_the_worker_gets_its_own_name(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = FakeUpstream(echo_model)
    ctx = gateway(upstream, 0, discovery_provider="kubernetes", model_id_from="label:model")
    worker = add_ready_worker(ctx, "http://10.0.0.1:8000", models=["/models/llama-8b"], model_id="team-llama")
    ctx.registry.refresh()
    client = await call(ctx, "/v1/chat/completions", {"model": "team-llama", "messages": [{"role": "user", "content": "hi"}]})
    assert client.status == 200
    assert json.loads(upstream.calls[0].body)["model"] == "/models/llama-8b"
    raw = b'{"model": "/models/llama-8b", "messages": [{"role": "user", "content": "hi"}]}'
    assert (await call(ctx, "/v1/chat/completions", raw)).status == 200  # its own name: an alias, sent as it is
    assert upstream.calls[1].body == raw
    ids = [m["id"] for m in (await call(ctx, "/v1/models", method="GET")).json()["data"]]
    assert ids == ["/models/llama-8b", "team-llama"]
    assert worker.to_json()["model_id"] == "team-llama" and worker.to_json()["models"] == ["team-llama", "/models/llama-8b"]

    # the pod is relabelled: discovery's update serves the new id at once
    discovered_by(ctx).update(WorkerSpec(worker.url, {}, model_id="team-llama-v2"))
    assert ctx.registry.serving("team-llama-v2") == [worker] and not ctx.registry.serving("team-llama")


async def test_workers_under_one_model_id_each_get_the_name_they_report(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A rolling upgrade: one pod model id, two versions; each worker is sent its own name."""
    upstream = FakeUpstream(echo_model)
    ctx = gateway(upstream, 0, policy="round_robin")
    old = add_ready_worker(ctx, "http://10.0.0.1:8000", models=["old"], model_id="m")
    add_ready_worker(ctx, "http://10.0.0.2:8000", models=["new"], model_id="m")
    ctx.registry.refresh()
    for _ in range(4):
        assert (await call(ctx, "/v1/chat/completions", {"model": "m", "messages": []})).status == 200
    sent = {(call.worker_url, json.loads(call.body)["model"]) for call in upstream.calls}
    assert sent == {(old.url, "old"), ("http://10.0.0.2:8000", "new")}


# -- the flags --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"selector": ("app=llm",)}, r"^--selector is for Kubernetes discovery"),
        ({"service_discovery_port": 8000}, r"^--service-discovery-port is for Kubernetes discovery"),
        ({"router_selector": ("app=smg",), "discovery_provider": "file", "discovery_file": "w.json"}, r"^--router-selector is"),
        ({"model_id_from": "namespace"}, r"^--model-id-from is for Kubernetes discovery"),
        ({"kubernetes_api_url": "http://127.0.0.1:1"}, r"^--kubernetes-api-url is for Kubernetes discovery"),
        ({"service_discovery": True, "discovery_provider": "kubernetes"}, r"^--service-discovery is the legacy spelling"),
        ({"discovery_check_interval_secs": 5.0}, r"^--discovery-check-interval-secs is for --discovery-provider file or"),
        ({"discovery_provider": "kubernetes", "service_discovery_namespace": "Bad_NS"}, r"is not a Kubernetes namespace"),
        ({"discovery_provider": "kubernetes", "kubernetes_api_url": "ftp://x"}, r"is not an http:// or https:// URL"),
    ],
)
def test_kubernetes_flags_are_refused_where_they_mean_nothing(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GatewayConfig(**settings)


def test_kubernetes_discovery_takes_its_flags_by_either_spelling() -> None:
    for spelling in ({"service_discovery": True}, {"discovery_provider": "kubernetes"}):
        config = GatewayConfig(**spelling, selector=("app=llm",), model_id_from="label:model", discovery_check_interval_secs=10.0)
        assert config.kubernetes_discovery
    assert not GatewayConfig().kubernetes_discovery
