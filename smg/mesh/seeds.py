"""Seeds given by DNS name: one name stands for every address it resolves to.

A Kubernetes headless Service (or any round-robin name) answers with one address
per gateway, so `--seeds gateways.smg:39527` finds the whole cluster, not
whichever address the resolver lists first. Names are resolved at start and
again every reconnect interval, so gateways that appear later are found by the
rejoin attempts; an IP literal is used as given. A name that does not resolve
is kept as it is (the transport will try it, and the seed watch says why it
does not answer). Seeds a discovery source finds (the gateway pods Kubernetes
discovery's `--router-selector` matches) ride the same path: `DiscoveredSeeds`
stands among the seeds as one more name, which resolves to the pods' addresses.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable

import trio

from smg.mesh.transport import split_address

log = logging.getLogger("smg.mesh")

Resolve = Callable[[str, int], Awaitable[list[str]]]  # (host, port) -> IP addresses


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (A and AAAA), each once."""
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_DGRAM)
    return sorted({str(info[4][0]) for info in infos})


def is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def join_address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def has_names(seeds: list[str]) -> bool:
    return any(not is_literal(split_address(seed)[0]) for seed in seeds)


async def resolve_seeds(seeds: list[str], resolve: Resolve = resolve_host) -> list[str]:
    """The seeds with every DNS name replaced by its addresses, in order, without repeats."""
    out: list[str] = []
    for seed in seeds:
        host, port = split_address(seed)
        if is_literal(host):
            addresses = [seed]
        else:
            try:
                addresses = [join_address(ip, port) for ip in await resolve(host, port)]
            except (OSError, UnicodeError) as exc:  # trio raises UnicodeError for a name like "a..b"
                log.warning("mesh seed %s does not resolve (%s); trying the name as given", seed, exc)
                addresses = [seed]
        out += [a for a in addresses if a not in out]
    return out


class DiscoveredSeeds:
    """Seed addresses kept up to date by a discovery source, as one more seed "name".

    `seed` joins the node's seeds; `resolver` answers for it with the addresses `set` last gave
    (and asks `fallback` for every other name). The node resolves its seeds at start and again
    every reconnect interval, so pods that appear later are found by the rejoin attempts, as a
    DNS name's new addresses are, and pods that went away stop being tried.
    """

    NAME = "(router-selector)"  # never a DNS name: nothing else resolves it

    def __init__(self, port: int) -> None:
        self.port = port
        self.hosts: list[str] = []
        self.changed = trio.Event()  # set when the addresses change: the node tries them at once

    @property
    def seed(self) -> str:
        return f"{self.NAME}:{self.port}"

    def set(self, hosts: list[str]) -> None:
        """The current addresses (IPs: the seed's port applies to each)."""
        if hosts != self.hosts:
            log.info("mesh seeds from --router-selector: %s", ", ".join(hosts) or "none")
            self.changed.set()
        self.hosts = list(hosts)

    def resolver(self, fallback: Resolve = resolve_host) -> Resolve:
        async def resolve(host: str, port: int) -> list[str]:
            if host == self.NAME:
                return list(self.hosts)
            return await fallback(host, port)

        return resolve
