"""Gateway configuration: one frozen dataclass, validated once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass

from smg.limits.tenants import TenantLimits
from smg.mesh.keyring import parse_key
from smg.routing.policies import POLICIES, PolicyConfig
from smg.routing.tokenizer import load_tokenizer
from smg.settings import ConfigError, check_port
from smg.storage.settings import HistorySettings
from smg.upstream import UPSTREAM_CLIENTS
from smg.workers.breaker import BreakerConfig
from smg.workers.health import HealthConfig
from smg.workers.registry import normalize_url
from smg.workers.retry import RetryConfig

LOG_LEVELS = ("debug", "info", "warn", "error")
DEFAULT_REQUEST_ID_HEADERS = ("x-request-id", "x-correlation-id")


@dataclass(frozen=True)
class GatewayConfig(HistorySettings):
    host: str = "0.0.0.0"
    port: int = 30000
    worker_urls: tuple[str, ...] = ()
    policy: str = "cache_aware"
    api_key: str | None = None
    tls_cert_path: str | None = None
    tls_key_path: str | None = None
    max_payload_size: int = 512 * 1024 * 1024
    request_timeout_secs: float = 1800.0
    connect_timeout_secs: float = 10.0
    log_level: str = "info"
    log_json: bool = False
    prometheus_host: str | None = None  # None: --host
    prometheus_port: int | None = 29000
    shutdown_grace_period_secs: float = 180.0
    request_id_headers: tuple[str, ...] = DEFAULT_REQUEST_ID_HEADERS
    enable_igw: bool = False
    worker_startup_timeout_secs: float = 1800.0
    worker_startup_check_interval: float = 1.0
    upstream_client: str = "pool"
    upstream_max_idle_per_worker: int = 256
    # policies
    cache_threshold: float = 0.3
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5
    max_tree_size: int = 64 * 1024 * 1024
    eviction_interval_secs: float = 60.0
    tokenizer_path: str | None = None
    prefix_token_count: int = 256
    prefix_hash_load_factor: float = 1.25
    max_idle_secs: float = 14400.0
    bucket_adjust_interval_secs: float = 60.0
    load_monitor_interval: float = 10.0
    disable_load_monitoring: bool = False
    # worker health (probes of GET <url><endpoint>)
    health_check_interval_secs: float = 10.0
    health_check_timeout_secs: float = 5.0
    health_check_endpoint: str = "/health"
    health_success_threshold: int = 2
    health_failure_threshold: int = 3
    health_failed_threshold: int = 30
    disable_health_check: bool = False
    remove_unhealthy_workers: bool = False
    # circuit breaker
    cb_failure_threshold: int = 10
    cb_success_threshold: int = 3
    cb_timeout_duration_secs: float = 60.0
    cb_window_duration_secs: float = 120.0
    disable_circuit_breaker: bool = False
    # retries and per-attempt timeouts
    retry_max_retries: int = 5
    retry_initial_backoff_ms: float = 50.0
    retry_max_backoff_ms: float = 30000.0
    retry_backoff_multiplier: float = 1.5
    retry_jitter_factor: float = 0.2
    disable_retries: bool = False
    worker_first_byte_timeout_secs: float = 120.0
    stream_stall_timeout_secs: float = 300.0
    max_upstream_response_size: int = 256 * 1024 * 1024
    max_sse_event_size: int = 16 * 1024 * 1024
    # client connections
    header_read_timeout_secs: float = 30.0
    idle_connection_timeout_secs: float = 90.0
    max_client_connections: int = 10_000
    # admission
    max_concurrent_requests: int = -1
    queue_size: int = 100
    queue_timeout_secs: float = 60.0
    rate_limit_tokens_per_second: float = 0.0
    # auth and browsers
    tenant_api_keys: tuple[str, ...] = ()
    cors_allowed_origins: tuple[str, ...] = ()
    tenant_rate_limit_config: str | None = None
    # HA mesh
    ha_mesh: bool = False
    mesh_seeds: tuple[str, ...] = ()
    mesh_host: str = "0.0.0.0"
    mesh_port: int = 39527
    mesh_advertise_host: str | None = None
    mesh_server_name: str | None = None
    mesh_cluster_label: str = ""
    mesh_keys: tuple[str, ...] = ()
    mesh_keyring_file: str | None = None
    mesh_health_owners: int = 2
    mesh_prefix_budget: int = 100_000
    mesh_prefix_ttl_secs: float = 180.0
    mesh_fault_injection: bool = False
    max_background_responses: int = 1024

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_port("--port", self.port)
        if self.prometheus_port is not None:
            check_port("--prometheus-port", self.prometheus_port)
        if self.policy not in POLICIES:
            raise ConfigError(f"--policy must be one of {', '.join(POLICIES)}, got '{self.policy}'")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
        if self.upstream_client not in UPSTREAM_CLIENTS:
            raise ConfigError(f"--upstream-client must be one of {', '.join(UPSTREAM_CLIENTS)}")
        if self.max_payload_size < 1:
            raise ConfigError("--max-payload-size must be at least 1 byte")
        for flag, value in (
            ("--request-timeout-secs", self.request_timeout_secs),
            ("--connect-timeout-secs", self.connect_timeout_secs),
            ("--worker-startup-timeout-secs", self.worker_startup_timeout_secs),
            ("--worker-startup-check-interval", self.worker_startup_check_interval),
        ):
            if not value > 0:
                raise ConfigError(f"{flag} must be positive, got {value}")
        if self.shutdown_grace_period_secs < 0:
            raise ConfigError("--shutdown-grace-period-secs must not be negative")
        for flag, size in (
            ("--max-upstream-response-size", self.max_upstream_response_size),
            ("--max-sse-event-size", self.max_sse_event_size),
            ("--max-client-connections", self.max_client_connections),
        ):
            if size < 1:
                raise ConfigError(f"{flag} must be at least 1, got {size}")
        for flag, seconds in (
            ("--header-read-timeout-secs", self.header_read_timeout_secs),
            ("--idle-connection-timeout-secs", self.idle_connection_timeout_secs),
        ):
            if seconds < 0:
                raise ConfigError(f"{flag} must not be negative (0 disables it), got {seconds}")
        if self.upstream_max_idle_per_worker < 0:
            raise ConfigError("--upstream-max-idle-per-worker must not be negative")
        if bool(self.tls_cert_path) != bool(self.tls_key_path):
            raise ConfigError("--tls-cert-path and --tls-key-path must be given together")
        for flag, path in (("--tls-cert-path", self.tls_cert_path), ("--tls-key-path", self.tls_key_path)):
            if path and not os.path.isfile(path):
                raise ConfigError(f"{flag}: no such file: {path}")
        if self.api_key is not None and not self.api_key:
            raise ConfigError("--api-key must not be empty")
        for name in self.request_id_headers:
            if not name or not name.isascii() or " " in name:
                raise ConfigError(f"--request-id-headers: invalid header name '{name}'")
        for flag, value in (
            ("--health-check-interval-secs", self.health_check_interval_secs),
            ("--health-check-timeout-secs", self.health_check_timeout_secs),
            ("--worker-first-byte-timeout-secs", self.worker_first_byte_timeout_secs),
            ("--stream-stall-timeout-secs", self.stream_stall_timeout_secs),
            ("--queue-timeout-secs", self.queue_timeout_secs),
            ("--load-monitor-interval", self.load_monitor_interval),
            ("--eviction-interval-secs", self.eviction_interval_secs),
        ):
            if not value > 0:
                raise ConfigError(f"{flag} must be positive, got {value}")
        if not self.health_check_endpoint.startswith("/"):
            raise ConfigError("--health-check-endpoint must start with '/'")
        if self.max_concurrent_requests == 0 or self.max_concurrent_requests < -1:
            raise ConfigError("--max-concurrent-requests must be positive, or -1 for no limit")
        if self.queue_size < 0:
            raise ConfigError("--queue-size must not be negative")
        if self.rate_limit_tokens_per_second < 0:
            raise ConfigError("--rate-limit-tokens-per-second must not be negative")
        for entry in self.tenant_api_keys:
            tenant, sep, key = entry.partition(":")
            if not sep or not tenant or not key:
                raise ConfigError(f"--tenant-api-key must look like TENANT:KEY, got '{entry}'")
        for origin in self.cors_allowed_origins:
            if origin != "*" and "://" not in origin:
                raise ConfigError(f"--cors-allowed-origins: '{origin}' is not an origin like https://example.com or '*'")
        try:
            self.health_config()
            self.breaker_config()
            self.retry_config()
            self.policy_config()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for url in self.worker_urls:
            try:
                normalize_url(url)
            except ValueError as exc:
                raise ConfigError(f"--worker-urls: {exc}") from None
        self.tenant_limits()
        self._validate_mesh()
        self.validate_history()
        if self.max_background_responses < 0:
            raise ConfigError("--max-background-responses must not be negative (0 runs background requests in the foreground)")

    def _validate_mesh(self) -> None:
        check_port("--mesh-port", self.mesh_port)
        if self.mesh_health_owners < 1:
            raise ConfigError("--mesh-health-owners must be at least 1")
        if self.mesh_prefix_budget < 1 or not self.mesh_prefix_ttl_secs > 0:
            raise ConfigError("--mesh-prefix-budget and --mesh-prefix-ttl-secs must be positive")
        for seed in self.mesh_seeds:
            host, sep, port = seed.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
                raise ConfigError(f"--seeds: '{seed}' is not HOST:PORT")
        if self.mesh_server_name is not None and (not self.mesh_server_name or "#" in self.mesh_server_name):
            raise ConfigError("--mesh-server-name must be non-empty and must not contain '#'")
        if self.mesh_keyring_file and not os.path.isfile(self.mesh_keyring_file):
            raise ConfigError(f"--mesh-keyring-file: no such file: {self.mesh_keyring_file}")
        for key in self.mesh_keys:
            try:
                parse_key(key)
            except ValueError as exc:
                raise ConfigError(f"--mesh-key: {exc}") from None

    @property
    def metrics_host(self) -> str:
        """--prometheus-host, else --host.

        The reference binds the unspecified address of --host's family; we follow --host instead, so a
        gateway kept on loopback does not publish its metrics (worker URLs, tenant names) to the network.
        """
        return self.prometheus_host or self.host

    def tenant_limits(self) -> TenantLimits | None:
        if self.tenant_rate_limit_config is None:
            return None
        try:
            return TenantLimits.load(self.tenant_rate_limit_config)
        except OSError as exc:
            raise ConfigError(
                f"--tenant-rate-limit-config: cannot read {self.tenant_rate_limit_config}: {exc.strerror}"
            ) from None
        except ValueError as exc:
            raise ConfigError(f"--tenant-rate-limit-config: {exc}") from None

    def mesh_key_list(self) -> list[bytes]:
        """The mesh keys, primary first: --mesh-key flags, then the keyring file (one base64 key per line)."""
        texts = list(self.mesh_keys)
        if self.mesh_keyring_file:
            with open(self.mesh_keyring_file, encoding="utf-8") as f:
                texts += [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        try:
            return [parse_key(text) for text in texts]
        except ValueError as exc:
            raise ConfigError(f"--mesh-keyring-file: {exc}") from None

    def health_config(self) -> HealthConfig:
        return HealthConfig(
            success_threshold=self.health_success_threshold,
            failure_threshold=self.health_failure_threshold,
            failed_threshold=max(self.health_failed_threshold, self.health_failure_threshold),
        )

    def breaker_config(self) -> BreakerConfig:
        return BreakerConfig(
            failure_threshold=self.cb_failure_threshold,
            success_threshold=self.cb_success_threshold,
            timeout=self.cb_timeout_duration_secs,
            window=self.cb_window_duration_secs,
            enabled=not self.disable_circuit_breaker,
        )

    def retry_config(self) -> RetryConfig:
        return RetryConfig(
            max_attempts=1 if self.disable_retries else self.retry_max_retries,
            initial_backoff=self.retry_initial_backoff_ms / 1000.0,
            max_backoff=self.retry_max_backoff_ms / 1000.0,
            multiplier=self.retry_backoff_multiplier,
            jitter=self.retry_jitter_factor,
        )

    def policy_config(self) -> PolicyConfig:
        return PolicyConfig(
            cache_threshold=self.cache_threshold,
            balance_abs_threshold=self.balance_abs_threshold,
            balance_rel_threshold=self.balance_rel_threshold,
            max_tree_size=self.max_tree_size,
            tokenize=load_tokenizer(self.tokenizer_path) if self.tokenizer_path else None,
            prefix_token_count=self.prefix_token_count,
            prefix_hash_load_factor=self.prefix_hash_load_factor,
            max_idle_secs=self.max_idle_secs,
            bucket_adjust_interval_secs=self.bucket_adjust_interval_secs,
        )

    @property
    def load_monitoring(self) -> bool:
        """Poll workers' /v1/loads for the policies that weigh load."""
        return not self.disable_load_monitoring and self.policy in (
            "power_of_two",
            "least_load",
            "prefix_hash",
            "manual",
            "cache_aware",
            "bucket",
        )

    def tenant_keys(self) -> dict[str, str]:
        """API key -> tenant id."""
        return {key: tenant for tenant, _, key in (entry.partition(":") for entry in self.tenant_api_keys)}
