"""The gateway's listener: address, TLS, request and connection bounds, the shutdown grace."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from smg.settings import ConfigError, at_least, existing_file, header_names, non_negative, port_number, positive, setting

DEFAULT_REQUEST_ID_HEADERS = ("x-request-id", "x-correlation-id")

G_SERVER = "server"


def _not_empty(flag: str, value: str) -> None:
    if not value:
        raise ConfigError(f"{flag} must not be empty")


def available_cores() -> int:
    """The cores this process may run on (its affinity, as a container's cpuset limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def process_count(text: str) -> int:
    """`--processes`: a positive number, or `auto` for the cores available."""
    if text == "auto":
        return available_cores()
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--processes must be a positive number or 'auto', got '{text}'")
    return int(text)


def _processes(flag: str, value: str) -> None:
    process_count(value)


@dataclass(frozen=True)
class ServerSettings:
    GROUP: ClassVar[str] = G_SERVER

    host: str = setting("0.0.0.0", "--host", help="address to bind the gateway")
    port: int = setting(30000, "--port", check=port_number, help="port of the gateway")
    api_key: str | None = setting(
        None,
        "--api-key",
        check=_not_empty,
        help="require 'Authorization: Bearer KEY' on every route but the probes and /v1/models; also sent to workers",
    )
    tls_cert_path: str | None = setting(
        None,
        "--tls-cert-path",
        check=existing_file,
        help="serve HTTPS with this PEM certificate (needs --tls-key-path)",
    )
    tls_key_path: str | None = setting(None, "--tls-key-path", check=existing_file, help="PEM private key for --tls-cert-path")
    max_payload_size: int = setting(
        512 * 1024 * 1024,
        "--max-payload-size",
        check=at_least(1),
        help="largest request body in bytes; larger gets 413",
    )
    request_timeout_secs: float = setting(
        1800.0, "--request-timeout-secs", check=positive, help="longest a request may take end to end; then 504"
    )
    shutdown_grace_period_secs: float = setting(
        180.0,
        "--shutdown-grace-period-secs",
        check=non_negative(),
        help="on SIGTERM, how long in-flight requests may finish",
    )
    request_id_headers: tuple[str, ...] = setting(
        DEFAULT_REQUEST_ID_HEADERS,
        "--request-id-headers",
        metavar="HEADER",
        check=header_names,
        help="headers whose value is taken as the request id, first match wins",
    )
    header_read_timeout_secs: float = setting(
        30.0,
        "--header-read-timeout-secs",
        check=non_negative("0 disables it"),
        help="close a connection whose request head is not complete this long after it was accepted (or after the first byte of a later request's head), or whose request body stops arriving for this long; 0 disables",
    )
    idle_connection_timeout_secs: float = setting(
        90.0,
        "--idle-connection-timeout-secs",
        check=non_negative("0 disables it"),
        help="close a keep-alive connection with no request in flight for this long (an open stream counts as in flight), and one whose client reads nothing of a response for this long; keep it above the idle timeout of a balancer in front; 0 disables",
    )
    max_client_connections: int = setting(
        10000,
        "--max-client-connections",
        check=at_least(1),
        help="open client connections this process accepts at once; more wait in the listen backlog, with a warning in the log",
    )
    config_file: str | None = setting(
        None,
        "--config",
        metavar="FILE",
        check=existing_file,
        help="settings, workers, providers, aliases, fallbacks and tenant limits from one YAML file (keys as "
        "env:NAME, never inline); flags and SMG_* variables override it; reread on SIGHUP (workers, providers, "
        "aliases, fallbacks and tenant limits change without a restart)",
    )
    processes: str = setting(
        "1",
        "--processes",
        metavar="N|auto",
        check=_processes,
        help="gateway processes on this host (auto: one per available core): they share --port and "
        "--health-check-port (SO_REUSEPORT), each is a mesh member with its own mesh and metrics port (consecutive "
        "from --mesh-port and --prometheus-port), and a parent restarts any that dies",
    )
    process_index: int | None = setting(
        None,
        "--process-index",
        env="SMG_PROCESS_INDEX",
        hidden=True,
        help="set by the parent of --processes: which of its gateway processes this one is",
    )
    process_parent_fd: int | None = setting(
        None,
        "--process-parent-fd",
        env="SMG_PROCESS_PARENT_FD",
        hidden=True,
        help="set by the parent of --processes: a pipe that reaches end-of-file when the parent is gone",
    )
    health_check_port: int | None = setting(
        None,
        "--health-check-port",
        check=port_number,
        help="also serve /health, /liveness and /readiness on this port, on a listener of their own, so probes "
        "are answered while the main port is busy",
    )
    sse_keepalive_secs: float = setting(
        15.0,
        "--sse-keepalive-secs",
        check=non_negative("0 sends none"),
        help="after this many seconds of silence from the worker, an open stream carries a keep-alive frame (an "
        "SSE comment; a ping event on /v1/messages) so an idle-timeout proxy does not cut it; 0 sends none",
    )
