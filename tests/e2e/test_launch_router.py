"""`python -m smg.launch_router`: the reference's way to start its gateway starts ours the same way."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60)


def test_help_shows_the_gateway_flags() -> None:
    result = run("-m", "smg.launch_router", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout == run("-m", "smg", "launch", "--help").stdout
    for flag in ("--worker-urls", "--policy", "--health-check-port", "--worker-startup-delay"):
        assert flag in result.stdout


def test_a_refused_flag_is_the_same_line_and_exit_code_as_smg() -> None:
    ours = run("-m", "smg.launch_router", "--policy", "fastest")
    theirs = run("-m", "smg", "--policy", "fastest")
    assert ours.returncode == theirs.returncode == 2
    assert ours.stderr == theirs.stderr and len(ours.stderr.splitlines()) == 1
    assert ours.stderr.startswith("smg: error:") and "--policy" in ours.stderr
    unknown = run("-m", "smg.launch_router", "--no-such-flag")
    assert (unknown.returncode, unknown.stderr) == (2, run("-m", "smg", "--no-such-flag").stderr)


def test_importing_it_starts_nothing() -> None:
    result = run("-c", "import smg.launch_router; print('imported')")
    assert (result.returncode, result.stdout) == (0, "imported\n"), result.stderr
