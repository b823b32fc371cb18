"""Gateway configuration: one frozen dataclass whose fields are the flags, validated once at start-up.

Every field is declared once, with `smg.settings.setting`, in the module of its
help group: `server`, `workers` (with health, breaker and retries), `policy`,
`admission`, `observability`, `mesh`, and history in `smg.storage.settings`. A
field carries its flag spellings (the reference's aliases included), help and
checks; `smg.cli` generates the command line from it. `GatewayConfig` composes
the groups and keeps the checks that involve several of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from smg.config.admission import G_ADMISSION, AdmissionSettings
from smg.config.auth import G_AUTH, AuthSettings
from smg.config.discovery import G_DISCOVERY, DiscoverySettings
from smg.config.mesh import G_MESH, MeshSettings
from smg.config.observability import G_LOGS, LOG_LEVELS, ObservabilitySettings
from smg.config.policy import G_POLICY, G_TOKENIZER, PolicySettings
from smg.config.reference import ReferenceRefusals
from smg.config.server import DEFAULT_REQUEST_ID_HEADERS, G_SERVER, ServerSettings, process_count
from smg.config.tracing import G_TRACING, TracingSettings
from smg.config.workers import (
    G_BREAKER,
    G_HEALTH,
    G_OVERLOAD,
    G_RETRIES,
    G_WORKERS,
    BreakerSettings,
    HealthSettings,
    OverloadSettings,
    RetrySettings,
    WorkerSettings,
    alias_table,
    fallback_table,
)
from smg.mesh.seeds import join_address
from smg.settings import ConfigError, check_fields
from smg.storage.settings import G_HISTORY, HistorySettings
from smg.workers.providers import PROVIDERS, check_urls, launch_keys

# the groups of `smg --help`, in this order
GROUPS = (
    G_SERVER,
    G_WORKERS,
    G_POLICY,
    G_TOKENIZER,
    G_HEALTH,
    G_BREAKER,
    G_RETRIES,
    G_OVERLOAD,
    G_ADMISSION,
    G_LOGS,
    G_TRACING,
    G_AUTH,
    G_MESH,
    G_DISCOVERY,
    G_HISTORY,
)


@dataclass(frozen=True)
class GatewayConfig(
    ReferenceRefusals,
    HistorySettings,
    MeshSettings,
    DiscoverySettings,
    AuthSettings,
    TracingSettings,
    ObservabilitySettings,
    AdmissionSettings,
    OverloadSettings,
    RetrySettings,
    BreakerSettings,
    HealthSettings,
    PolicySettings,
    WorkerSettings,
    ServerSettings,
):
    """Every gateway setting: one base per help group (dataclass fields come last base first)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Each field's own checks, then the ones that involve several fields or build objects."""
        if bool(self.tls_cert_path) != bool(self.tls_key_path):  # before the files: the pair is the first mistake
            raise ConfigError("--tls-cert-path and --tls-key-path must be given together")
        if bool(self.client_cert_path) != bool(self.client_key_path):
            raise ConfigError("--client-cert-path and --client-key-path must be given together")
        check_fields(self)
        self.worker_tls()  # a certificate or key that does not load: one line now, not a failed handshake later
        try:
            self.health_config()
            self.breaker_config()
            self.retry_config()
            self.policy_config()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.validate_discovery()
        if self.router_selector and not self.ha_mesh:
            raise ConfigError("--router-selector finds the gateway pods of a mesh: it needs --ha-mesh")
        if self.assignment_mode is not None and self.policy != "manual" and not self.routing_key_override:
            raise ConfigError("--assignment-mode places new routing keys: it needs --policy manual or --routing-key-override")
        self.validate_auth()
        self.validate_tracing()
        if self.backend in PROVIDERS:
            if any(url.startswith("grpc://") for url in self.worker_urls):
                raise ConfigError(f"--backend {self.backend}: a grpc:// worker is an engine, not a hosted provider")
            try:
                check_urls(self.backend, self.worker_urls)
                launch_keys(self.backend, self.worker_urls, os.environ)  # read again at start; never kept in the config
            except (LookupError, ValueError) as exc:
                raise ConfigError(str(exc)) from None
        if self.trust_tenant_header and self.tenant_api_keys and not self.api_key:
            raise ConfigError(
                "--trust-tenant-header has no effect when every request needs a --tenant-api-key key (a key's tenant "
                "is never overridden); give the proxy in front --api-key"
            )
        if self.tenant_header_name != "x-smg-tenant-id" and not self.trust_tenant_header:
            raise ConfigError("--tenant-header-name is read only with --trust-tenant-header")
        if self.worker_overload_protection and self.disable_worker_overload_protection:
            raise ConfigError("--worker-overload-protection and --disable-worker-overload-protection contradict each other")
        aliases = alias_table(self.model_alias)
        for model in fallback_table(self.model_fallback):
            if model in aliases:  # requests are routed (and their chains found) by the model an alias names
                raise ConfigError(
                    f"--model-fallback: '{model}' is a --model-alias; give the chain to the model it names, '{aliases[model]}'"
                )
        if self.tenant_rate_limit_config is not None and self.file_tenant_limits is not None:
            raise ConfigError("--tenant-rate-limit-config and the tenant_limits section of --config: give one of them")
        if self.tenant_rate_limit_enabled and self.tenant_limits() is None:
            raise ConfigError("--tenant-rate-limit-enabled needs --tenant-rate-limit-config (or tenant_limits in --config)")
        self.tenant_limits()
        self.validate_history()
        if process_count(self.processes) > 1 and self.process_index is None:
            if self.mesh_port == 0:
                raise ConfigError("--processes needs a fixed --mesh-port: the processes find each other on consecutive ports")
            if self.port == 0 or self.health_check_port == 0:
                raise ConfigError("--processes needs a fixed --port (and --health-check-port): the processes share it")

    @property
    def is_process(self) -> bool:
        """One of the gateway processes of `--processes N` (it shares the client port)."""
        return self.process_index is not None

    def for_process(self, index: int) -> GatewayConfig:
        """The settings of gateway process `index` of `--processes N`, from the parent's.

        Each process is a whole mesh member: its mesh port and metrics port are the parent's plus
        `index`, its siblings are its seeds (beside any --seeds), and its member name is its own.
        Without --ha-mesh the siblings' mesh stays on the loopback (encrypted with the key the
        parent made for this host, passed as $SMG_MESH_KEY); with it, they join the cluster too."""
        count = process_count(self.processes)
        base = self.mesh_port
        bound_to_one = self.ha_mesh and self.mesh_host not in ("0.0.0.0", "::", "")
        sibling_host = self.mesh_host if bound_to_one else "127.0.0.1"  # where the siblings' mesh ports answer
        siblings = tuple(join_address(sibling_host, base + j) for j in range(count) if j != index)
        changes: dict[str, Any] = {
            "processes": "1",
            "process_index": index,
            "ha_mesh": True,
            "mesh_port": base + index,
            "mesh_seeds": self.mesh_seeds + siblings,
        }
        if not self.ha_mesh:
            changes |= {"mesh_host": "127.0.0.1", "mesh_advertise_host": "127.0.0.1"}
        if self.mesh_server_name:
            changes["mesh_server_name"] = f"{self.mesh_server_name}-{index}"
        if self.prometheus_port:  # 0 (any free port) stays 0
            changes["prometheus_port"] = self.prometheus_port + index
        return replace(self, **changes)

    @property
    def metrics_host(self) -> str:
        """--prometheus-host, else --host.

        The reference binds the unspecified address of --host's family; we follow --host instead, so a
        gateway kept on loopback does not publish its metrics (worker URLs, tenant names) to the network.
        """
        return self.prometheus_host or self.host

    @property
    def load_monitoring(self) -> bool:
        """Poll workers' /v1/loads: always, as the reference; with --disable-load-monitoring only when a
        load-aware policy or overload protection needs the reports."""
        load_aware = self.policy in (
            "power_of_two",
            "least_load",
            "prefix_hash",
            "manual",
            "cache_aware",
            "bucket",
        )
        return not self.disable_load_monitoring or load_aware or self.overload_limits() is not None


__all__ = ["DEFAULT_REQUEST_ID_HEADERS", "GROUPS", "LOG_LEVELS", "ConfigError", "GatewayConfig"]
