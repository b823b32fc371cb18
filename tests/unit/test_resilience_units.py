"""Circuit breaker, health machine and backoff as pure classes, on a hand-driven clock."""

from __future__ import annotations

import pytest

from smg.workers.breaker import BreakerConfig, BreakerState, CircuitBreaker, Transition
from smg.workers.health import HealthConfig, HealthMachine, HealthState
from smg.workers.retry import RetryConfig, is_retryable

OPEN, CLOSED, HALF = BreakerState.OPEN, BreakerState.CLOSED, BreakerState.HALF_OPEN


def test_breaker_opens_after_consecutive_failures_and_success_resets() -> None:
    cb = CircuitBreaker(BreakerConfig(failure_threshold=3, timeout=10))
    assert cb.record_failure(0) is None and cb.record_failure(1) is None
    cb.record_success(2)  # resets the run
    assert cb.record_failure(3) is None and cb.record_failure(4) is None
    assert cb.record_failure(5) == Transition(CLOSED, OPEN)
    assert not cb.is_available(5) and not cb.is_available(14.9)
    assert cb.is_available(15)


def test_breaker_failures_outside_the_window_do_not_chain() -> None:
    cb = CircuitBreaker(BreakerConfig(failure_threshold=2, window=60))
    cb.record_failure(0)
    assert cb.record_failure(61) is None  # the first one is too old to count
    assert cb.record_failure(62) == Transition(CLOSED, OPEN)


def test_breaker_half_open_probes_close_or_reopen() -> None:
    cb = CircuitBreaker(BreakerConfig(failure_threshold=1, success_threshold=2, timeout=10, half_open_max_probes=1))
    cb.record_failure(0)
    assert cb.state is OPEN
    probe, transition = cb.begin(10)
    assert probe and transition == Transition(OPEN, HALF)
    assert not cb.is_available(10)  # one probe in flight is the limit
    assert cb.record_success(11, probe) is None
    assert cb.is_available(11)
    probe, _ = cb.begin(11)
    assert cb.record_success(12, probe) == Transition(HALF, CLOSED)
    assert cb.is_available(12) and cb.failures == 0

    cb.record_failure(20)
    probe, _ = cb.begin(30)
    assert cb.record_failure(31, probe) == Transition(HALF, OPEN)
    assert not cb.is_available(40) and cb.is_available(41)


def test_breaker_ignores_stragglers_from_before_it_opened() -> None:
    cb = CircuitBreaker(BreakerConfig(failure_threshold=1, success_threshold=1, timeout=5))
    straggler, _ = cb.begin(0)
    assert not straggler
    cb.record_failure(1)
    probe, _ = cb.begin(6)
    assert cb.record_success(6.5, straggler) is None and cb.state is HALF  # not a probe: proves nothing
    assert cb.record_success(7, probe) == Transition(HALF, CLOSED)


def test_disabled_breaker_never_opens() -> None:
    cb = CircuitBreaker(BreakerConfig(failure_threshold=1, enabled=False))
    for t in range(5):
        assert cb.record_failure(t) is None
    assert cb.is_available(5) and cb.state is CLOSED


@pytest.mark.parametrize("bad", [{"failure_threshold": 0}, {"success_threshold": 0}, {"timeout": -1}, {"window": 0}])
def test_breaker_config_validation(bad: dict) -> None:
    with pytest.raises(ValueError):
        BreakerConfig(**bad)


def test_health_machine_walk() -> None:
    m = HealthMachine(HealthConfig(success_threshold=2, failure_threshold=3, failed_threshold=5))
    assert m.observe(True) is None and m.state is HealthState.PENDING
    assert m.observe(True).new is HealthState.READY
    assert m.observe(False) is None and m.observe(False) is None
    m.observe(True)  # a success breaks the run of failures
    assert [m.observe(False) for _ in range(3)][-1].new is HealthState.NOT_READY
    assert m.observe(False) is None
    assert m.observe(False).new is HealthState.FAILED  # five in a row
    assert m.observe(True) is None
    assert m.observe(True).new is HealthState.READY


def test_health_pending_fails_after_long_run() -> None:
    m = HealthMachine(HealthConfig(failure_threshold=1, failed_threshold=3))
    assert [m.observe(False) for _ in range(3)][-1].new is HealthState.FAILED


def test_health_config_validation() -> None:
    with pytest.raises(ValueError):
        HealthConfig(failure_threshold=0)
    with pytest.raises(ValueError):
        HealthConfig(failure_threshold=5, failed_threshold=4)


def test_backoff_schedule_grows_caps_and_jitters() -> None:
    cfg = RetryConfig(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0, jitter=0.0)
    assert [round(cfg.delay(n, 0.5), 6) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    jittered = RetryConfig(initial_backoff=1.0, max_backoff=10.0, multiplier=1.0, jitter=0.2)
    assert jittered.delay(1, 0.0) == pytest.approx(0.8)
    assert jittered.delay(1, 0.5) == pytest.approx(1.0)
    assert jittered.delay(1, 0.999999) == pytest.approx(1.2, abs=1e-5)


def test_retryable_statuses() -> None:
    assert all(is_retryable(s) for s in (408, 429, 500, 502, 503, 504))
    assert not any(is_retryable(s) for s in (200, 400, 401, 404, 409, 413, 501))


@pytest.mark.parametrize(
    "bad", [{"max_attempts": 0}, {"multiplier": 0.5}, {"jitter": 1.5}, {"initial_backoff": 2, "max_backoff": 1}]
)
def test_retry_config_validation(bad: dict) -> None:
    with pytest.raises(ValueError):
        RetryConfig(**bad)
