from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.helpers import SPAWNED, Proc, start_gateway, start_sim

# Deterministic property tests (same examples every run) without per-example
# deadlines, which a loaded CI machine would turn into flakes.
settings.register_profile("smg", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("smg")

# The default SQLite history file lives under $XDG_DATA_HOME and is locked by one gateway at a
# time: tests get their own, so a gateway running on the machine cannot fail them (nor they it).
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="smg-test-data-")


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    """Whatever a failed fixture or test left running is killed at the end of the session."""
    yield
    for proc in SPAWNED:
        if proc.popen.poll() is None:
            proc.stop()


@pytest.fixture(scope="module")
def worker() -> Iterator[Proc]:
    """One simulated worker with its default timing; `/sim/requests` shows what gateways sent."""
    proc = start_sim(1)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def sim() -> Iterator[Proc]:
    """Two simulated workers with no artificial delay."""
    proc = start_sim(2, "--ttft-ms", "0", "--tpot-ms", "0")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def gateway(sim: Proc) -> Iterator[Proc]:
    proc = start_gateway(sim.urls, "--policy", "round_robin", "--max-payload-size", "100000")
    yield proc
    proc.stop()
