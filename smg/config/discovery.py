"""Worker discovery: where workers come from besides --worker-urls and POST /workers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import urlsplit

from smg.discovery.pods import parse_selector
from smg.settings import ConfigError, port_number, positive, setting

G_DISCOVERY = "worker discovery"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"  # where Kubernetes mounts a pod's credentials
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def label_selector(flag: str, pairs: tuple[str, ...]) -> None:
    """`key=value` pairs (Kubernetes equality-based selector terms, all of which must hold)."""
    try:
        parse_selector(pairs)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def _namespace(flag: str, value: str) -> None:
    if not _NAMESPACE.match(value):
        raise ConfigError(f"{flag}: '{value}' is not a Kubernetes namespace name (lowercase letters, digits and '-')")


def _api_url(flag: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"{flag}: '{value}' is not an http:// or https:// URL")


def _model_id_from(flag: str, value: str | None) -> None:
    if value is None or value == "namespace":
        return
    kind, sep, key = value.partition(":")
    if kind not in ("label", "annotation") or not sep or not key:
        raise ConfigError(f"{flag} must be namespace, label:<key> or annotation:<key>, got '{value}'")


@dataclass(frozen=True)
class DiscoverySettings:
    GROUP: ClassVar[str] = G_DISCOVERY

    discovery_provider: str | None = setting(
        None,
        "--discovery-provider",
        choices=("kubernetes", "file"),
        help="where workers are discovered: kubernetes (pods matching --selector, through the API server) or "
        "file (a JSON manifest, --discovery-file)",
    )
    service_discovery: bool = setting(False, "--service-discovery", help="the legacy spelling of --discovery-provider kubernetes")
    selector: tuple[str, ...] = setting(
        (),
        "--selector",
        metavar="KEY=VALUE",
        many="+",
        check=label_selector,
        help="Kubernetes discovery: the labels a worker pod carries",
    )
    service_discovery_port: int = setting(
        80, "--service-discovery-port", check=port_number, help="Kubernetes discovery: the workers' port on each pod"
    )
    service_discovery_namespace: str | None = setting(
        None,
        "--service-discovery-namespace",
        check=_namespace,
        help="Kubernetes discovery: the namespace watched (default: every namespace, which needs cluster-wide "
        "permission to list pods)",
    )
    router_selector: tuple[str, ...] = setting(
        (),
        "--router-selector",
        metavar="KEY=VALUE",
        many="+",
        check=label_selector,
        help="with --ha-mesh and Kubernetes discovery: the labels of the gateway pods, whose addresses become mesh seeds",
    )
    model_id_from: str | None = setting(
        None,
        "--model-id-from",
        check=_model_id_from,
        help="Kubernetes discovery: each worker's model id from its pod: namespace, label:<key> or "
        "annotation:<key>; the model the worker reports becomes an alias of it",
    )
    discovery_file: str | None = setting(
        None,
        "--discovery-file",
        metavar="PATH",
        help='the JSON manifest of --discovery-provider file: a list of worker URLs (or {"url": ..., "labels": '
        '..., "priority": ..., "cost": ..., "api_key": ...} objects), or {"workers": [...]}; it may appear after '
        "the start, and is reread as soon as it changes",
    )
    discovery_check_interval_secs: float = setting(
        30.0,
        "--discovery-check-interval-secs",
        check=positive,
        help="reread the --discovery-file manifest at least this often, changed or not; with Kubernetes "
        "discovery, list the pods again this often (the watch keeps up in between)",
    )
    kubernetes_api_url: str | None = setting(
        None,
        "--kubernetes-api-url",
        check=_api_url,
        hidden=True,
        help="Kubernetes discovery: the API server (default: the in-cluster one, from $KUBERNETES_SERVICE_HOST and "
        "$KUBERNETES_SERVICE_PORT, as Kubernetes clients find it); for tests and runs outside a cluster",
    )
    kubernetes_service_account_dir: str = setting(
        SERVICE_ACCOUNT_DIR,
        "--kubernetes-service-account-dir",
        metavar="DIR",
        hidden=True,
        help="Kubernetes discovery: the directory holding the service account's token (reread as it rotates) and "
        "ca.crt; for tests and runs outside a cluster",
    )

    @property
    def kubernetes_discovery(self) -> bool:
        """Workers come from pods (--discovery-provider kubernetes, or its legacy spelling)."""
        return self.service_discovery or self.discovery_provider == "kubernetes"

    def validate_discovery(self) -> None:
        """The checks that involve several discovery settings."""
        if self.service_discovery and self.discovery_provider is not None:
            raise ConfigError("--service-discovery is the legacy spelling of --discovery-provider kubernetes: give one, not both")
        if (self.discovery_provider == "file") != bool(self.discovery_file):
            raise ConfigError("--discovery-provider file and --discovery-file go together")
        if not self.kubernetes_discovery:
            for flag, given in (
                ("--selector", bool(self.selector)),
                ("--service-discovery-port", self.service_discovery_port != 80),
                ("--service-discovery-namespace", self.service_discovery_namespace is not None),
                ("--router-selector", bool(self.router_selector)),
                ("--model-id-from", self.model_id_from is not None),
                ("--kubernetes-api-url", self.kubernetes_api_url is not None),
                ("--kubernetes-service-account-dir", self.kubernetes_service_account_dir != SERVICE_ACCOUNT_DIR),
            ):
                if given:
                    raise ConfigError(f"{flag} is for Kubernetes discovery (--discovery-provider kubernetes)")
        if self.discovery_check_interval_secs != 30.0 and self.discovery_provider is None and not self.service_discovery:
            raise ConfigError("--discovery-check-interval-secs is for --discovery-provider file or kubernetes")
