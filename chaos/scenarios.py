"""Fault scenarios: a timeline of faults over the scenario's duration, under traffic.

Each scenario runs its faults between 25 % and ~70 % of the duration, so
traffic flows before, during and after (a rolling restart takes as long as
it takes); `allowed_deaths` is how many
dead transitions one observer may record of one member (a killed gateway is
declared dead once; a partition, once per side; nothing else may die).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from chaos.cluster import Cluster


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    run: Callable[[Cluster, float], None]  # (cluster, duration)
    allowed_deaths: int = 0
    ci: bool = False  # in the short CI subset
    limit_slack: float = 0.05  # the rate-limit contract: admitted per minute <= limit x (1 + slack)
    no_failures: bool = False  # nothing a client may notice: classes (a) and (b) are violations too


def window(
    fault: Callable[[Cluster], object],
    undo: Callable[[Cluster], object] | None = None,
    begin: float = 0.25,
    end: float = 0.6,
) -> Callable[[Cluster, float], None]:
    """Inject `fault` at `begin` of the duration and `undo` it at `end` (fractions)."""

    def run(c: Cluster, duration: float) -> None:
        started = time.monotonic()
        time.sleep(begin * duration)
        fault(c)
        if undo is not None:
            time.sleep(max(0.0, started + end * duration - time.monotonic()))
            undo(c)

    return run


def last(c: Cluster) -> int:
    return c.gateways - 1


def partition_with_changes(c: Cluster) -> None:
    """Cut the last gateway off, then change the worker registry on the majority side: the
    isolated gateway must catch up after the heal (the registries are compared then)."""
    c.partition([last(c)])
    c.delay_worker(0, 20.0, seen_by=list(range(last(c))))


def sigstop(seconds: float) -> Callable[[Cluster], None]:
    def run(c: Cluster) -> None:
        c.pause_gateway(1)
        time.sleep(seconds)
        c.resume_gateway(1)

    return run


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "gateway-kill-restart",
            "kill -9 a gateway, restart it",
            window(lambda c: c.kill_gateway(last(c)), lambda c: c.restart_gateway(last(c))),
            allowed_deaths=1,
            ci=True,
        ),
        Scenario(
            "worker-kill",
            "kill -9 a worker, restart it",
            window(lambda c: c.kill_worker(c.workers - 1), lambda c: c.restart_worker(c.workers - 1)),
        ),
        Scenario(
            "worker-hang",
            "a worker hangs half its requests and cuts 20 % of streams",
            window(
                lambda c: c.worker_config(0, {"hang_rate": 0.5, "die_mid_stream_rate": 0.2}),
                lambda c: c.worker_config(0, {"hang_rate": 0.0, "die_mid_stream_rate": 0.0}),
            ),
        ),
        Scenario(
            "minority-partition",
            "cut one gateway off; change the worker registry on the majority side; heal",
            window(partition_with_changes, Cluster.heal, end=0.7),
            allowed_deaths=1,
            ci=True,
        ),
        Scenario(
            "one-way-partition",
            "what one gateway sends to the others is lost, heal",
            window(lambda c: c.partition([last(c)], one_way=True), Cluster.heal, end=0.7),
            allowed_deaths=1,
        ),
        Scenario("loss-10", "10 % of packets between gateways lost", window(lambda c: c.lose(0.10), Cluster.heal, end=0.75)),
        Scenario(
            "loss-30",
            "30 % of packets between gateways lost",
            window(lambda c: c.lose(0.30), Cluster.heal, end=0.75),
        ),
        Scenario("sigstop-10s", "SIGSTOP a gateway for 10 s (slow node), SIGCONT", window(sigstop(10.0)), allowed_deaths=1),
        Scenario(
            "mesh-latency",
            "100 ms one-way delay on everything gateways send each other",
            window(lambda c: c.lag(100.0), Cluster.heal, end=0.75),
        ),
        Scenario(
            "worker-latency",
            "a worker behind a 150 ms delay proxy (swapped in and out through the control plane)",
            window(lambda c: c.delay_worker(0, 150.0), lambda c: c.undelay_worker(0)),
        ),
        Scenario("key-rotation", "mesh key install/use/remove under traffic", window(Cluster.rotate_key, begin=0.4)),
        Scenario(
            "rolling-restart",
            "SIGTERM and restart every gateway in turn, clients following /readiness: no request may fail",
            window(Cluster.rolling_restart),
            ci=True,
            no_failures=True,
        ),
    )
}
