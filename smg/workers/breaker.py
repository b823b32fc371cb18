"""Per-worker circuit breaker (sans-IO: the caller passes `now`, a monotonic time).

closed --(failure_threshold consecutive failures)--> open
open --(timeout elapsed; next attempt)--> half_open
half_open --(success_threshold successes)--> closed
half_open --(any failure)--> open

Consecutive failures further apart than `window` do not chain: a worker that
fails once an hour never trips. In half-open at most `half_open_max_probes`
requests are in flight, so a recovering worker is not flooded.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# Values of the smg_worker_cb_state gauge, as the reference exports them.
STATE_GAUGE = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 10
    success_threshold: int = 3
    timeout: float = 60.0
    window: float = 120.0
    half_open_max_probes: int = 1
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.success_threshold < 1 or self.half_open_max_probes < 1:
            raise ValueError("circuit breaker thresholds must be at least 1")
        if self.timeout < 0 or self.window <= 0:
            raise ValueError("circuit breaker durations must be positive")


@dataclass(frozen=True)
class Transition:
    old: BreakerState
    new: BreakerState


class CircuitBreaker:
    __slots__ = ("_last_failure", "_opened_at", "_probes", "_successes", "config", "failures", "state")

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.state = BreakerState.CLOSED
        self.failures = 0  # consecutive, within the window
        self._successes = 0  # in half-open
        self._probes = 0  # half-open attempts in flight
        self._opened_at = 0.0
        self._last_failure = 0.0

    def is_available(self, now: float) -> bool:
        """Whether a policy may pick this worker now."""
        state = self.state
        if state is BreakerState.CLOSED or not self.config.enabled:
            return True
        if state is BreakerState.OPEN:
            return now >= self._opened_at + self.config.timeout
        return self._probes < self.config.half_open_max_probes

    def begin(self, now: float) -> tuple[bool, Transition | None]:
        """An attempt starts; returns (is a half-open probe, transition)."""
        transition = None
        if self.state is BreakerState.OPEN and now >= self._opened_at + self.config.timeout:
            transition = self._move(BreakerState.HALF_OPEN)
            self._successes = 0
            self._probes = 0
        if self.state is BreakerState.HALF_OPEN:
            self._probes += 1
            return True, transition
        return False, transition

    def record_success(self, now: float, probe: bool = False) -> Transition | None:
        if probe:
            self._probes = max(0, self._probes - 1)
        if self.state is BreakerState.HALF_OPEN:
            if not probe:
                return None  # began before the breaker opened: says nothing about recovery
            self._successes += 1
            if self._successes >= self.config.success_threshold:
                self.failures = 0
                return self._move(BreakerState.CLOSED)
            return None
        if self.state is BreakerState.CLOSED:
            self.failures = 0
        return None

    def abandon(self, probe: bool) -> None:
        """An attempt ended with no verdict on the worker (the client left): free its probe slot,
        or a half-open breaker whose probe was abandoned would hide the worker for good."""
        if probe:
            self._probes = max(0, self._probes - 1)

    def record_failure(self, now: float, probe: bool = False) -> Transition | None:
        if probe:
            self._probes = max(0, self._probes - 1)
        if not self.config.enabled:
            return None
        if self.state is BreakerState.HALF_OPEN:
            if not probe:
                return None
            self._opened_at = now
            return self._move(BreakerState.OPEN)
        if self.state is BreakerState.OPEN:
            return None
        if self.failures and now - self._last_failure > self.config.window:
            self.failures = 0
        self.failures += 1
        self._last_failure = now
        if self.failures >= self.config.failure_threshold:
            self._opened_at = now
            return self._move(BreakerState.OPEN)
        return None

    def _move(self, new: BreakerState) -> Transition:
        old, self.state = self.state, new
        return Transition(old, new)
