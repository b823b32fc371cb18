"""The deployment files: the compose file is valid and the chaos suite can start its topology."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.compose import load
from smg.cli import build_parser, gateway_config_from

ROOT = Path(__file__).resolve().parents[2]


def test_the_compose_file_follows_the_compose_specification() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_topology_translates_to_loopback_commands_the_cli_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="POSTGRES_DB_URL names a PostgreSQL service: a database URL is needed"):
        load(ROOT / "docker-compose.yml")
    database = "postgresql://postgres@127.0.0.1:5432/smg_chaos_x"
    gateways, workers = load(ROOT / "docker-compose.yml", database_url=database)
    assert all(g.env == {"POSTGRES_DB_URL": database} for g in gateways)  # compose's shared history, on this machine
    monkeypatch.setenv("POSTGRES_DB_URL", database)
    assert [g.name for g in gateways] == ["gateway-1", "gateway-2", "gateway-3"]
    assert [w.name for w in workers] == ["worker-1", "worker-2"]
    for service in [*gateways, *workers]:
        args = service.command[3:]  # after python -m smg
        assert not any(re.search(r"(gateway|worker)-\d", a) or a == "0.0.0.0" for a in args), args
        command, rest = ("sim-worker", args[1:]) if args[0] == "sim-worker" else ("launch", args)
        parsed = build_parser(command).parse_args(rest)
        assert parsed.host == service.address
    mesh = gateway_config_from(build_parser("launch").parse_args(gateways[0].command[3:]))
    assert mesh.ha_mesh and mesh.mesh_advertise_host == "127.0.0.20"
    assert mesh.mesh_seeds == ("127.0.0.21:39527", "127.0.0.22:39527")
    assert mesh.worker_urls == ("http://127.0.0.50:8000", "http://127.0.0.51:8000")
    assert mesh.history_backend == "postgres" and mesh.postgres_db_url == database


def test_the_image_runs_smg_as_a_non_root_user_with_a_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    instructions = [line.split()[0] for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    assert instructions[0] == "FROM" and "HEALTHCHECK" in instructions
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["smg"\]', text, re.MULTILINE)
