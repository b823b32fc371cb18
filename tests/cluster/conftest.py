"""Fixtures shared by the cluster tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import Proc, start_sim


@pytest.fixture(scope="module")
def workers() -> Iterator[Proc]:
    """Two simulated workers for a module's cluster."""
    sim = start_sim(2)
    yield sim
    sim.stop()
