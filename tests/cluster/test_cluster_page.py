"""The live cluster page on three real gateway processes: its JSON (shared with `smg mesh status`),
its credentials, and the page itself in a real browser (Debian's chromium driven by Playwright):
a gateway killed turns dead on the page, a worker added appears.

The browser test skips, saying why, when chromium or Playwright is missing (`.ci/run` installs
both where it can). Its screenshot is kept in `$SMG_TEST_ARTIFACTS` (default: pytest's tmp dir).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import Proc, start_mesh_gateway, start_sim, wait_until

KEY = base64.b64encode(b"p" * 32).decode()
ADMIN = "page-admin-key"
CONVERGE = 15.0  # seconds: propagation and failure detection on a loaded 2-core CI machine
DEAD_WITHIN = 60.0  # SWIM's suspicion timeout grows with the cluster; Lifeguard may stretch it under load
api = httpx.Client(headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def cluster_state(node: Proc, **params: str) -> dict:
    response = api.get(node.url + "/ui/api/cluster", params=params)
    assert response.status_code == 200, response.text
    return response.json()


HOSTILE_MODEL = '<img src=x onerror="document.title=1">'  # a worker's model name is its own to choose


@pytest.fixture(scope="module")
def hostile_worker() -> Iterator[Proc]:
    sim = start_sim(1, "--model", HOSTILE_MODEL)
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def cluster(workers: Proc) -> Iterator[list[Proc]]:
    flags = ("--mesh-key", KEY, "--api-key", ADMIN, "--health-check-interval-secs", "1")
    first = start_mesh_gateway(workers.urls[:2], *flags)
    nodes = [first] + [start_mesh_gateway([], *flags, seeds=[first.mesh_address]) for _ in range(2)]

    def converged() -> bool:
        states = [cluster_state(n, series="0") for n in nodes]
        return all(
            len(s["views"]) == 3
            and all([w["status"] for w in v.get("workers", [])] == ["ready", "ready"] for v in s["views"].values())
            and all(s["agreeing"].values())
            for s in states
        )

    # each check asks every gateway for every view: poll gently, the machine has two cores
    wait_until(converged, "three members, two ready workers and agreeing digests on every page", CONVERGE, interval=0.2)
    yield nodes
    for node in nodes:
        node.stop()


def test_the_cluster_view_holds_every_gateways_own_view(cluster: list[Proc], workers: Proc) -> None:
    body = cluster_state(cluster[0])
    names = {n["name"] for n in body["nodes"]}
    assert set(body["views"]) == names and len(names) == 3
    for name, view in body["views"].items():
        assert view["node_name"] == name, view.get("error")
        assert {w["url"] for w in view["workers"]} == set(workers.urls)
        assert {w["status"] for w in view["workers"]} == {"ready"}
        assert set(view["replication"]["stores"]) >= {"workers", "health", "load"}
        assert "t" in view["series"] and "values" in view["series"]
        if name != body["node_name"]:  # a peer sends only the history the page draws per gateway
            assert all(key.startswith(("gateway|", "mesh|")) for key in view["series"]["values"])
        # each gateway built its own view: its own events, its own membership events about the others
        assert any(e["kind"] == "member" for e in view["events"])
    assert body["agreeing"] and all(body["agreeing"].values())
    assert "series" not in cluster_state(cluster[0], series="0")["views"][body["node_name"]]


def test_a_routed_request_shows_in_the_views_counters(cluster: list[Proc]) -> None:
    chat = {"model": "sim-model", "messages": [{"role": "user", "content": "page " * 200}], "max_tokens": 2}
    for _ in range(3):
        assert api.post(cluster[1].url + "/v1/chat/completions", json=chat).status_code == 200

    def answered() -> dict:  # a peer's view may be up to half a second old (built once for every asker)
        views = cluster_state(cluster[0], series="0")["views"]
        return {n: v for n, v in views.items() if v.get("requests_answered", 0) >= 3}

    wait_until(answered, "the three requests in the answering gateway's view", CONVERGE, interval=0.2)
    view = answered()
    name = next(iter(view))
    served = [w for w in view[name]["workers"] if w["cache"]]
    prompt = sum(c["prompt_tokens"] for w in served for c in w["cache"].values())
    cached = sum(c["cached_tokens"] for w in served for c in w["cache"].values())
    assert prompt > 0 and 0 < cached <= prompt  # cache_aware sent the repeats where the prefix was


def test_the_data_needs_credentials_but_the_static_page_does_not(cluster: list[Proc]) -> None:
    node = cluster[0]
    for path in ("/ui/api/cluster", "/ui/api/node"):
        refused = httpx.get(node.url + path)
        assert refused.status_code == 401, refused.text
        assert httpx.get(node.url + path, headers={"authorization": "Bearer wrong"}).status_code == 401
    page = httpx.get(node.url + "/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/ui/app.js", "/ui/app.css"):
        assert httpx.get(node.url + asset).status_code == 200
    # nothing in the page is fetched from elsewhere: it works offline
    text = page.text + httpx.get(node.url + "/ui/app.js").text + httpx.get(node.url + "/ui/app.css").text
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text


def test_smg_mesh_status_reads_the_same_view(cluster: list[Proc]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "smg", "mesh", "status", "--url", cluster[0].url, "--api-key", ADMIN],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "3 live of 3 known members" in out
    assert "digests agree on every gateway" in out
    names = {n["name"] for n in cluster_state(cluster[0], series="0")["nodes"]}
    for name in names:
        assert f"gateway {name}: 2 workers (2 ready)" in out, out


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (apt-get install chromium): the browser test cannot run")
def test_the_page_in_a_browser_follows_a_death_and_a_new_worker(
    cluster: list[Proc], hostile_worker: Proc, tmp_path_factory: pytest.TempPathFactory
) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright (pip install playwright) is needed to drive chromium"
    )
    expect = sync_api.expect
    artifacts = Path(os.environ.get("SMG_TEST_ARTIFACTS") or tmp_path_factory.mktemp("artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    first, victim = cluster[0], cluster[2]
    names = {n["http_address"]: n["name"] for n in cluster_state(first, series="0")["nodes"]}
    victim_name = names[victim.url]
    new_worker = hostile_worker.url
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(first.url + "/ui?interval=500")
            # the data needs the control-plane key: the page asks for it
            page.wait_for_selector("#login:not([hidden])", timeout=15_000)
            page.fill("#token", ADMIN)
            page.click("#token-save")
            # (locators, not evaluated scripts: the page's CSP stays on and would refuse them)
            expect(page.locator("tr[data-member][data-status=alive]")).to_have_count(3, timeout=15_000)
            expect(page.locator("tr[data-worker]")).to_have_count(2)

            victim.stop()  # SIGKILL: no leave message, the mesh has to find out
            page.wait_for_selector(f'tr[data-member="{victim_name}"][data-status="dead"]', timeout=DEAD_WITHIN * 1000)
            assert "unreachable" in page.locator(f'tr[data-member="{victim_name}"]').inner_text()

            assert api.post(first.url + "/workers", json={"url": new_worker}).status_code in (200, 202)
            row = f'tr[data-worker="{new_worker}"]'
            page.wait_for_selector(row, timeout=CONVERGE * 1000)
            # ready on each surviving gateway's own view (the new worker reached the peer through the mesh)
            expect(page.locator(f"{row} td[data-status=ready]")).to_have_count(2, timeout=CONVERGE * 1000)
            # its model name is shown as the text it is, never run as HTML
            expect(page.locator(row)).to_contain_text(HOSTILE_MODEL)
            assert page.locator("#workers img").count() == 0 and page.title() == "smg cluster"
            shot = artifacts / "cluster-page.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
            assert not errors, errors
        finally:
            browser.close()
