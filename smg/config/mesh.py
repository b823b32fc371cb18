"""The HA mesh: membership, encryption, and what the cluster shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from smg.mesh.keyring import parse_key
from smg.settings import ConfigError, at_least, existing_file, port_number, positive, setting

G_MESH = "HA mesh (several gateways as one)"


def _seeds(flag: str, seeds: tuple[str, ...]) -> None:
    for seed in seeds:
        host, sep, port = seed.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ConfigError(f"{flag}: '{seed}' is not HOST:PORT")


def _member_name(flag: str, name: str) -> None:
    if not name or "#" in name:
        raise ConfigError(f"{flag} must be non-empty and must not contain '#'")


def _mesh_keys(flag: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        try:
            parse_key(key)
        except ValueError as exc:
            raise ConfigError(f"{flag}: {exc}") from None


@dataclass(frozen=True)
class MeshSettings:
    GROUP: ClassVar[str] = G_MESH

    ha_mesh: bool = setting(False, "--ha-mesh", "--enable-mesh", help="join the other gateways in a SWIM mesh")
    mesh_seeds: tuple[str, ...] = setting(
        (),
        "--seeds",
        "--mesh-peer-urls",
        metavar="HOST:PORT,...",
        many="csv",
        check=_seeds,
        help="mesh addresses of other gateways; every one is tried, and retried until one answers; a DNS name "
        "stands for every address it resolves to, resolved again on each rejoin attempt (a headless Service "
        "finds the whole cluster) (--mesh-peer-urls: the same, space-separated)",
    )
    mesh_host: str = setting("0.0.0.0", "--mesh-host", help="address the mesh binds, UDP and TCP")
    mesh_port: int = setting(39527, "--mesh-port", check=port_number, help="mesh port, UDP and TCP; 0 picks one")
    mesh_advertise_host: str | None = setting(
        None,
        "--mesh-advertise-host",
        help="address peers reach this node at; needed with --mesh-host 0.0.0.0 unless the route to a seed tells it",
    )
    mesh_server_name: str | None = setting(
        None,
        "--mesh-server-name",
        check=_member_name,
        help="this node's member name (default: ADVERTISE_HOST:MESH_PORT, stable across restarts so the node rejoins as itself)",
    )
    mesh_cluster_label: str = setting(
        "", "--mesh-cluster-label", help="bound into every packet: clusters with different labels never merge"
    )
    mesh_keys: tuple[str, ...] = setting(
        (),
        "--mesh-key",
        metavar="BASE64",
        many="append",
        env="SMG_MESH_KEY",  # so a key need not sit in a command line or a compose file
        check=_mesh_keys,
        help="AES-GCM key (16, 24 or 32 bytes, base64; repeatable, the first encrypts); default: $SMG_MESH_KEY (comma-separated); none: unencrypted, with a warning",
    )
    mesh_keyring_file: str | None = setting(
        None,
        "--mesh-keyring-file",
        check=existing_file,
        help="file of base64 mesh keys, one per line, after any --mesh-key",
    )
    mesh_health_owners: int = setting(
        2,
        "--mesh-health-owners",
        check=at_least(1),
        help="gateways that health-check each worker (rendezvous-hashed over alive members); the rest follow their majority verdict",
    )
    mesh_prefix_budget: int = setting(
        100000,
        "--mesh-prefix-budget",
        check=at_least(1),
        help="cache_aware: shared prefix-summary entries kept per model",
    )
    mesh_prefix_ttl_secs: float = setting(
        180.0,
        "--mesh-prefix-ttl-secs",
        check=positive,
        help="cache_aware: a shared prefix record not seen again for this long is dropped",
    )
    mesh_fault_injection: bool = setting(
        False,
        "--mesh-fault-injection",
        help="testing only: enable POST /mesh/faults (drop mesh traffic to chosen members, random loss)",
    )

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
