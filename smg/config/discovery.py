"""Worker discovery: where workers come from besides --worker-urls and POST /workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from smg.settings import positive, setting

G_DISCOVERY = "worker discovery"


@dataclass(frozen=True)
class DiscoverySettings:
    GROUP: ClassVar[str] = G_DISCOVERY

    discovery_provider: str | None = setting(
        None,
        "--discovery-provider",
        choices=("file",),
        refused_choices={
            "kubernetes": "Kubernetes discovery is not supported by smg yet; list the workers in a manifest with "
            "--discovery-provider file --discovery-file PATH"
        },
        help="where workers are discovered: file (a JSON manifest, --discovery-file)",
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
        help="reread the --discovery-file manifest at least this often, changed or not",
    )
