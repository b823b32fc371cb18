"""Worker overload protection: load reports parsed, overloaded workers left out while another is
under the thresholds, the least-loaded one (or a 503 with --worker-overload-shed) when all are over."""

from __future__ import annotations

from typing import Any

import pytest
from trio.testing import MockClock

from smg.config import GatewayConfig
from smg.dataplane.attempts import choose_worker
from smg.http.errors import GatewayError
from smg.routing.policies import RequestInfo
from smg.workers.overload import LoadReport, OverloadLimits, parse_load_report
from tests.fakes import MODEL, FakeUpstream, gateway, json_reply


def report(*ranks: dict[str, Any]) -> LoadReport:
    return parse_load_report({"loads": list(ranks)})


def test_a_report_sums_queues_and_averages_kv_usage_over_ranks() -> None:
    r = report(
        {"num_running_reqs": 3, "num_waiting_reqs": 5, "token_usage": 0.5},
        {"num_running_reqs": 1, "num_waiting_reqs": 4, "token_usage": 0.9},
    )
    assert (r.running, r.waiting, r.load) == (4, 9, 13) and r.token_usage == pytest.approx(0.7)
    assert report({"num_running_reqs": 2}).token_usage is None  # not reported: never over that threshold
    for junk in (None, [], {"loads": "x"}, {"loads": [1, {"num_waiting_reqs": True, "token_usage": 7}]}):
        assert parse_load_report(junk) in (LoadReport(), LoadReport(0, 0, None))


def no_upstream(call: Any) -> Any:
    return json_reply(200, {})


def workers_with(ctx: Any, *reports: tuple[int, float | None]) -> None:
    for worker, (waiting, usage) in zip(sorted(ctx.registry, key=lambda w: w.url), reports, strict=True):
        worker.reported_waiting, worker.reported_token_usage = waiting, usage
        worker.reported_load = waiting


def pick(ctx: Any) -> str:
    return choose_worker(ctx, RequestInfo(model=MODEL)).url


async def test_an_overloaded_worker_leaves_routing_while_another_is_under(autojump_clock: MockClock) -> None:
    ctx = gateway(FakeUpstream(no_upstream), 3)
    _, _, c = sorted(w.url for w in ctx.registry)
    workers_with(ctx, (8, 0.1), (0, 0.85), (7, 0.79))  # a: queue at the limit; b: KV over it; c: just under both
    assert {pick(ctx) for _ in range(6)} == {c}


async def test_when_every_worker_is_over_the_least_loaded_one_serves(autojump_clock: MockClock) -> None:
    ctx = gateway(FakeUpstream(no_upstream), 2)
    _, b = sorted(w.url for w in ctx.registry)
    workers_with(ctx, (20, None), (9, None))
    assert {pick(ctx) for _ in range(4)} == {b}


async def test_with_shedding_every_worker_over_is_a_503_with_retry_after(autojump_clock: MockClock) -> None:
    ctx = gateway(FakeUpstream(no_upstream), 2, worker_overload_shed=True, load_monitor_interval=7.5)
    workers_with(ctx, (20, None), (9, 0.95))
    with pytest.raises(GatewayError) as info:
        pick(ctx)
    error = info.value
    assert error.status == 503 and error.code == "worker_overload_protection_shed"
    assert (b"retry-after", b"8") in (error.headers or [])


async def test_disabled_protection_routes_to_every_worker(autojump_clock: MockClock) -> None:
    ctx = gateway(FakeUpstream(no_upstream), 2, disable_worker_overload_protection=True)
    workers_with(ctx, (100, 1.0), (100, 1.0))
    assert ctx.overload is None
    assert len({pick(ctx) for _ in range(8)}) == 2


def test_the_flags_and_their_checks() -> None:
    assert GatewayConfig().overload_limits() == OverloadLimits(8, 0.8, False)
    assert GatewayConfig(worker_overload_protection=True).overload_limits() == OverloadLimits(8, 0.8, False)
    assert GatewayConfig(disable_worker_overload_protection=True).overload_limits() is None
    assert GatewayConfig(policy="round_robin").load_monitoring  # the reports are polled whatever the policy
    off = GatewayConfig(policy="round_robin", disable_load_monitoring=True, disable_worker_overload_protection=True)
    assert not off.load_monitoring
    with pytest.raises(ValueError, match="contradict"):
        GatewayConfig(worker_overload_protection=True, disable_worker_overload_protection=True)
    with pytest.raises(ValueError, match=r"^--worker-overload-token-usage must be in \(0, 1\], got 0.0$"):
        GatewayConfig(worker_overload_token_usage=0.0)
