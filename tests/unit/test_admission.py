"""Admission on trio's MockClock: the concurrency bound, the FIFO queue, its 429/503, the token bucket.

Every trio test runs on `autojump_clock` (MockClock, autojump_threshold=0): a queue timeout or a refill
wait costs no real time, and the mock time it took is asserted to the float. Permits are checked
through `smg.dataplane.dispatch._admitted` as well, the one place the product takes and gives
them back, so a leak on an exception or a cancellation shows up where requests would feel it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
import trio.testing
from trio.testing import wait_all_tasks_blocked

from smg.dataplane import dispatch
from smg.http.errors import GatewayError
from smg.limits.admission import Admission, TokenBucket
from smg.observability.metrics import GatewayMetrics

Log = list[tuple[str, str]]


class Waiter:
    """One request waiting for a permit in its own cancel scope, so a test can cancel just it."""

    def __init__(self, admission: Admission, name: str, log: Log, hold: bool = True) -> None:
        self.admission = admission
        self.hold = hold
        self.name = name
        self.log = log
        self.scope = trio.CancelScope()
        self.at = -1.0  # mock time the acquire ended

    async def run(self) -> None:
        with self.scope:
            try:
                how = await self.admission.acquire()
            except GatewayError as error:
                how = error.code
            self.at = trio.current_time()
            self.log.append((self.name, how))
            if not self.hold and how in ("admitted", "queued"):
                self.admission.release()
            return
        self.at = trio.current_time()
        self.log.append((self.name, "cancelled"))


async def queue_up(nursery: trio.Nursery, admission: Admission, names: str, log: Log, hold: bool = True) -> dict[str, Waiter]:
    """Start one waiter per letter, each one queued before the next arrives (a fixed arrival order)."""
    waiters = {}
    for name in names:
        waiters[name] = Waiter(admission, name, log, hold)
        nursery.start_soon(waiters[name].run)
        await wait_all_tasks_blocked()
    return waiters


async def test_requests_beyond_the_bound_wait_for_released_permits(autojump_clock: trio.testing.MockClock) -> None:
    """Two permits freed in one tick admit two waiters: the head, admitted, wakes the next, since
    both wake-ups went to the head (the only one a release wakes)."""
    admission = Admission(2, queue_size=5, queue_timeout=30.0)
    start = trio.current_time()
    assert [await admission.acquire(), await admission.acquire()] == ["admitted", "admitted"]
    log: Log = []
    async with trio.open_nursery() as nursery:
        await queue_up(nursery, admission, "cde", log)
        assert log == [] and admission.in_use == 2 and admission.waiting == 3
        admission.release()
        admission.release()
        await wait_all_tasks_blocked()
        assert log == [("c", "queued"), ("d", "queued")]
        assert admission.in_use == 2 and admission.waiting == 1
        admission.release()
    assert admission.in_use == 2 and admission.waiting == 0
    assert trio.current_time() == start  # the freed permits went over at once


async def test_waiters_are_admitted_in_arrival_order(autojump_clock: trio.testing.MockClock) -> None:
    admission = Admission(1, queue_size=5, queue_timeout=30.0)
    await admission.acquire()
    log: Log = []
    async with trio.open_nursery() as nursery:
        await queue_up(nursery, admission, "abcd", log)
        assert admission.waiting == 4
        for admitted in range(1, 5):
            admission.release()
            await wait_all_tasks_blocked()
            assert len(log) == admitted and admission.in_use == 1  # one release lets exactly one in
    assert [name for name, _ in log] == list("abcd")


async def test_a_newcomer_does_not_overtake_the_queue_when_a_permit_frees(autojump_clock: trio.testing.MockClock) -> None:
    """The freed permit is the head's even before the head ran: a request arriving in between
    finds the queue non-empty and waits behind it."""
    admission = Admission(1, queue_size=5, queue_timeout=30.0)
    await admission.acquire()
    start = trio.current_time()
    log: Log = []
    async with trio.open_nursery() as nursery:
        await queue_up(nursery, admission, "h", log, hold=False)  # h gives its permit back once it had it
        admission.release()
        with trio.fail_after(1):
            how = await admission.acquire()  # same tick: h has not run yet
    assert log == [("h", "queued")] and how == "queued"
    assert admission.in_use == 1 and trio.current_time() == start


async def test_a_full_queue_is_refused_with_429_at_once(autojump_clock: trio.testing.MockClock) -> None:
    admission = Admission(1, queue_size=1, queue_timeout=30.0)
    await admission.acquire()
    log: Log = []
    async with trio.open_nursery() as nursery:
        await queue_up(nursery, admission, "w", log)
        before = trio.current_time()
        with pytest.raises(GatewayError) as caught:
            await admission.acquire()
        assert trio.current_time() == before
        error = caught.value
        assert (error.status, error.code, error.type) == (429, "admission_queue_full", "rate_limit_error")
        assert error.headers == [(b"retry-after", b"1")]
        assert admission.waiting == 1 and admission.in_use == 1  # the refused one took nothing, the waiter kept its place
        admission.release()
    assert log == [("w", "queued")]
    no_queue = Admission(1, queue_size=0, queue_timeout=30.0)
    await no_queue.acquire()
    with pytest.raises(GatewayError, match="too many requests waiting"):
        await no_queue.acquire()
    assert trio.current_time() == before


async def test_waiters_get_503_after_exactly_their_queue_timeout(autojump_clock: trio.testing.MockClock) -> None:
    admission = Admission(1, queue_size=5, queue_timeout=2.5)
    await admission.acquire()
    start = trio.current_time()
    log: Log = []
    async with trio.open_nursery() as nursery:
        first = Waiter(admission, "first", log)
        nursery.start_soon(first.run)
        await trio.sleep(1.0)
        second = Waiter(admission, "second", log)
        nursery.start_soon(second.run)
    assert log == [("first", "admission_queue_timeout"), ("second", "admission_queue_timeout")]
    assert first.at - start == pytest.approx(2.5, abs=1e-9)
    assert second.at - start == pytest.approx(3.5, abs=1e-9)  # its own 2.5 s, from its arrival
    assert admission.waiting == 0 and admission.in_use == 1
    again = trio.current_time()
    with pytest.raises(GatewayError) as caught:  # the timed-out ones left no trace: the next one waits its own 2.5 s
        await admission.acquire()
    assert trio.current_time() - again == pytest.approx(2.5, abs=1e-9)
    error = caught.value
    assert (error.status, error.code, error.type) == (503, "admission_queue_timeout", "server_error")
    assert "2.5s" in error.message and error.headers == [(b"retry-after", b"1")]


async def test_a_permit_freed_just_before_the_timeout_admits_the_waiter(autojump_clock: trio.testing.MockClock) -> None:
    admission = Admission(1, queue_size=5, queue_timeout=2.5)
    await admission.acquire()
    start = trio.current_time()
    log: Log = []
    async with trio.open_nursery() as nursery:
        waiter = (await queue_up(nursery, admission, "w", log))["w"]
        await trio.sleep(2.499)
        admission.release()
    assert log == [("w", "queued")] and waiter.at - start == pytest.approx(2.499, abs=1e-9)
    await trio.sleep(5)
    assert admission.in_use == 1 and admission.waiting == 0


async def test_a_cancelled_waiter_in_the_middle_keeps_the_others_order(autojump_clock: trio.testing.MockClock) -> None:
    admission = Admission(1, queue_size=5, queue_timeout=30.0)
    await admission.acquire()
    log: Log = []
    async with trio.open_nursery() as nursery:
        waiters = await queue_up(nursery, admission, "abc", log)
        waiters["b"].scope.cancel()
        await wait_all_tasks_blocked()
        assert log == [("b", "cancelled")] and admission.waiting == 2
        admission.release()
        await wait_all_tasks_blocked()
        admission.release()
    assert log == [("b", "cancelled"), ("a", "queued"), ("c", "queued")]
    assert admission.in_use == 1 and admission.waiting == 0


async def test_a_cancelled_head_does_not_take_the_permit_freed_in_the_same_tick(autojump_clock: trio.testing.MockClock) -> None:
    """The head is cancelled, then a permit frees before it ran: the wake-up goes to the head's
    dead event, so unless the head hands it on as it leaves, the next waiter waits for nothing."""
    admission = Admission(1, queue_size=5, queue_timeout=30.0)
    await admission.acquire()
    log: Log = []
    async with trio.open_nursery() as nursery:
        waiters = await queue_up(nursery, admission, "ab", log)
        waiters["a"].scope.cancel()
        admission.release()
        await wait_all_tasks_blocked()
        assert log == [("a", "cancelled"), ("b", "queued")]
        assert admission.in_use == 1 and admission.waiting == 0
        nursery.cancel_scope.cancel()  # (only if the assertions failed would anything still wait)


def test_the_token_bucket_bursts_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    for _ in range(3):
        assert bucket.available(100.0)
        bucket.take(100.0)
    assert not bucket.available(100.0)
    assert bucket.wait_time(100.0) == 0.5  # one token at 2 a second
    assert bucket.wait_time(100.25) == 0.25  # half of it refilled meanwhile
    assert bucket.available(100.5)
    assert bucket.wait_time(1000.0) == 0.0 and bucket.tokens == 3  # idle for long: full, never above the burst
    assert TokenBucket(rate=0.5, burst=0.2, now=0.0).burst == 1.0  # a burst under one token would admit nothing


async def test_a_rate_admits_a_burst_then_one_request_per_refill(autojump_clock: trio.testing.MockClock) -> None:
    """Burst = the concurrency bound (2), or the rate without one; at 4 a second each later
    request waits exactly 0.25 s."""
    admission = Admission(2, queue_size=10, queue_timeout=100.0, rate=4.0)
    start = trio.current_time()
    results = []
    for _ in range(5):
        how = await admission.acquire()
        admission.release()  # the bound is never what holds them back here
        results.append((how, trio.current_time() - start))
    assert [how for how, _ in results] == ["admitted", "admitted", "queued", "queued", "queued"]
    assert [at for _, at in results] == pytest.approx([0.0, 0.0, 0.25, 0.5, 0.75], abs=1e-9)
    assert admission.in_use == 0
    # no bound: the burst is the rate (a rate whose refill time is exact in binary: see the report on rate=3)
    unbounded = Admission(None, queue_size=10, queue_timeout=100.0, rate=2.0)
    assert not unbounded.unlimited
    start = trio.current_time()
    assert [await unbounded.acquire() for _ in range(2)] == ["admitted"] * 2
    assert trio.current_time() == start
    assert await unbounded.acquire() == "queued"
    assert trio.current_time() - start == pytest.approx(0.5, abs=1e-9)
    assert unbounded.in_use == 3  # all three hold a permit at once


# -- the permit as the data plane holds it (dispatch._admitted) ---------------------------------


def _context(admission: Admission) -> tuple[Any, GatewayMetrics]:
    metrics = GatewayMetrics()
    return SimpleNamespace(admission=admission, metrics=metrics), metrics


def _decisions(metrics: GatewayMetrics, result: str) -> float:
    return metrics.registry.get_sample_value("smg_http_rate_limit_total", {"result": result}) or 0.0


def _admitted(ctx: Any) -> Awaitable[None]:
    return dispatch._admitted(ctx, cast(Any, None), cast(Any, None), {}, b"")


def _stub_proxy(monkeypatch: pytest.MonkeyPatch, behave: Callable[[], Awaitable[None]]) -> None:
    async def proxy(*args: object) -> None:
        await behave()

    monkeypatch.setattr(dispatch, "proxy", proxy)


async def test_a_refill_a_rounding_error_short_of_a_token_does_not_stall_the_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """At 3 per second, 1/3 s of refill can leave 0.9999999999999998 tokens: the head waiter
    must still get its permit within a microsecond of mock time, not spin at one instant."""
    admission = Admission(1, 10, 100.0, rate=3.0)
    admitted: list[float] = []

    async def one() -> None:
        await admission.acquire()
        admitted.append(trio.current_time())
        admission.release()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(one)
    assert len(admitted) == 6
    for i, at in enumerate(admitted):
        assert i / 3 <= at < i / 3 + 1e-5


async def test_dispatch_gives_the_permit_back_when_the_answer_fails(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    admission = Admission(1, queue_size=0, queue_timeout=30.0)
    ctx, metrics = _context(admission)
    seen = []

    async def explode() -> None:
        seen.append(admission.in_use)
        raise RuntimeError("worker exploded")

    _stub_proxy(monkeypatch, explode)
    for _ in range(3):  # with a leak, the second would be refused: the bound is 1 and nobody may wait
        with pytest.raises(RuntimeError, match="worker exploded"):
            await _admitted(ctx)
    assert seen == [1, 1, 1] and admission.in_use == 0
    await admission.acquire()
    with pytest.raises(GatewayError):  # refused: it took no permit, so it gives none back
        await _admitted(ctx)
    assert admission.in_use == 1 and seen == [1, 1, 1]
    assert _decisions(metrics, "admitted") == 3 and _decisions(metrics, "admission_queue_full") == 1


async def test_dispatch_gives_the_permit_back_when_the_request_is_cancelled(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while answering (the client left): released. Cancelled while queued: nothing to
    release, and the holder's permit must not be given back twice."""
    admission = Admission(1, queue_size=1, queue_timeout=30.0)
    ctx, metrics = _context(admission)
    _stub_proxy(monkeypatch, trio.sleep_forever)
    holder, queued = trio.CancelScope(), trio.CancelScope()

    async def run(scope: trio.CancelScope) -> None:
        with scope:
            await _admitted(ctx)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, holder)
        await wait_all_tasks_blocked()
        nursery.start_soon(run, queued)
        await wait_all_tasks_blocked()
        assert admission.in_use == 1 and admission.waiting == 1
        queued.cancel()
        await wait_all_tasks_blocked()
        assert admission.in_use == 1 and admission.waiting == 0
        holder.cancel()
    assert admission.in_use == 0
    assert _decisions(metrics, "admitted") == 1 and _decisions(metrics, "queued") == 0


