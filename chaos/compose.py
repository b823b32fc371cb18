"""The docker-compose topology, started without Docker: what users deploy is what the suite tests.

Services whose command starts with `sim-worker` are workers; services with
`--ha-mesh` are gateways; others (Prometheus) are left out. Each kept
service gets an address (gateways <base>.20+, workers <base>.50+, in file
order; base 127.0.0 on loopback, the harness's subnet in namespaces); its command runs as `python -m smg ...` with every service
name in it replaced by that service's address and `0.0.0.0` by its own.

A gateway's `environment` goes with it. A PostgreSQL service (its image is `postgres`) is not
started: an environment value that is a URL of it is replaced by `database_url`, a database the
harness made on the machine's own server, so the gateways share their history as in compose.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Service:
    name: str
    address: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)


def databases(path: Path) -> list[str]:
    """The PostgreSQL services of a compose file (those the harness stands in for)."""
    spec = yaml.safe_load(path.read_text())
    services = spec.get("services", {}) if isinstance(spec, dict) else {}
    return [name for name, s in services.items() if isinstance(s, dict) and str(s.get("image", "")).startswith("postgres")]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) for item in env if "=" in item)
    return {str(k): str(v) for k, v in env.items()}


def load(path: Path, base: str = "127.0.0", database_url: str | None = None) -> tuple[list[Service], list[Service]]:
    """(gateways, workers) from a compose file, commands translated to addresses `<base>.N`;
    URLs of its PostgreSQL services become `database_url` (ValueError when one is used without it)."""
    spec = yaml.safe_load(path.read_text())
    services = spec.get("services", {}) if isinstance(spec, dict) else {}
    pg = re.compile(r"^postgres(?:ql)?://[^/]*@?(" + "|".join(map(re.escape, databases(path)) or ["(?!)"]) + r")(?::\d+)?/")
    environments: dict[str, dict[str, str]] = {}
    gateways, workers, addresses = [], [], {}
    for name, service in services.items():
        command = service.get("command") if isinstance(service, dict) else None
        if not isinstance(command, list):
            continue
        if command[:1] == ["sim-worker"]:
            addresses[name] = f"{base}.{50 + len(workers)}"
            workers.append((name, command))
        elif "--ha-mesh" in command:
            addresses[name] = f"{base}.{20 + len(gateways)}"
            gateways.append((name, command))
            environments[name] = _environment(service)
    if not gateways or not workers:
        raise ValueError(f"{path}: no gateway (--ha-mesh) or no sim-worker service")
    names = re.compile(r"(?<![\w.-])(" + "|".join(re.escape(n) for n in sorted(addresses, key=len, reverse=True)) + r")(?![\w-])")

    def environment(name: str) -> dict[str, str]:
        env = {}
        for key, value in environments.get(name, {}).items():
            if pg.match(value):
                if database_url is None:
                    raise ValueError(f"{path}: {name}'s {key} names a PostgreSQL service: a database URL is needed")
                value = database_url
            env[key] = value
        return env

    def translate(name: str, command: list[str]) -> Service:
        own = addresses[name]
        args = [own if arg == "0.0.0.0" else names.sub(lambda m: addresses[m.group(1)], arg) for arg in command]
        return Service(name, own, [sys.executable, "-m", "smg", *args], environment(name))

    return [translate(n, c) for n, c in gateways], [translate(n, c) for n, c in workers]
