"""Fault scenarios: a timeline of faults over the scenario's duration, under traffic.

Each scenario runs its faults between 25 % and ~70 % of the duration, so
traffic flows before, during and after; `allowed_deaths` is how many
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


def at(start: float, fraction: float, duration: float) -> None:
    """Sleep until `fraction` of the duration has passed since `start`."""
    time.sleep(max(0.0, start + fraction * duration - time.monotonic()))


def gateway_kill_restart(c: Cluster, d: float) -> None:
    t = time.monotonic()
    at(t, 0.25, d)
    c.kill_gateway(c.gateways - 1)
    at(t, 0.6, d)
    c.restart_gateway(c.gateways - 1)


def worker_kill(c: Cluster, d: float) -> None:
    t = time.monotonic()
    at(t, 0.25, d)
    c.kill_worker(c.workers - 1)
    at(t, 0.6, d)
    c.restart_worker(c.workers - 1)


def worker_hang(c: Cluster, d: float) -> None:
    t = time.monotonic()
    at(t, 0.25, d)
    c.worker_config(0, {"hang_rate": 0.5, "die_mid_stream_rate": 0.2})
    at(t, 0.6, d)
    c.worker_config(0, {"hang_rate": 0.0, "die_mid_stream_rate": 0.0})


def minority_partition(c: Cluster, d: float) -> None:
    t = time.monotonic()
    at(t, 0.25, d)
    c.partition([c.gateways - 1])
    at(t, 0.7, d)
    c.heal()


def one_way_partition(c: Cluster, d: float) -> None:
    t = time.monotonic()
    at(t, 0.25, d)
    c.partition([c.gateways - 1], one_way=True)
    at(t, 0.7, d)
    c.heal()


def mesh_loss(loss: float) -> Callable[[Cluster, float], None]:
    def run(c: Cluster, d: float) -> None:
        t = time.monotonic()
        at(t, 0.25, d)
        c.lose(loss)
        at(t, 0.75, d)
        c.heal()

    return run


def sigstop(seconds: float) -> Callable[[Cluster, float], None]:
    def run(c: Cluster, d: float) -> None:
        t = time.monotonic()
        at(t, 0.25, d)
        c.pause_gateway(1)
        time.sleep(seconds)
        c.resume_gateway(1)

    return run


def key_rotation(c: Cluster, d: float) -> None:
    t = time.monotonic()
    at(t, 0.4, d)
    c.rotate_key()


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("gateway-kill-restart", "kill -9 a gateway, restart it", gateway_kill_restart, allowed_deaths=1, ci=True),
        Scenario("worker-kill", "kill -9 a worker, restart it", worker_kill),
        Scenario("worker-hang", "a worker hangs half its requests and cuts 20 % of streams", worker_hang),
        Scenario("minority-partition", "cut one gateway off (mesh), heal", minority_partition, allowed_deaths=1, ci=True),
        Scenario("one-way-partition", "one gateway's mesh traffic lost one way, heal", one_way_partition, allowed_deaths=1),
        Scenario("loss-10", "10 % of mesh packets lost", mesh_loss(0.10)),
        Scenario("loss-30", "30 % of mesh packets lost", mesh_loss(0.30), allowed_deaths=1),
        Scenario("sigstop-10s", "SIGSTOP a gateway for 10 s (slow node), SIGCONT", sigstop(10.0), allowed_deaths=1),
        Scenario("key-rotation", "mesh key install/use/remove under traffic", key_rotation),
    )
}
