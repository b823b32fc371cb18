"""Worker health state machine (sans-IO): probe results in, transitions out.

pending --(success_threshold successes)--> ready
ready --(failure_threshold consecutive failures)--> not_ready
not_ready --(success_threshold consecutive successes)--> ready
pending | not_ready --(failed_threshold consecutive failures)--> failed
failed --(success_threshold consecutive successes)--> ready

Only `ready` workers receive traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class HealthState(StrEnum):
    PENDING = "pending"
    READY = "ready"
    NOT_READY = "not_ready"
    FAILED = "failed"


@dataclass(frozen=True)
class HealthConfig:
    success_threshold: int = 2
    failure_threshold: int = 3
    failed_threshold: int = 30

    def __post_init__(self) -> None:
        if min(self.success_threshold, self.failure_threshold) < 1:
            raise ValueError("health thresholds must be at least 1")
        if self.failed_threshold < self.failure_threshold:
            raise ValueError("the failed threshold must be at least the failure threshold")


@dataclass(frozen=True)
class HealthTransition:
    old: HealthState
    new: HealthState


class HealthMachine:
    __slots__ = ("config", "failures", "state", "successes")

    def __init__(self, config: HealthConfig, state: HealthState = HealthState.PENDING) -> None:
        self.config = config
        self.state = state
        self.successes = 0
        self.failures = 0

    def observe(self, ok: bool) -> HealthTransition | None:
        """Feed one probe result; returns the transition it caused, if any."""
        cfg = self.config
        if ok:
            self.failures = 0
            self.successes += 1
            if self.state is not HealthState.READY and self.successes >= cfg.success_threshold:
                return self._move(HealthState.READY)
            return None
        self.successes = 0
        self.failures += 1
        if self.state is HealthState.READY and self.failures >= cfg.failure_threshold:
            return self._move(HealthState.NOT_READY)
        if self.state in (HealthState.PENDING, HealthState.NOT_READY) and self.failures >= cfg.failed_threshold:
            return self._move(HealthState.FAILED)
        return None

    def observe_startup(self, ok: bool) -> HealthTransition | None:
        """A probe while the worker starts: failures only reset the run of successes.

        Engines take minutes to load a model; the start-up deadline, not a
        count of failures, decides when a starting worker has failed.
        """
        if ok:
            return self.observe(True)
        self.successes = 0
        return None

    def reset(self, state: HealthState = HealthState.PENDING) -> None:
        self.state = state
        self.successes = self.failures = 0

    def _move(self, new: HealthState) -> HealthTransition:
        old, self.state = self.state, new
        return HealthTransition(old, new)
