"""Admission: a bound on concurrent requests, an optional rate, and a bounded FIFO queue.

A permit is held until the response (stream included) has ended. Requests
beyond the bound wait in FIFO order up to `--queue-timeout-secs` (then 503
`admission_queue_timeout`); when `--queue-size` are already waiting the
answer is 429 `admission_queue_full` at once. With a rate, admission also
takes a token from a bucket refilled at that many per second, bursting up to
the concurrency bound.
"""

from __future__ import annotations

from collections import deque

import trio

from smg.http.errors import GatewayError

RETRY_AFTER = [(b"retry-after", b"1")]
# A refill of exactly one token can land a rounding error short of 1.0 (0.9999999999999998): the
# wait left would be ~1e-16 s, below the clock's resolution, and a waiter would spin without time
# moving. It waits at least this long instead (well above the spacing of floats near any uptime).
MIN_WAIT = 1e-6


class TokenBucket:
    """Sans-IO token bucket: `now` is passed in."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.tokens = self.burst
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def available(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= 1.0

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1.0

    def wait_time(self, now: float) -> float:
        self._refill(now)
        if self.tokens >= 1.0:
            return 0.0
        return max(MIN_WAIT, (1.0 - self.tokens) / self.rate)


class _Waiter:
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = trio.Event()


class Admission:
    def __init__(self, max_concurrent: int | None, queue_size: int, queue_timeout: float, rate: float = 0.0) -> None:
        self.max_concurrent = max_concurrent
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.in_use = 0
        self._queue: deque[_Waiter] = deque()
        self._bucket = TokenBucket(rate, max_concurrent or rate, trio.current_time()) if rate > 0 else None

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def unlimited(self) -> bool:
        return self.max_concurrent is None and self._bucket is None

    def _room(self) -> bool:
        return self.max_concurrent is None or self.in_use < self.max_concurrent

    def _admit(self, now: float) -> None:
        self.in_use += 1
        if self._bucket is not None:
            self._bucket.take(now)

    def _wake_head(self) -> None:
        if self._queue:
            self._queue[0].event.set()

    def release(self) -> None:
        self.in_use -= 1
        self._wake_head()

    async def acquire(self) -> str:
        """Take a permit; returns 'admitted' or 'queued' (how), or raises the 429/503."""
        now = trio.current_time()
        bucket = self._bucket
        if not self._queue and self._room() and (bucket is None or bucket.available(now)):
            self._admit(now)
            return "admitted"
        if len(self._queue) >= self.queue_size:
            raise GatewayError(
                429,
                "admission_queue_full",
                "too many requests waiting; try again shortly",
                type="rate_limit_error",
                headers=RETRY_AFTER,
            )
        me = _Waiter()
        self._queue.append(me)
        with trio.move_on_after(self.queue_timeout):
            try:
                while True:
                    if self._queue[0] is me and self._room():
                        now = trio.current_time()
                        if bucket is None or bucket.available(now):
                            self._queue.popleft()
                            self._admit(now)
                            self._wake_head()  # the next one may fit too
                            return "queued"
                        await trio.sleep(bucket.wait_time(now))
                        continue
                    me.event = trio.Event()
                    await me.event.wait()
            except BaseException:
                self._leave(me)
                raise
        self._leave(me)
        raise GatewayError(
            503,
            "admission_queue_timeout",
            f"no capacity within {self.queue_timeout:g}s; try again shortly",
            type="server_error",
            headers=RETRY_AFTER,
        )

    def _leave(self, me: _Waiter) -> None:
        was_head = bool(self._queue) and self._queue[0] is me
        try:
            self._queue.remove(me)
        except ValueError:
            return
        if was_head:
            self._wake_head()
