"""The Grafana dashboard (issue 19 item 2): every metric a panel queries is one a running gateway
exports (no dangling panels), and compose provisions it beside Prometheus."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import Proc, start_gateway, start_sim

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "smg-dashboard.json"
HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queried(board: dict[str, Any]) -> set[str]:
    """Every metric name in every panel's PromQL."""
    exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    exprs += [v["query"] for v in board["templating"]["list"] if v.get("type") == "query"]
    return {name for expr in exprs for name in re.findall(r"\b(smg_[a-z0-9_]+)\b", expr)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[set[str], dict[str, str]]]:
    """The metric families (name -> type) and sample names a gateway with a mesh, tenant limits
    and a worker exports after one request."""
    limits = tmp_path_factory.mktemp("limits") / "limits.json"
    limits.write_text(json.dumps({"default": {"requests_per_minute": 100}, "tenants": {"acme": {"tokens_per_minute": 1000}}}))
    sim: Proc = start_sim(1, "--ttft-ms", "0", "--tpot-ms", "0")
    gateway = start_gateway(
        sim.urls,
        "--ha-mesh",
        "--mesh-host",
        "127.0.0.1",
        "--mesh-port",
        "0",
        "--tenant-rate-limit-config",
        str(limits),
        "--policy",
        "cache_aware",
    )
    try:
        body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        assert httpx.post(gateway.url + "/v1/chat/completions", json=body).status_code == 200
        text = httpx.get(gateway.metrics_url + "/metrics").text
    finally:
        gateway.stop()
        sim.stop()
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    samples = set(re.findall(r"^([a-z_0-9]+)[{ ]", text, re.MULTILINE))
    yield samples, families


def test_every_metric_the_dashboard_queries_is_exported(exported: tuple[set[str], dict[str, str]]) -> None:
    samples, families = exported
    names = queried(dashboard())
    assert len(names) >= 15  # requests, errors, latency, TTFT, workers, cache, tokens, mesh, replication, tenants
    missing = []
    for name in sorted(names):
        base = next((name[: -len(part)] for part in HISTOGRAM_PARTS if name.endswith(part)), name)
        if name in samples or name in families or families.get(base) == "histogram":
            continue
        missing.append(name)
    assert missing == [], f"panels query metrics no gateway exports: {missing}"


def test_the_dashboard_is_well_formed() -> None:
    board = dashboard()
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert all(t["datasource"] == panel["datasource"] and t["expr"] for t in panel["targets"])
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("errors", "latency", "first token", "in flight", "health", "cache", "mesh", "replication", "tenant"):
        assert topic in titles, topic


def test_compose_provisions_grafana_with_the_dashboard_beside_prometheus() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1) for volume in grafana["volumes"])
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/smg.yml").read_text())["providers"][0]
    dashboards_dir = provider["options"]["path"]
    assert mounts["./deploy/grafana/smg-dashboard.json"].startswith(dashboards_dir + "/")
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    source = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
