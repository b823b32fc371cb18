"""Logs and the metrics listener."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from smg.settings import port_number, setting

LOG_LEVELS = ("debug", "info", "warn", "error")

G_LOGS = "logs and metrics"


@dataclass(frozen=True)
class ObservabilitySettings:
    GROUP: ClassVar[str] = G_LOGS

    log_level: str = setting("info", "--log-level", choices=LOG_LEVELS, help="how much to log")
    log_json: bool = setting(False, "--log-json", help="one JSON object per log line, with the request id")
    prometheus_host: str | None = setting(
        None,
        "--prometheus-host",
        help="address of the /metrics server (default: --host, so a gateway on loopback keeps its metrics there)",
    )
    prometheus_port: int | None = setting(
        29000, "--prometheus-port", check=port_number, help="port of the /metrics server; 0 picks a free port"
    )
