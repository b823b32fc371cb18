"""The docker-compose topology, started without Docker: what users deploy is what the suite tests.

Services whose command starts with `sim-worker` are workers; services with
`--ha-mesh` are gateways; others (Prometheus) are left out. Each kept
service gets an address (gateways <base>.20+, workers <base>.50+, in file
order; base 127.0.0 on loopback, the harness's subnet in namespaces); its command runs as `python -m smg ...` with every service
name in it replaced by that service's address and `0.0.0.0` by its own.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Service:
    name: str
    address: str
    command: list[str]


def load(path: Path, base: str = "127.0.0") -> tuple[list[Service], list[Service]]:
    """(gateways, workers) from a compose file, commands translated to addresses `<base>.N`."""
    spec = yaml.safe_load(path.read_text())
    services = spec.get("services", {}) if isinstance(spec, dict) else {}
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
    if not gateways or not workers:
        raise ValueError(f"{path}: no gateway (--ha-mesh) or no sim-worker service")
    names = re.compile(r"(?<![\w.-])(" + "|".join(re.escape(n) for n in sorted(addresses, key=len, reverse=True)) + r")(?![\w-])")

    def translate(name: str, command: list[str]) -> Service:
        own = addresses[name]
        args = [own if arg == "0.0.0.0" else names.sub(lambda m: addresses[m.group(1)], arg) for arg in command]
        return Service(name, own, [sys.executable, "-m", "smg", *args])

    return [translate(n, c) for n, c in gateways], [translate(n, c) for n, c in workers]
