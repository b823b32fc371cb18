"""The registrar's timing on a mock clock: discovery, start-up probing, health rounds, load polls, drains.

Workers are faked behind one `httpx.MockTransport`, so every probe is answered in-process and
every wait is virtual (pytest-trio's `autojump_clock`): a test checks *when* something happened
to the exact mock second without sleeping for real. The test task looks at the state between
events (at half-way instants), never at the instant a registrar timer fires, so the order of
two tasks waking at one time never matters.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from smg.workers.health import HealthConfig, HealthState
from smg.workers.registrar import Registrar
from smg.workers.registry import Worker, WorkerRegistry


@dataclass
class FakeWorker:
    """What one fake worker answers; a test changes these fields as (mock) time goes by."""

    models: list[str] = field(default_factory=lambda: ["m-a"])
    healthy: bool = True  # /health: 200, else 503
    down: bool = False  # every request: connection refused
    health_delay: float = 0.0  # mock seconds before /health answers
    loads: Any = None  # the /v1/loads body (None: 404)


@dataclass
class Call:
    at: float
    host: str
    path: str
    timeout: dict[str, float | None]
    authorization: str | None


class DeadlineTransport(httpx.AsyncBaseTransport):
    """Enforce a request's read timeout, as httpcore's trio backend does on a real socket.

    `MockTransport` ignores the `timeout` extension (httpcore applies it around each socket
    read), so without this a slow fake worker would never time out. A fake answer is one read.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        read = request.extensions.get("timeout", {}).get("read")
        try:
            with trio.fail_after(math.inf if read is None else read):
                return await self.inner.handle_async_request(request)
        except trio.TooSlowError:
            raise httpx.ReadTimeout("timed out", request=request) from None


class Fleet:
    """Fake workers by host name, and every request they got, stamped with the mock time."""

    def __init__(self) -> None:
        self.workers: dict[str, FakeWorker] = {}
        self.calls: list[Call] = []
        self.transport = DeadlineTransport(httpx.MockTransport(self.handle))

    def add(self, host: str, **fields: Any) -> FakeWorker:
        self.workers[host] = fake = FakeWorker(**fields)
        return fake

    async def handle(self, request: httpx.Request) -> httpx.Response:
        fake = self.workers[request.url.host]
        path = request.url.path
        self.calls.append(
            Call(trio.current_time(), request.url.host, path, request.extensions["timeout"], request.headers.get("authorization"))
        )
        if fake.down:
            raise httpx.ConnectError("connection refused", request=request)
        if path == "/health":
            await trio.sleep(fake.health_delay)
            return httpx.Response(200 if fake.healthy else 503)
        if path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": m, "owned_by": "sglang"} for m in fake.models]})
        if path == "/v1/loads" and fake.loads is not None:
            return httpx.Response(200, json=fake.loads)
        return httpx.Response(404)

    def times(self, path: str, host: str = "w1", *, after: float = -1.0) -> list[float]:
        return [c.at for c in self.calls if c.path == path and c.host == host and c.at > after]


def make_worker(host: str = "w1", *, success: int = 2, failure: int = 3, failed: int = 30, **settings: Any) -> Worker:
    return Worker.from_url(
        f"http://{host}:8000",
        health=HealthConfig(success_threshold=success, failure_threshold=failure, failed_threshold=failed),
        **settings,
    )


def make_registrar(fleet: Fleet, **options: Any) -> Registrar:
    options.setdefault("startup_timeout", 600.0)
    options.setdefault("check_interval", 1.0)
    return Registrar(WorkerRegistry(), transport=fleet.transport, **options)


@asynccontextmanager
async def running(registrar: Registrar, *workers: Worker) -> AsyncIterator[None]:
    """Run the registrar from mock time 0 with `workers` registered, as `GatewayContext.add_worker` does."""
    assert trio.current_time() == 0.0
    async with trio.open_nursery() as nursery:
        await nursery.start(registrar.run)
        for worker in workers:
            registrar.registry.add(worker)
            registrar.register(worker)
        yield
        nursery.cancel_scope.cancel()


# -- discovery and start-up ------------------------------------------------------------


