"""`deploy/kubernetes` (issue 19 item 4): rendered with `kubectl kustomize`, every object valid
against the Kubernetes schemas, and the parts that must agree with the gateway agreeing: its
arguments are flags `smg launch` accepts, the probes and ports name what those flags open, the
seeds name the headless service, the RBAC covers discovery, the PDB and services select the pods."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from smg.cli import build_parser, configured

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.30.0"  # the oldest release still supported upstream when these were written

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed: cannot render kustomize")


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy" / "kubernetes")], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def test_every_object_is_valid_for_kubernetes(objects: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["PodDisruptionBudget", "Role", "RoleBinding", "Service", "Service", "ServiceAccount", "StatefulSet"]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)  # raises with the path of what is wrong
        assert obj["metadata"]["namespace"] == "smg"


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec = find(objects, "StatefulSet", "smg")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "smg"
    result: dict[str, Any] = spec["containers"][0]
    return result


def flag(args: list[str], name: str) -> str:
    return next(arg.split("=", 1)[1] for arg in args if arg.startswith(f"--{name}="))


def test_the_arguments_are_a_configuration_smg_accepts(objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    c = container(objects)
    env = {e["name"]: e["valueFrom"] for e in c["env"]}
    assert env["SMG_MESH_KEY"]["secretKeyRef"] == {"name": "smg", "key": "mesh-key"}
    assert env["POSTGRES_DB_URL"]["secretKeyRef"] == {"name": "smg", "key": "postgres-url"}
    values = {"POD_NAME": "smg-0", "POD_NAMESPACE": "smg", "POD_IP": "10.1.2.3"}
    args = [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], arg) for arg in c["args"]]
    assert args[0] == "launch"
    monkeypatch.setenv("SMG_MESH_KEY", "bWVzaC1rZXktc2l4dGVlbg==")
    monkeypatch.setenv("POSTGRES_DB_URL", "postgresql://smg:pw@postgres:5432/smg")
    config, _ = configured(build_parser("launch").parse_args(args[1:]))
    assert config.ha_mesh and config.kubernetes_discovery and config.history_backend == "postgres"
    assert config.mesh_advertise_host == "10.1.2.3" and config.mesh_server_name == "smg-0"
    assert config.service_discovery_namespace == "smg"


def test_probes_ports_and_services_name_what_the_flags_open(objects: list[dict[str, Any]]) -> None:
    c = container(objects)
    args = c["args"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == int(flag(args, "port")) and ports["metrics"] == int(flag(args, "prometheus-port"))
    assert ports["probes"] == int(flag(args, "health-check-port"))
    assert ports["mesh-udp"] == ports["mesh-tcp"] == int(flag(args, "mesh-port"))
    assert c["readinessProbe"]["httpGet"] == {"path": "/readiness", "port": "probes"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/liveness", "port": "probes"}
    statefulset = find(objects, "StatefulSet", "smg")
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    grace = int(flag(args, "shutdown-grace-period-secs"))
    assert statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace  # the drain ends first
    mesh = find(objects, "Service", "smg-mesh")
    assert mesh["spec"]["clusterIP"] == "None" and mesh["spec"]["publishNotReadyAddresses"] is True
    assert statefulset["spec"]["serviceName"] == "smg-mesh"
    assert flag(args, "seeds") == f"smg-mesh.$(POD_NAMESPACE).svc.cluster.local:{flag(args, 'mesh-port')}"
    client = find(objects, "Service", "smg")
    assert {p["name"]: p["targetPort"] for p in client["spec"]["ports"]} == {"http": "http", "metrics": "metrics"}
    pdb = find(objects, "PodDisruptionBudget", "smg")
    for selector in (mesh["spec"]["selector"], client["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()


def test_discovery_may_read_the_pods_it_watches(objects: list[dict[str, Any]]) -> None:
    role = find(objects, "Role", "smg-discovery")
    assert {"get", "list", "watch"} <= set(role["rules"][0]["verbs"]) and role["rules"][0]["resources"] == ["pods"]
    binding = find(objects, "RoleBinding", "smg-discovery")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "smg", "namespace": "smg"}]
    assert binding["roleRef"]["name"] == "smg-discovery"
