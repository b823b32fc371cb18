"""`--discovery-provider kubernetes` through real gateways, against a fake Kubernetes API server.

The fake serves the pods part of the API (LIST and WATCH with label selectors and resource
versions, 410 for a compacted version, DELETED for a pod relabelled out of a watch's selector, as
the real server does) over plain HTTP on 127.0.0.1, from pods the test sets; the gateway reaches
it through the hidden `--kubernetes-api-url`. The "pods" are simulated workers on loopback
addresses of their own (127.0.0.2, .3, .4) and one port, as pods have an IP each and share
`--service-discovery-port`. Nothing leaves the machine; every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from smg.http.asgi import serve_lifespan
from tests.helpers import Proc, _spawn, _wait_for_log, start_gateway, wait_until

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
MESH_HOSTS = ("127.0.0.5", "127.0.0.6")
CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}


# -- the fake API server ------------------------------------------------------------------------


def matches(pod: dict[str, Any] | None, namespace: str | None, selector: dict[str, str]) -> bool:
    if pod is None:
        return False
    meta = pod["metadata"]
    labels = meta.get("labels") or {}
    return (namespace is None or meta["namespace"] == namespace) and all(labels.get(k) == v for k, v in selector.items())


class FakeKubernetes:
    """Pod LIST and WATCH of a Kubernetes API server, in a thread of its own (trio + hypercorn)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.version = 1000
        self.pods: dict[str, dict[str, Any]] = {}  # "namespace/name" -> pod
        # (version, before, after) per change, or (version, None, raw line) for an injected line
        self.history: list[tuple[int, Any, Any]] = []
        self.compacted = 0  # a watch from an older version gets 410 Gone
        self.generation = 0  # bumped to end every open watch
        self.down = False  # 503 to everything
        self.requests: list[dict[str, Any]] = []
        self.url = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # the test's side

    def put(self, pod: dict[str, Any]) -> None:
        with self.lock:
            self.version += 1
            pod["metadata"]["resourceVersion"] = str(self.version)
            key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
            self.history.append((self.version, self.pods.get(key), pod))
            self.pods[key] = pod

    def delete(self, namespace: str, name: str) -> None:
        with self.lock:
            self.version += 1
            self.history.append((self.version, self.pods.pop(f"{namespace}/{name}"), None))

    def inject(self, line: bytes) -> None:
        """A raw line on every watch (a malformed event)."""
        with self.lock:
            self.version += 1
            self.history.append((self.version, None, line))

    def compact(self) -> None:
        """Forget the history (etcd compaction) and end every watch: the next one from an old version gets 410."""
        with self.lock:
            self.compacted = self.version
            self.generation += 1

    def lists(self) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r["params"].get("watch") != "1")

    # the server

    def start(self) -> FakeKubernetes:
        started = threading.Event()

        def run() -> None:
            trio.run(self._serve, started)

        self._thread = threading.Thread(target=run, name="fake-kubernetes", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise TimeoutError("the fake API server did not start")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    async def _serve(self, started: threading.Event) -> None:
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.graceful_timeout = 0.1

        async def stopped() -> None:
            while not self._stop.is_set():
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            app: Any = self.app  # a plain ASGI callable; hypercorn's annotation wants its typed scopes
            binds = await nursery.start(partial(serve, app, config, shutdown_trigger=stopped))
            self.url = binds[0]
            started.set()

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        params = {k: v[0] for k, v in parse_qs(scope["query_string"].decode(), keep_blank_values=True).items()}
        headers = dict(scope["headers"])
        with self.lock:
            self.requests.append({"path": scope["path"], "params": params, "authorization": headers.get(b"authorization")})
            down = self.down
        if down:
            await self._json(send, 503, {"kind": "Status", "code": 503, "message": "apiserver is shutting down"})
            return
        path = scope["path"]
        m = re.fullmatch(r"/api/v1(?:/namespaces/([^/]+))?/pods", path)
        if m is None:
            await self._json(send, 404, {"kind": "Status", "code": 404, "message": f"no {path}"})
            return
        namespace = m.group(1)
        selector = dict(term.split("=", 1) for term in params.get("labelSelector", "").split(",") if term)
        if params.get("watch") == "1":
            await self._watch(send, namespace, selector, int(params["resourceVersion"]), int(params["timeoutSeconds"]))
            return
        with self.lock:
            items = [p for p in self.pods.values() if matches(p, namespace, selector)]
            version = self.version
        await self._json(
            send, 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(version)}, "items": items}
        )

    async def _watch(self, send: Any, namespace: str | None, selector: dict[str, str], since: int, seconds: int) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        with self.lock:
            generation, gone = self.generation, since < self.compacted
        if gone:
            status = {
                "kind": "Status",
                "status": "Failure",
                "message": f"too old resource version: {since}",
                "reason": "Expired",
                "code": 410,
            }
            await send({"type": "http.response.body", "body": json.dumps({"type": "ERROR", "object": status}).encode() + b"\n"})
            return
        deadline = trio.current_time() + seconds
        bookmarked = False
        while trio.current_time() < deadline:
            with self.lock:
                if self.generation != generation or self.down:
                    break
                due = [entry for entry in self.history if entry[0] > since]
                version = self.version
            lines = []
            for entry_version, before, after in due:
                since = entry_version
                if before is None and isinstance(after, bytes):
                    lines.append(after)
                    continue
                was, now = matches(before, namespace, selector), matches(after, namespace, selector)
                if now:
                    lines.append(json.dumps({"type": "MODIFIED" if was else "ADDED", "object": after}).encode())
                elif was:  # deleted, or relabelled out of the selector: DELETED, as the real server says it
                    obj = json.loads(json.dumps(after or before))
                    obj["metadata"]["resourceVersion"] = str(entry_version)
                    lines.append(json.dumps({"type": "DELETED", "object": obj}).encode())
            if not lines and not bookmarked and trio.current_time() > deadline - seconds + 1:
                bookmarked = True  # a quiet watch: a bookmark moves the client's version on
                lines.append(
                    json.dumps(
                        {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": str(version)}}}
                    ).encode()
                )
                since = max(since, version)
            if lines:
                await send({"type": "http.response.body", "body": b"\n".join(lines) + b"\n", "more_body": True})
            await trio.sleep(0.02)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _json(send: Any, status: int, doc: Any) -> None:
        body = json.dumps(doc).encode()
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


def pod(
    name: str, ip: str, *, labels: dict[str, str] | None = None, ready: bool = True, namespace: str = "inference"
) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "sim"} if labels is None else labels},
        "spec": {},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


