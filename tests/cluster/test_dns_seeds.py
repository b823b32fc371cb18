"""Seeds named by DNS: a name stands for every address it resolves to, and is resolved again, so a
gateway that appears behind the name later is found (a Kubernetes headless Service growing)."""

from __future__ import annotations

import os
import socket

import pytest
import trio

from smg.mesh.keyring import Keyring
from smg.mesh.messages import State
from smg.mesh.node import MeshNode
from smg.mesh.seeds import resolve_host, resolve_seeds
from smg.mesh.swim import SwimConfig

FAST = SwimConfig(probe_interval=0.1, probe_timeout=0.04, gossip_interval=0.05, push_pull_interval=2.0, reconnect_interval=0.3)
KEY = os.urandom(32)


async def test_names_become_every_address_and_literals_stay() -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return {"gateways.test": ["10.0.0.2", "10.0.0.1"], "v6.test": ["fd00::1"]}[host]

    seeds = ["gateways.test:7946", "10.0.0.1:7946", "v6.test:7946", "[fd00::9]:1"]
    assert await resolve_seeds(seeds, resolve) == ["10.0.0.2:7946", "10.0.0.1:7946", "[fd00::1]:7946", "[fd00::9]:1"]


async def test_a_name_that_does_not_resolve_is_kept_and_said(caplog: pytest.LogCaptureFixture) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    assert await resolve_seeds(["nowhere.test:7946"], resolve) == ["nowhere.test:7946"]
    assert "mesh seed nowhere.test:7946 does not resolve" in caplog.text


async def test_the_system_resolver_answers_for_localhost() -> None:
    assert "127.0.0.1" in await resolve_host("localhost", 7946)


def free_port() -> int:
    """One UDP and TCP port free on both 127.0.0.2 and 127.0.0.3 (the gateways behind the name)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.2", 0))
            port = s.getsockname()[1]
        try:
            for host in ("127.0.0.2", "127.0.0.3"):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(socket.AF_INET, kind) as probe:
                        probe.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on both addresses")


async def test_a_node_finds_gateways_that_appear_behind_its_seed_name(nursery: trio.Nursery) -> None:
    port = free_port()
    behind_the_name: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        assert host == "gateways.test"
        return list(behind_the_name)

    async def start(node: MeshNode) -> None:
        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            await node.run(task_status=task_status)

        await nursery.start(run)

    keyring = Keyring([KEY], "test")
    first = MeshNode("first", "127.0.0.2", port, keyring=keyring, config=FAST)
    await start(first)
    joiner = MeshNode("joiner", "127.0.0.1", 0, seeds=[f"gateways.test:{port}"], keyring=keyring, config=FAST, resolve=resolve)
    await start(joiner)  # the name resolves to nothing yet: a cluster of one

    behind_the_name.append("127.0.0.2")  # the first gateway's pod is ready
    with trio.fail_after(15):
        while joiner.state_of("first") is not State.ALIVE:
            await trio.sleep(0.02)

    second = MeshNode("second", "127.0.0.3", port, keyring=keyring, config=FAST)
    await start(second)
    behind_the_name.append("127.0.0.3")  # a second one appears behind the same name
    with trio.fail_after(15):
        while not all(n.state_of(o) is State.ALIVE for n in (first, second, joiner) for o in ("first", "second", "joiner")):
            await trio.sleep(0.02)
