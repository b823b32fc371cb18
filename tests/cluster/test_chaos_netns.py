"""The chaos harness's network: namespaces on a bridge, nftables faults on real packets, cleanup."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from chaos import netns

WHY_NOT = netns.unavailable()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"network namespaces with nftables unavailable: {WHY_NOT}")

# A UDP echo server that runs inside a namespace.
ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999))
while True:
    data, peer = s.recvfrom(100)
    s.sendto(data, peer)
"""


@pytest.fixture
def network() -> Iterator[netns.Network]:
    net = netns.Network()
    net.create()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, octet in (("a", 10), ("b", 11)):
            address = net.add_host(name, octet)
            procs.append(subprocess.Popen([*net.prefix(name), sys.executable, "-c", ECHO, address]))
        yield net
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        net.close()


def _echoes(net: netns.Network, source: str | None, target: str, tries: int = 100) -> int:
    """How many of `tries` datagrams come back from `target`'s echo server, sent from `source`'s
    namespace (None: the root namespace)."""
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.05); n = 0\n"
        "for i in range(int(sys.argv[2])):\n"
        "    try:\n"
        "        s.sendto(b'x', (sys.argv[1], 9999)); s.recvfrom(100); n += 1\n"
        "    except OSError:\n"
        "        pass\n"
        "print(n)\n"
    )
    prefix = net.prefix(source) if source else []
    out = subprocess.run([*prefix, sys.executable, "-c", probe, target, str(tries)], capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


def _until_echo(net: netns.Network, source: str | None, target: str) -> None:
    deadline = time.monotonic() + 10
    while _echoes(net, source, target, 5) == 0:
        assert time.monotonic() < deadline, f"no echo from {target}"


def test_hosts_reach_each_other_and_the_root_namespace_reaches_them(network: netns.Network) -> None:
    a, b = network.hosts["a"], network.hosts["b"]
    _until_echo(network, "a", b)
    _until_echo(network, None, a)
    assert network.client.endswith(".1") and network.client.rsplit(".", 1)[0] == a.rsplit(".", 1)[0]


def test_a_partition_drops_real_packets_until_cleared(network: netns.Network) -> None:
    a, b = network.hosts["a"], network.hosts["b"]
    _until_echo(network, "a", b)
    network.rules("a", incoming=[f"ip saddr {netns.addresses([b])} drop"])
    assert _echoes(network, "a", b, 20) == 0
    assert _echoes(network, None, a, 5) == 5  # the client's side is not cut
    network.clear("a")
    assert _echoes(network, "a", b, 20) == 20


def test_random_loss_drops_about_its_share(network: netns.Network) -> None:
    b = network.hosts["b"]
    _until_echo(network, "a", b)
    network.rules("b", incoming=[f"ip saddr {netns.addresses([network.hosts['a']])} numgen random mod 100 < 30 drop"])
    answered = _echoes(network, "a", b, 400)
    assert 200 < answered < 360, answered  # 70 % expected: 280 ± a wide margin


def test_close_removes_everything_it_created() -> None:
    net = netns.Network()
    net.create()
    net.add_host("x", 10)
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert net.namespace("x") in listing
    net.close()
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    addresses = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    assert f"smgc-{net.pid}-" not in listing and f" {net.subnet}." not in addresses


def test_namespaces_of_a_dead_harness_are_removed() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = netns.Network(pid=dead.pid)
    stale.create()
    try:
        assert stale.namespace("br") in netns.remove_stale()
    finally:
        stale.close()