async def test_discovery_reads_the_models_and_the_worker_is_ready_at_the_success_threshold(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fleet = Fleet()
    fleet.add("w1", models=["m-a", "m-b"])
    registrar = make_registrar(fleet)
    worker = make_worker(success=3)
    async with running(registrar, worker):
        await trio.sleep_until(0.2)  # discovery (success 1) at 0, a probe (success 2) at 0.1
        assert worker.discovered and worker.models == ["m-a", "m-b"] and worker.runtime_type == "sglang"
        assert worker.health.state is HealthState.PENDING and registrar.registry.available("m-a") == []
        await trio.sleep_until(0.5)  # success 3 at 0.3
        assert worker.health.state is HealthState.READY
        assert registrar.registry.available("m-a") == [worker] and registrar.registry.available("m-b") == [worker]
    assert [(c.at, c.path) for c in fleet.calls] == [
        (0.0, "/health"),
        (0.0, "/v1/models"),
        (0.1, "/health"),
        (pytest.approx(0.3), "/health"),
    ]


async def test_start_up_backs_off_doubling_up_to_the_check_interval(autojump_clock: trio.testing.MockClock) -> None:
    fleet = Fleet()
    fake = fleet.add("w1", healthy=False)
    registrar = make_registrar(fleet, check_interval=1.0)
    worker = make_worker(success=1)
    async with running(registrar, worker):
        await trio.sleep_until(4.0)
        assert worker.health.state is HealthState.PENDING
        assert worker.last_error == "health probe answered 503"
        fake.healthy = True
        await trio.sleep_until(4.6)
        assert worker.health.state is HealthState.READY and worker.last_error is None
    # 0.1, 0.2, 0.4, 0.8, then capped at --worker-startup-check-interval (1.0)
    assert fleet.times("/health") == pytest.approx([0.0, 0.1, 0.3, 0.7, 1.5, 2.5, 3.5, 4.5])


async def test_models_without_an_id_keep_the_worker_pending_and_retrying(autojump_clock: trio.testing.MockClock) -> None:
    fleet = Fleet()
    fake = fleet.add("w1", models=[])
    registrar = make_registrar(fleet)
    worker = make_worker(success=1)
    async with running(registrar, worker):
        await trio.sleep_until(1.0)
        assert not worker.discovered and worker.health.state is HealthState.PENDING
        assert worker.last_error == "/v1/models lists no model"
        assert len(fleet.times("/v1/models")) == 4  # 0, 0.1, 0.3, 0.7: each attempt asks again
        fake.models = ["m-late"]
        await trio.sleep_until(2.0)  # the attempt at 1.5
        assert worker.models == ["m-late"] and worker.health.state is HealthState.READY


async def test_start_up_gives_up_when_the_next_attempt_would_pass_the_timeout_then_retries_slowly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fleet = Fleet()
    fleet.add("w1", down=True)
    changes: list[float] = []
    registrar = make_registrar(
        fleet, startup_timeout=5.0, check_interval=1.0, on_change=lambda: changes.append(trio.current_time())
    )
    worker = make_worker()
    async with running(registrar, worker):
        await trio.sleep_until(4.4)
        assert worker.health.state is HealthState.PENDING
        await trio.sleep_until(100.0)
        assert worker.health.state is HealthState.FAILED and not worker.is_routable
        assert worker.last_error is not None and "ConnectError" in worker.last_error
    # the attempt at 4.5 is the last of the start-up: the next one (5.5) would be past the 5 s
    # deadline; then one attempt every health interval (10 s), until the worker answers
    startup = [0.0, 0.1, 0.3, 0.7, 1.5, 2.5, 3.5, 4.5]
    assert fleet.times("/health") == pytest.approx(startup + [4.5 + 10 * i for i in range(1, 10)])
    assert changes == [0.0, 4.5]  # registered, then given up


async def test_a_worker_that_failed_its_start_up_is_found_once_it_answers(autojump_clock: trio.testing.MockClock) -> None:
    fleet = Fleet()
    w1 = fleet.add("w1", down=True)
    registrar = make_registrar(fleet, startup_timeout=5.0, check_interval=1.0)
    worker = make_worker(success=2)
    async with running(registrar, worker):
        await trio.sleep_until(30.0)
        assert worker.health.state is HealthState.FAILED
        w1.down = False  # the engine finished loading
        await trio.sleep_until(35.0)  # found at 34.5, then the usual start-up: ready at its second probe
        assert worker.health.state is HealthState.READY and worker.is_routable
        assert worker.models == ["m-a"]


async def test_with_remove_unhealthy_workers_a_failed_start_up_removes_the_worker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fleet = Fleet()
    fleet.add("w1", down=True)
    removed: list[float] = []
    registrar = make_registrar(fleet, startup_timeout=5.0, check_interval=1.0, remove_failed=True)
    registrar.on_removed = lambda worker: removed.append(trio.current_time())
    worker = make_worker()
    async with running(registrar, worker):
        await trio.sleep_until(60.0)
    assert removed == [4.5] and registrar.registry.get(worker.id) is None
    assert fleet.times("/health")[-1] == pytest.approx(4.5)  # and no probe after


async def test_registering_again_restarts_the_start_up_from_scratch(autojump_clock: trio.testing.MockClock) -> None:
    fleet = Fleet()
    fleet.add("w1", down=True)
    registrar = make_registrar(fleet, startup_timeout=3.0, check_interval=1.0)
    worker = make_worker()
    async with running(registrar, worker):
        await trio.sleep_until(2.0)
        registrar.register(worker)  # the first start-up (deadline 3) is cancelled; the new one's is 5
        await trio.sleep_until(4.4)
        assert worker.health.state is HealthState.PENDING
        await trio.sleep_until(10.0)
        assert worker.health.state is HealthState.FAILED
    # one attempt loop at a time: the old one's 2.5 attempt never happens
    assert fleet.times("/health") == pytest.approx([0.0, 0.1, 0.3, 0.7, 1.5, 2.0, 2.1, 2.3, 2.7, 3.5, 4.5])


async def test_the_startup_delay_defers_the_first_probe_and_the_timeout_counts_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fleet = Fleet()
    fleet.add("w1", down=True)
    fleet.add("w2")
    registrar = make_registrar(fleet, startup_delay=30.0, startup_timeout=5.0, check_interval=1.0)
    down, late = make_worker("w1"), make_worker("w2", success=1)
    async with running(registrar, down):
        await trio.sleep_until(29.9)
        assert fleet.calls == [] and down.health.state is HealthState.PENDING
        await trio.sleep_until(40.0)
        assert down.health.state is HealthState.FAILED
        registrar.registry.add(late)  # added later: its own delay, from its own registration
        registrar.register(late)
        await trio.sleep_until(69.9)
        assert fleet.times("/health", "w2") == [] and late.health.state is HealthState.PENDING
        await trio.sleep_until(70.5)
        assert late.health.state is HealthState.READY
    # the first probe exactly at the delay; then the usual back-off, given up 5 s after the delay
    startup = [30.0, 30.1, 30.3, 30.7, 31.5, 32.5, 33.5, 34.5]
    assert fleet.times("/health", "w1") == pytest.approx([*startup, 44.5, 54.5, 64.5])  # then every health interval
    assert fleet.times("/health", "w2") == [70.0]


async def test_removing_a_worker_during_its_startup_delay_cancels_the_probe(autojump_clock: trio.testing.MockClock) -> None:
    fleet = Fleet()
    fleet.add("w1")
    registrar = make_registrar(fleet, startup_delay=10.0)
    worker = make_worker()
    async with running(registrar, worker):
        await trio.sleep_until(5.0)
        registrar.drain_and_remove(worker, grace=1.0)
        await trio.sleep_until(20.0)
        assert registrar.registry.get(worker.id) is None
    assert fleet.calls == []


# -- periodic health rounds ------------------------------------------------------------


async def test_health_rounds_run_every_health_check_interval(autojump_clock: trio.testing.MockClock) -> None:
    fleet = Fleet()
    fleet.add("w1")
    fleet.add("w2")
    registrar = make_registrar(fleet, health_interval=7.5, health_timeout=2.0)
    one, two = make_worker("w1"), make_worker("w2")
    async with running(registrar, one, two):
        await trio.sleep_until(40.0)
    for host in ("w1", "w2"):
        assert fleet.times("/health", host, after=0.5) == [7.5, 15.0, 22.5, 30.0, 37.5]
    periodic = [c for c in fleet.calls if c.at > 0.5]
    assert all(c.timeout == {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0} for c in periodic)


async def test_staggered_rounds_start_at_a_random_phase_then_keep_the_interval(autojump_clock: trio.testing.MockClock) -> None:
    fleet = Fleet()
    fleet.add("w1")
    registrar = make_registrar(fleet, health_interval=10.0, load_interval=4.0, stagger=random.Random(7))
    async with running(registrar, make_worker("w1")):
        await trio.sleep_until(60.0)
    checks = fleet.times("/health", "w1", after=0.5)
    assert 5.0 <= checks[0] < 15.0 and checks[0] != 10.0  # (seeded: not by chance one interval)
    assert [b - a for a, b in itertools.pairwise(checks)] == pytest.approx([10.0] * (len(checks) - 1))
    # the first poll at once (it found the worker not yet routable), the next after the phase
    polls = fleet.times("/v1/loads", "w1")
    assert 2.0 <= polls[0] < 6.0 and polls[0] != pytest.approx(4.0)
    assert [b - a for a, b in itertools.pairwise(polls)] == pytest.approx([4.0] * (len(polls) - 1))


async def test_failure_threshold_takes_a_worker_out_and_success_threshold_brings_it_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fleet = Fleet()
    fake = fleet.add("w1")
    changes: list[float] = []
    checked: list[tuple[float, bool]] = []
    registrar = make_registrar(fleet, health_interval=10.0, on_change=lambda: changes.append(trio.current_time()))
    registrar.on_checked = lambda worker, ok: checked.append((trio.current_time(), ok))
    worker = make_worker(success=2, failure=3)
    async with running(registrar, worker):
        await trio.sleep_until(5.0)
        assert worker.is_routable
        fake.healthy = False
        await trio.sleep_until(25.0)  # failures at 10 and 20
        assert worker.health.state is HealthState.READY and registrar.registry.available("m-a") == [worker]
        await trio.sleep_until(35.0)  # the third at 30
        assert worker.health.state is HealthState.NOT_READY and registrar.registry.available("m-a") == []
        assert worker.last_error == "health probe answered 503"
        fake.healthy = True
        await trio.sleep_until(45.0)  # one success at 40
        assert worker.health.state is HealthState.NOT_READY
        await trio.sleep_until(55.0)  # the second at 50
        assert worker.health.state is HealthState.READY and registrar.registry.available("m-a") == [worker]
        assert worker.last_error is None
    assert checked == [(10.0, False), (20.0, False), (30.0, False), (40.0, True), (50.0, True)]
    # registered, ready, then only the two transitions: a probe that changes nothing reindexes nothing
    assert changes == [0.0, 0.1, 30.0, 50.0]


async def test_a_probe_slower_than_the_timeout_fails_at_exactly_the_timeout(autojump_clock: trio.testing.MockClock) -> None:
    fleet = Fleet()
    in_time = fleet.add("w1")
    too_slow = fleet.add("w2")
    checked: list[tuple[float, str, bool]] = []
    registrar = make_registrar(fleet, health_interval=10.0, health_timeout=2.0)
    registrar.on_checked = lambda worker, ok: checked.append((trio.current_time(), worker.origin.host, ok))
    one, two = make_worker("w1", failure=1), make_worker("w2", failure=1)
    async with running(registrar, one, two):
        await trio.sleep_until(5.0)
        in_time.health_delay = 1.999
        too_slow.health_delay = 60.0
        await trio.sleep_until(11.5)
        assert checked == []  # both probes of the round at 10 are still out
        await trio.sleep_until(15.0)
        assert checked == [(11.999, "w1", True), (12.0, "w2", False)]  # sent at 10, given up 2 s later
        assert one.is_routable and not two.is_routable
        assert two.last_error is not None and "ReadTimeout" in two.last_error


async def test_pending_workers_and_those_should_check_refuses_are_not_probed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fleet = Fleet()
    fleet.add("w1")  # discovered, but pending until its 50th success: start-up probes only
    fleet.add("w2")
    fleet.add("w3")
    registrar = make_registrar(fleet, health_interval=10.0, check_interval=100.0, startup_timeout=1000.0)
    registrar.should_check = lambda worker: worker.url != "http://w3:8000"  # another node owns w3
    pending, owned, other = make_worker("w1", success=50), make_worker("w2"), make_worker("w3")
    async with running(registrar, pending, owned, other):
        await trio.sleep_until(35.0)
        assert pending.discovered and pending.health.state is HealthState.PENDING
    # w1's start-up attempts are spaced by the doubling backoff, never on the 10 s rounds
    assert fleet.times("/health", "w1") == pytest.approx([0.0, 0.1, 0.3, 0.7, 1.5, 3.1, 6.3, 12.7, 25.5])
    assert fleet.times("/health", "w2", after=0.5) == [10.0, 20.0, 30.0]
    assert fleet.times("/health", "w3", after=0.5) == []
    assert other.is_routable  # nobody here probes it, so nothing here takes it out


async def test_disable_health_check_makes_a_worker_ready_at_discovery_and_never_probes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fleet = Fleet()
    fake = fleet.add("w1")
    checked: list[bool] = []
    registrar = make_registrar(fleet, health_checks=False, health_interval=1.0)
    registrar.on_checked = lambda worker, ok: checked.append(ok)
    worker = make_worker(success=5)
    async with running(registrar, worker):
        await trio.sleep_until(0.01)
        assert worker.health.state is HealthState.READY  # no run of 5 successes needed
        fake.healthy = False
        await trio.sleep_until(100.0)
        assert worker.is_routable
    assert [(c.at, c.path) for c in fleet.calls] == [(0.0, "/health"), (0.0, "/v1/models")]
    assert checked == []


# -- failed workers ---------------------------------------------------------------------


@pytest.mark.parametrize("remove_failed", [False, True])
async def test_the_failed_threshold_removes_a_worker_only_with_remove_unhealthy_workers(
    autojump_clock: trio.testing.MockClock, remove_failed: bool
) -> None:
    fleet = Fleet()
    fake = fleet.add("w1")
    removed: list[tuple[float, Worker]] = []
    registrar = make_registrar(fleet, health_interval=1.0, remove_failed=remove_failed)
    registrar.on_removed = lambda worker: removed.append((trio.current_time(), worker))
    worker = make_worker(success=2, failure=2, failed=4)
    async with running(registrar, worker):
        await trio.sleep_until(0.5)
        fake.healthy = False
        await trio.sleep_until(3.5)  # failures at 1, 2 (not ready), 3
        assert worker.health.state is HealthState.NOT_READY and registrar.registry.get(worker.id) is worker
        await trio.sleep_until(4.5)  # the fourth consecutive failure at 4
        assert worker.health.state is HealthState.FAILED
        fake.healthy = True
        await trio.sleep_until(6.5)
        if remove_failed:
            assert registrar.registry.get(worker.id) is None and len(registrar.registry) == 0
            assert removed == [(4.0, worker)]
            assert fleet.times("/health", after=4.0) == []  # forgotten: no more probes
        else:
            assert registrar.registry.get(worker.id) is worker and removed == []
            assert fleet.times("/health", after=4.0) == [5.0, 6.0]  # still probed, and back
            assert worker.health.state is HealthState.READY


# -- load monitor ---------------------------------------------------------------------------


async def test_load_polls_update_the_reported_load_of_routable_workers(autojump_clock: trio.testing.MockClock) -> None:
    fleet = Fleet()
    fake = fleet.add(
        "w1",
        loads={"loads": [{"num_running_reqs": 3, "num_waiting_reqs": 1}, {"num_running_reqs": 2, "num_waiting_reqs": 0}]},
    )
    fleet.add("w2", healthy=False)  # never ready: never polled
    registrar = make_registrar(fleet, load_interval=2.0, health_interval=1000.0)
    worker, starting = make_worker("w1"), make_worker("w2")
    async with running(registrar, worker, starting):
        await trio.sleep_until(1.0)
        assert worker.reported_load == 0  # the poll at 0 found no routable worker
        await trio.sleep_until(3.0)
        assert worker.reported_load == 6  # both data-parallel ranks, running + waiting
        fake.loads = {"loads": [{"num_running_reqs": 1}]}
        await trio.sleep_until(5.0)
        assert worker.reported_load == 1
        fake.loads = None  # /v1/loads now answers 404
        await trio.sleep_until(7.0)
        assert worker.reported_load == 0
    assert fleet.times("/v1/loads") == [2.0, 4.0, 6.0]
    assert fleet.times("/v1/loads", "w2") == []


# -- drain then remove ----------------------------------------------------------------------


async def test_drain_stops_routing_at_once_and_removes_the_worker_when_its_requests_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fleet = Fleet()
    fleet.add("w1")
    removed_at: list[float] = []
    registrar = make_registrar(fleet, health_interval=1.0)
    registrar.on_removed = lambda worker: removed_at.append(-1.0)  # only for --remove-unhealthy-workers
    worker = make_worker()

    def on_change() -> None:
        if registrar.registry.get(worker.id) is None:
            removed_at.append(trio.current_time())

    registrar.on_change = on_change
    async with running(registrar, worker):
        await trio.sleep_until(1.5)
        worker.in_flight = 2
        registrar.drain_and_remove(worker, grace=30.0)
        assert worker.status == "draining" and registrar.registry.available("m-a") == []
        assert registrar.registry.get(worker.id) is worker  # its requests are still running
        await trio.sleep_until(4.0)
        worker.in_flight = 0
        await trio.sleep_until(10.0)
    assert len(removed_at) == 1 and 4.0 <= removed_at[0] <= 4.05 + 1e-6  # at the next 50 ms look
    assert fleet.times("/health", after=1.5) == []  # no probes while draining


async def test_drain_removes_a_busy_worker_at_the_grace_period(autojump_clock: trio.testing.MockClock) -> None:
    fleet = Fleet()
    fleet.add("w1")
    registrar = make_registrar(fleet)
    worker = make_worker()
    async with running(registrar, worker):
        await trio.sleep_until(1.0)
        worker.in_flight = 1  # never finishes
        registrar.drain_and_remove(worker, grace=4.0)
        await trio.sleep_until(4.9)
        assert registrar.registry.get(worker.id) is worker
        await trio.sleep_until(5.1)
        assert registrar.registry.get(worker.id) is None


async def test_a_probe_answered_after_the_drain_began_is_ignored(autojump_clock: trio.testing.MockClock) -> None:
    fleet = Fleet()
    fake = fleet.add("w1")
    checked: list[bool] = []
    registrar = make_registrar(fleet, health_interval=10.0, health_timeout=5.0)
    registrar.on_checked = lambda worker, ok: checked.append(ok)
    worker = make_worker(failure=1)
    async with running(registrar, worker):
        await trio.sleep_until(5.0)
        fake.health_delay = 3.0
        fake.healthy = False
        await trio.sleep_until(11.0)  # the probe of 10 is out until 13
        worker.in_flight = 1
        registrar.drain_and_remove(worker, grace=100.0)
        await trio.sleep_until(14.0)
    assert checked == []
    assert worker.health.state is HealthState.READY  # the 503 did not count


# -- authorization ----------------------------------------------------------------------------


async def test_probes_carry_the_workers_own_key_else_the_gateways(autojump_clock: trio.testing.MockClock) -> None:
    fleet = Fleet()
    fleet.add("w1")
    fleet.add("w2")
    registrar = make_registrar(fleet, api_key="gateway-key", health_interval=1.0)
    own, shared = make_worker("w1", api_key="worker-key"), make_worker("w2")
    async with running(registrar, own, shared):
        await trio.sleep_until(1.5)
    assert {c.authorization for c in fleet.calls if c.host == "w1"} == {"Bearer worker-key"}
    assert {c.authorization for c in fleet.calls if c.host == "w2"} == {"Bearer gateway-key"}