@pytest.mark.parametrize("order", ["cancel, then release", "release, then cancel"])
async def test_no_permit_leaks_when_a_waiter_is_cancelled_as_the_permit_frees(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    """In one tick, the holder ends and the waiter is cancelled. Cancelled first, the waiter leaves
    without the permit; woken first, it holds the permit and gets the cancellation inside its
    answer, where dispatch gives the permit back. Either way nothing stays taken."""
    admission = Admission(1, queue_size=1, queue_timeout=30.0)
    ctx, _ = _context(admission)
    finish = trio.Event()
    waiter_scope = trio.CancelScope()
    answered: list[int] = []

    async def proxy_behaviour() -> None:
        answered.append(len(answered))
        if len(answered) == 1:  # the holder
            await finish.wait()
            if order == "cancel, then release":
                waiter_scope.cancel()  # dispatch releases right after this returns, with no checkpoint between
            return
        await trio.sleep_forever()  # the waiter, if it ever gets a permit

    _stub_proxy(monkeypatch, proxy_behaviour)

    async def holder() -> None:
        await _admitted(ctx)
        if order == "release, then cancel":
            waiter_scope.cancel()  # released just now: the waiter is woken but has not run

    async def waiter() -> None:
        with waiter_scope:
            await _admitted(ctx)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder)
        await wait_all_tasks_blocked()
        nursery.start_soon(waiter)
        await wait_all_tasks_blocked()
        assert admission.in_use == 1 and admission.waiting == 1
        finish.set()
    assert admission.in_use == 0 and admission.waiting == 0
    assert len(answered) == (1 if order == "cancel, then release" else 2)
