"""Gateway configuration: one frozen dataclass, validated once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass

from smg.router.workers import normalize_url

POLICIES = ("random", "round_robin")
LOG_LEVELS = ("debug", "info", "warn", "error")
UPSTREAM_CLIENTS = ("pool", "httpx")
DEFAULT_REQUEST_ID_HEADERS = ("x-request-id", "x-correlation-id")


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line for the user."""


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "0.0.0.0"
    port: int = 30000
    worker_urls: tuple[str, ...] = ()
    policy: str = "round_robin"
    api_key: str | None = None
    tls_cert_path: str | None = None
    tls_key_path: str | None = None
    max_payload_size: int = 512 * 1024 * 1024
    request_timeout_secs: float = 1800.0
    connect_timeout_secs: float = 10.0
    log_level: str = "info"
    log_json: bool = False
    prometheus_host: str = "0.0.0.0"
    prometheus_port: int | None = 29000
    shutdown_grace_period_secs: float = 180.0
    request_id_headers: tuple[str, ...] = DEFAULT_REQUEST_ID_HEADERS
    enable_igw: bool = False
    worker_startup_timeout_secs: float = 1800.0
    worker_startup_check_interval: float = 1.0
    upstream_client: str = "pool"
    upstream_max_idle_per_worker: int = 256

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _port("--port", self.port)
        if self.prometheus_port is not None:
            _port("--prometheus-port", self.prometheus_port)
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
        for url in self.worker_urls:
            try:
                normalize_url(url)
            except ValueError as exc:
                raise ConfigError(f"--worker-urls: {exc}") from None


def _port(flag: str, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ConfigError(f"{flag} must be between 0 and 65535, got {value}")
