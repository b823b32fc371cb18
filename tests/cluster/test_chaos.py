"""The chaos suite's CI subset: the docker-compose topology, run without Docker, through a
gateway kill, a partition (on real packets where namespaces are available) and a rolling
restart that no client may notice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chaos import netns

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_the_ci_scenarios_keep_every_invariant(tmp_path: Path) -> None:
    report = tmp_path / "chaos.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chaos",
            "run",
            "--ci",
            "--compose",
            "docker-compose.yml",
            "--duration",
            "15",
            "--json",
            str(report),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report.read_text())
    # namespaces and nftables wherever this machine allows them
    assert report["args"]["net"] == ("netns" if netns.unavailable() is None else "loopback")
    scenarios = report["scenarios"]
    assert {s["scenario"] for s in scenarios} == {"gateway-kill-restart", "minority-partition", "rolling-restart"}
    for s in scenarios:
        assert s["verdict"] == "PASS" and s["other_failures"] == 0 and s["ok"] > 0, s
        assert s["converge_secs"] is not None and s["digests_agree_secs"] is not None
        assert s["history_shared"] is True, s  # compose's PostgreSQL: a stored response continued on every gateway
    rolling = next(s for s in scenarios if s["scenario"] == "rolling-restart")
    assert rolling["ok"] == rolling["sent"] and rolling["max_deaths_per_pair"] == 0, rolling  # left, never dead
