"""Network namespaces for the chaos cluster: one host per node, faults on real packets.

Each node gets its own namespace with one veth into a bridge namespace; a
veth from the root namespace joins the same bridge, so the traffic client
(which stays in the root namespace) reaches every node and nodes reach the
client's address (where the harness's delay proxies listen). Faults are
nftables rules in the affected node's namespace: partitions drop by
address, loss drops a random share (`numgen`). Latency has no kernel tool
here (no `tc netem`), so it comes from an application-level proxy
(`chaos.delay_proxy`).

Names carry the harness's pid (`smgc-<pid>-...`), so namespaces left by a
harness that died without cleaning up are found and removed by the next.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

PREFIX = "smgc"


class NetworkError(RuntimeError):
    pass


def unavailable() -> str | None:
    """Why namespaces with nftables cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` not installed (Debian: iproute2, nftables)"
    probe = f"{PREFIX}-probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
        _run(["ip", "netns", "exec", probe, "nft", "add", "table", "inet", "probe"])
    except NetworkError as exc:
        return str(exc)
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def remove_stale() -> list[str]:
    """Delete namespaces (and root veths) of harnesses that are no longer running."""
    removed = []
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.strip() else ""
        match = re.fullmatch(rf"{PREFIX}-(\d+)-\w+", name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            removed.append(name)
    return removed


@dataclass
class Network:
    """A bridge with one namespace per node and the root namespace attached as `client`."""

    pid: int = field(default_factory=os.getpid)
    subnet: str = ""  # "10.77.N", chosen free at `create`
    hosts: dict[str, str] = field(default_factory=dict)  # node name -> address
    _created: list[str] = field(default_factory=list)
    _root_link: str = ""

    @property
    def client(self) -> str:
        return f"{self.subnet}.1"

    def namespace(self, node: str) -> str:
        return f"{PREFIX}-{self.pid}-{node}"

    def create(self) -> None:
        remove_stale()
        self.subnet = _free_subnet()
        bridge = self._add_namespace("br")
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge, "link", "set", "br0", "up")
        self._root_link = f"{PREFIX}{self.subnet.rsplit('.', 1)[1]}"
        _ip("link", "add", self._root_link, "type", "veth", "peer", "name", "root", "netns", bridge)
        _ip("addr", "add", f"{self.client}/24", "dev", self._root_link)
        _ip("link", "set", self._root_link, "up")
        _ip("-n", bridge, "link", "set", "root", "master", "br0", "up")

    def add_host(self, node: str, last_octet: int) -> str:
        """A namespace for `node` at `<subnet>.<last_octet>`; returns its address."""
        ns, bridge = self._add_namespace(node), self.namespace("br")
        port = f"p{last_octet}"
        _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", bridge)
        address = f"{self.subnet}.{last_octet}"
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", bridge, "link", "set", port, "master", "br0", "up")
        self.hosts[node] = address
        return address

    def prefix(self, node: str) -> list[str]:
        """Command prefix that runs a program inside `node`'s namespace (`ip netns exec` execs it,
        so the process started is the program itself and signals reach it)."""
        return ["ip", "netns", "exec", self.namespace(node)]

    def rules(self, node: str, incoming: Sequence[str] = (), outgoing: Sequence[str] = ()) -> None:
        """Replace `node`'s fault rules: nftables statements for its input and output hooks."""
        lines = ["table inet chaos {}", "delete table inet chaos", "table inet chaos {"]
        for hook, statements in (("input", incoming), ("output", outgoing)):
            lines += [f"  chain {hook} {{", f"    type filter hook {hook} priority 0; policy accept;"]
            lines += [f"    {statement}" for statement in statements] + ["  }"]
        script = "\n".join([*lines, "}", ""])
        _run([*self.prefix(node), "nft", "-f", "-"], script)

    def clear(self, node: str) -> None:
        self.rules(node)

    def close(self) -> None:
        for ns in reversed(self._created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if self._root_link:
            subprocess.run(["ip", "link", "del", self._root_link], capture_output=True)
        self._created.clear()

    def _add_namespace(self, node: str) -> str:
        ns = self.namespace(node)
        _ip("netns", "add", ns)
        self._created.append(ns)
        return ns


def addresses(hosts: Sequence[str]) -> str:
    """An nftables anonymous set: `{ 10.77.1.20, 10.77.1.21 }`."""
    return "{ " + ", ".join(hosts) + " }"


def _free_subnet() -> str:
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for n in range(1, 255):
        subnet = f"10.77.{n}"
        if f" {subnet}." not in used:
            return subnet
    raise RuntimeError("no free 10.77.N.0/24 subnet")


def _ip(*args: str) -> None:
    _run(["ip", *args])


def _run(command: list[str], stdin: str | None = None) -> None:
    """Run a set-up command; a failure raises with what the tool printed, so the report says why."""
    try:
        done = subprocess.run(command, input=stdin.encode() if stdin else None, capture_output=True)
    except FileNotFoundError:
        raise NetworkError(f"{command[0]}: not installed") from None
    if done.returncode != 0:
        raise NetworkError(f"`{' '.join(command)}` failed: {done.stderr.decode().strip()[:300]}")