# -- fixtures -----------------------------------------------------------------------------------


def port_free_on(hosts: tuple[str, ...], kinds: tuple[int, ...] = (socket.SOCK_STREAM,)) -> int:
    """One port free on every address (each pod's IP, one port for all, as Kubernetes gives them)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        try:
            for host in hosts:
                for kind in kinds:
                    with socket.socket(socket.AF_INET, kind) as probe:
                        probe.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every address")


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[int, list[Proc]]]:
    """A simulated worker on each of HOSTS, all on one port."""
    port = port_free_on(HOSTS)
    procs = []
    try:
        for host in HOSTS:
            proc = _spawn(["sim-worker", "--host", host, "--port", str(port), "--ttft-ms", "0", "--tpot-ms", "0"])
            procs.append(proc)
        for host, proc in zip(HOSTS, procs, strict=True):
            _wait_for_log(proc, re.compile(rf"listening on http://{re.escape(host)}:{port}"))
        yield port, procs
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture
def api() -> Iterator[FakeKubernetes]:
    server = FakeKubernetes().start()
    yield server
    server.stop()


@pytest.fixture
def account(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text("sa-token-1\n")
    return tmp_path


def kubernetes_flags(api: FakeKubernetes, account: Path, port: int, *more: str) -> list[str]:
    return [
        "--discovery-provider", "kubernetes", "--selector", "app=sim", "--service-discovery-namespace", "inference",
        "--service-discovery-port", str(port), "--kubernetes-api-url", api.url,
        "--kubernetes-service-account-dir", str(account), "--health-check-interval-secs", "1", *more,
    ]  # fmt: skip


def workers(gateway: Proc) -> dict[str, dict[str, Any]]:
    return {w["url"]: w for w in httpx.get(gateway.url + "/workers").json()["workers"]}


def url(host: str, port: int) -> str:
    return f"http://{host}:{port}"


# -- the tests ----------------------------------------------------------------------------------


def test_pods_come_and_go_as_workers(sims: tuple[int, list[Proc]], api: FakeKubernetes, account: Path) -> None:
    port, _ = sims
    a, b, c = (url(h, port) for h in HOSTS)
    api.put(pod("sim-a", HOSTS[0], labels={"app": "sim", "zone": "a"}))
    api.put(pod("sim-b", HOSTS[1]))
    api.put(pod("sim-c", HOSTS[2], ready=False))  # starting: not a worker yet
    api.put(pod("other", "127.0.0.9", labels={"app": "other"}))  # another app's pod
    api.put(pod("elsewhere", "127.0.0.8", namespace="default"))  # another namespace
    gateway = start_gateway([], *kubernetes_flags(api, account, port), ready=False)
    try:
        wait_until(lambda: set(workers(gateway)) == {a, b}, "the ready pods registered")
        assert workers(gateway)[a]["labels"] == {"app": "sim", "zone": "a"}  # the pod's labels
        wait_until(lambda: httpx.get(gateway.url + "/readiness").status_code == 200, "discovered workers ready")
        assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT).status_code == 200

        first = api.requests[0]
        assert first["path"] == "/api/v1/namespaces/inference/pods" and first["params"]["labelSelector"] == "app=sim"
        assert first["authorization"] == b"Bearer sa-token-1"  # the service account's token
        watch = next(r for r in api.requests if r["params"].get("watch") == "1")
        assert watch["params"]["allowWatchBookmarks"] == "true" and watch["params"]["resourceVersion"]

        api.put(pod("sim-c", HOSTS[2]))  # its readiness probe passes
        wait_until(lambda: set(workers(gateway)) == {a, b, c}, "the pod that became ready registered")
        api.put(pod("sim-a", HOSTS[0], ready=False))  # its readiness probe fails
        wait_until(lambda: set(workers(gateway)) == {b, c}, "the not-ready pod's worker removed")
        api.put(pod("sim-b", HOSTS[1], labels={"app": "retired"}))  # relabelled out of the selector
        wait_until(lambda: set(workers(gateway)) == {c}, "the relabelled pod's worker removed")
        api.inject(b'{"type": "ADDED", "object": {"metadata": {"name": 7}}}')  # a malformed event: skipped
        api.inject(b"{not json")
        api.delete("inference", "sim-c")
        wait_until(lambda: workers(gateway) == {}, "the deleted pod's worker removed")
        api.put(pod("sim-a", HOSTS[0]))
        wait_until(lambda: set(workers(gateway)) == {a}, "a worker after the malformed events")
        log = gateway.log()
        assert "Kubernetes discovery: watch event skipped: no metadata.name" in log
        assert log.count("watch event skipped: not JSON") == 1
        assert f"discovery: added worker {a} (pod inference/sim-a)" in log
        assert gateway.popen.poll() is None
    finally:
        gateway.stop()


def test_an_unreachable_api_server_keeps_the_workers_and_an_expired_watch_relists(
    sims: tuple[int, list[Proc]], api: FakeKubernetes, account: Path
) -> None:
    port, _ = sims
    a, b = url(HOSTS[0], port), url(HOSTS[1], port)
    api.put(pod("sim-a", HOSTS[0]))
    gateway = start_gateway([], *kubernetes_flags(api, account, port), ready=False)
    try:
        wait_until(lambda: set(workers(gateway)) == {a}, "the pod registered")
        api.down = True
        api.compact()  # the open watch ends; every call is refused while down
        wait_until(
            lambda: "cannot watch worker pods" in gateway.log() or "cannot list worker pods" in gateway.log(), "the outage logged"
        )
        refused = len(api.requests)
        wait_until(lambda: len(api.requests) >= refused + 2, "two more refused calls during the outage")
        assert set(workers(gateway)) == {a}  # kept as it was
        log = gateway.log()
        assert log.count("503 apiserver is shutting down") == 1  # said once, not per retry

        lists = api.lists()
        api.put(pod("sim-b", HOSTS[1]))  # behind a compacted history: only a new list sees it
        api.compact()
        api.down = False
        wait_until(lambda: set(workers(gateway)) == {a, b}, "the new pod found by the relist", deadline=40)
        assert api.lists() > lists
        wait_until(lambda: "the API server answers again" in gateway.log(), "the recovery logged")
    finally:
        gateway.stop()


def test_model_id_from_a_label_serves_the_pods_model_under_that_name(
    sims: tuple[int, list[Proc]], api: FakeKubernetes, account: Path
) -> None:
    port, _ = sims
    api.put(pod("sim-a", HOSTS[0], labels={"app": "sim", "model": "team-llama"}))
    gateway = start_gateway([], *kubernetes_flags(api, account, port, "--model-id-from", "label:model"), ready=False)
    try:
        wait_until(lambda: httpx.get(gateway.url + "/readiness").status_code == 200, "the worker ready")
        assert workers(gateway)[url(HOSTS[0], port)]["model_id"] == "team-llama"
        response = httpx.post(gateway.url + "/v1/chat/completions", json={**CHAT, "model": "team-llama"})
        assert response.status_code == 200, response.text  # the simulated worker accepts only its own name
        sent = httpx.get(url(HOSTS[0], port) + "/sim/requests").json()["requests"][-1]
        assert sent["body"]["model"] == "sim-model"
        assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT).status_code == 200  # its own name: an alias
        models = [m["id"] for m in httpx.get(gateway.url + "/v1/models").json()["data"]]
        assert set(models) == {"team-llama", "sim-model"}
    finally:
        gateway.stop()


def test_gateway_pods_find_each_other_and_keep_one_record_per_worker(
    sims: tuple[int, list[Proc]], api: FakeKubernetes, account: Path
) -> None:
    port, _ = sims
    mesh_port = port_free_on(MESH_HOSTS, (socket.SOCK_STREAM, socket.SOCK_DGRAM))
    for i, host in enumerate(MESH_HOSTS):
        api.put(pod(f"smg-{i}", host, labels={"app": "smg"}))
    api.put(pod("sim-a", HOSTS[0]))
    api.put(pod("sim-b", HOSTS[1]))
    gateways = []
    try:
        for host in MESH_HOSTS:  # no --seeds: the gateway pods are the seeds
            flags = kubernetes_flags(
                api,
                account,
                port,
                "--ha-mesh",
                "--mesh-host",
                host,
                "--mesh-port",
                str(mesh_port),
                "--router-selector",
                "app=smg",
            )
            gateways.append(start_gateway([], *flags, ready=False))
        names = {f"{host}:{mesh_port}" for host in MESH_HOSTS}

        def members(gateway: Proc) -> set[str]:
            status = httpx.get(gateway.url + "/mesh/status").json()
            return {n["address"] for n in status["nodes"] if n["status"] == "alive"}

        for gateway in gateways:
            wait_until(lambda g=gateway: members(g) == names, "the gateways joined through their pods", deadline=60)
            wait_until(lambda g=gateway: len(workers(g)) == 2, "both workers on every gateway")
        for gateway in gateways:  # every gateway discovered both workers: one replicated record each
            wait_until(lambda g=gateway: httpx.get(g.url + "/mesh/workers").json()["total"] == 2, "one record per worker")
        assert "mesh seeds from --router-selector: 127.0.0.5, 127.0.0.6" in gateways[0].log()
    finally:
        for gateway in gateways:
            gateway.stop()


def test_kubernetes_discovery_outside_a_pod_stops_the_start_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    result = subprocess.run(
        [sys.executable, "-m", "smg", "--host", "127.0.0.1", "--port", "0", "--prometheus-port", "0",
         "--service-discovery", "--kubernetes-service-account-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env={**env, "SMG_HISTORY_DB_PATH": str(tmp_path / "h.db")},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("smg: error: Kubernetes discovery: not running in a Kubernetes pod ($KUBERNETES_SERVICE_HOST")
    ), result.stderr
