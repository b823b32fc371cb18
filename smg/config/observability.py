"""Logs and the metrics listener."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from smg.settings import ConfigError, port_number, setting

LOG_LEVELS = ("debug", "info", "warn", "error")

G_LOGS = "logs and metrics"


def _ascending(flag: str, bounds: tuple[float, ...]) -> None:
    if not all(0 < b < math.inf for b in bounds) or list(bounds) != sorted(set(bounds)):
        raise ConfigError(f"{flag} must be positive and increasing, got {' '.join(map(str, bounds))}")


@dataclass(frozen=True)
class ObservabilitySettings:
    GROUP: ClassVar[str] = G_LOGS

    log_level: str = setting("info", "--log-level", choices=LOG_LEVELS, help="how much to log")
    log_json: bool = setting(False, "--log-json", help="one JSON object per log line, with the request id")
    log_routing_decisions: bool = setting(
        False,
        "--log-routing-decisions",
        help="one log line per worker choice: the request id, the worker chosen, and what this gateway believed of "
        "each candidate (in flight from it, from its peers, the worker's own running and waiting counts); for "
        "studying routing against what the workers saw (bench/cluster_routing.py)",
    )
    prometheus_host: str | None = setting(
        None,
        "--prometheus-host",
        help="address of the /metrics server (default: --host, so a gateway on loopback keeps its metrics there)",
    )
    prometheus_port: int | None = setting(
        29000, "--prometheus-port", check=port_number, help="port of the /metrics server; 0 picks a free port"
    )
    log_dir: str | None = setting(
        None,
        "--log-dir",
        metavar="DIR",
        help="also write the log to rotating files in this directory (created when missing); without it the log "
        "goes to stderr only",
    )
    prometheus_duration_buckets: tuple[float, ...] = setting(
        (),
        "--prometheus-duration-buckets",
        metavar="SECONDS",
        check=_ascending,
        help="bucket bounds, in seconds, of the duration histograms (default: the built-in ones)",
    )
