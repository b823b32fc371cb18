"""Retry policy: which answers are worth another worker, and how long to wait (sans-IO)."""

from __future__ import annotations

from dataclasses import dataclass

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryConfig:
    max_attempts: int = 5  # total attempts, the first included (the reference's --retry-max-retries)
    initial_backoff: float = 0.05
    max_backoff: float = 30.0
    multiplier: float = 1.5
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("--retry-max-retries must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("retry backoff must satisfy 0 <= initial <= max")
        if not self.multiplier >= 1.0:
            raise ValueError("--retry-backoff-multiplier must be at least 1.0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("--retry-jitter-factor must be between 0 and 1")

    def delay(self, retry: int, unit_random: float) -> float:
        """Seconds to wait before retry number `retry` (1-based); `unit_random` in [0, 1)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return min(self.max_backoff, max(0.0, base * (1.0 + self.jitter * (2.0 * unit_random - 1.0))))


def is_retryable(status: int) -> bool:
    return status in RETRYABLE_STATUSES
