"""SWIM on the deterministic simulator at 10, 100 and 1,000 nodes, with packet loss.

    python bench/mesh_sim.py                      # N = 10, 100, 1000; loss 0 %, 10 %, 50 %
    python bench/mesh_sim.py --sizes 10 100 --losses 0 0.1

Per scenario: time until 50 / 99 / 99.99 % of the nodes know of a new member
(alive) and of a killed one (dead), the killed node's mean detection time
(first suspicion anywhere), false deaths per node-hour over an idle period,
and bytes per node per second (encoded messages, before encryption's 29
bytes of overhead per packet). Default protocol settings (SwimConfig).
"""

from __future__ import annotations

import argparse
import time

from smg.mesh.messages import State
from smg.mesh.sim import SimNetwork
from smg.mesh.wire import encode_message


class MeasuredNetwork(SimNetwork):
    """Counts encoded bytes of every packet sent."""

    def _dispatch(self, source, sends):  # type: ignore[no-untyped-def]
        for send in sends:
            self.bytes_estimate += len(encode_message(send.message)) + 29
        super()._dispatch(source, sends)


def spread_times(net: SimNetwork, name: str, state: State, limit: float) -> list[float | None]:
    """Seconds until 50 / 99 / 99.99 % of the other live nodes see `name` in `state`."""
    observers = [a for a, n in net.nodes.items() if n.alive and n.swim.name != name]
    marks: list[float | None] = [None, None, None]
    started = net.now
    while net.now - started < limit:
        seen = sum(1 for a in observers if net.nodes[a].swim.state_of(name) is state) / len(observers)
        for i, share in enumerate((0.5, 0.99, 0.9999)):
            if marks[i] is None and seen >= share:
                marks[i] = net.now - started
        if marks[2] is not None:
            break
        net.run_until(net.now + 0.05)
    return marks


def fmt(value: float | None) -> str:
    return f"{value:6.2f}" if value is not None else "   n/a"


def scenario(n: int, loss: float, idle: float, seed: int) -> None:
    net = MeasuredNetwork(seed, loss=loss)
    first = net.add("n0")
    for i in range(1, n):
        net.add(f"n{i}", seeds=[first])
    net.run_until_true(lambda: net.all_see(f"n{n - 1}", State.ALIVE), limit=120, step=0.5)
    net.run_until(net.now + 10)
    wall = time.perf_counter()
    joiner = net.add("newcomer", seeds=[net.rng.choice(list(net.nodes))])
    join = spread_times(net, "newcomer", State.ALIVE, 60)
    victim = next(a for a, node in net.nodes.items() if node.swim.name == f"n{n // 2}")
    net.kill(victim)
    killed_at = net.now
    death = spread_times(net, f"n{n // 2}", State.DEAD, 120)
    suspected = [
        t
        for node in net.nodes.values()
        for t, e in node.events
        if e.name == f"n{n // 2}" and e.state is State.SUSPECT and t >= killed_at
    ]
    detection = min(suspected) - killed_at if suspected else None
    before_bytes, before = net.bytes_estimate, net.now
    net.run_until(net.now + idle)
    live = [a for a, node in net.nodes.items() if node.alive]
    false = sum(1 for a in live for t, e in net.nodes[a].events if t > before and e.state is State.DEAD)
    per_node_hour = false / (len(live) * idle / 3600)
    bytes_per_node = (net.bytes_estimate - before_bytes) / len(live) / (net.now - before)
    print(
        f"{n:>6}{loss * 100:>6.0f}%  join {fmt(join[0])}{fmt(join[1])}{fmt(join[2])}   dead {fmt(death[0])}{fmt(death[1])}{fmt(death[2])}"
        f"   detect {fmt(detection)}   false/node-h {per_node_hour:7.3f}   B/node/s {bytes_per_node:8.0f}   ({time.perf_counter() - wall:.0f} s)"
    )
    del joiner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--losses", type=float, nargs="+", default=[0.0, 0.1, 0.5])
    parser.add_argument(
        "--idle", type=float, default=300.0, help="simulated seconds of idle running for false positives and traffic"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print("     N  loss   join: 50%   99%  99.99%     dead: 50%   99%  99.99%   (seconds, simulated)")
    for n in args.sizes:
        for loss in args.losses:
            scenario(n, loss, args.idle, args.seed)


if __name__ == "__main__":
    main()
