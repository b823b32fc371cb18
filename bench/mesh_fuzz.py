"""Throw random and mutated packets at a live mesh node: it must neither crash nor change.

    python bench/mesh_fuzz.py                 # 1,000,000 packets
    python bench/mesh_fuzz.py --packets 100000

The node runs with a key; half the packets are random bytes, half are valid
messages sealed with another key or mutated after sealing with the right
one. At the end the node must be alive, know no member but itself, and have
counted every packet as dropped (unauthenticated or malformed).
"""

from __future__ import annotations

import argparse
import os
import random
import time

import trio

from smg.mesh.keyring import Keyring
from smg.mesh.messages import Alive, Gossip, Ping
from smg.mesh.node import MeshNode
from smg.mesh.wire import encode_message


async def main(packets: int) -> None:
    key = os.urandom(32)
    node = MeshNode("target", "127.0.0.1", 0, keyring=Keyring([key], "fuzz"))
    rng = random.Random(1)
    forged = Keyring([os.urandom(32)], "fuzz")
    right = Keyring([key], "fuzz")
    samples = [
        encode_message(Gossip("evil", (Alive("evil", 9, "127.0.0.1:1"),))),
        encode_message(Ping(1, "evil", "127.0.0.1:1", "target")),
    ]
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        target = ("127.0.0.1", node.transport.port)
        started = time.perf_counter()
        for i in range(packets):
            kind = i % 4
            if kind == 0:
                data = rng.randbytes(rng.randrange(1, 200))
            elif kind == 1:
                data = forged.seal(rng.choice(samples))
            else:
                data = bytearray(right.seal(rng.choice(samples)))
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
                data = bytes(data)
            await udp.sendto(data, target)
            if i % 1000 == 999:
                await trio.sleep(0.002)  # let the node drain its socket
        await trio.sleep(1.0)
        elapsed = time.perf_counter() - started
        dropped = node.transport.dropped
        members = [m["name"] for m in node.members()]
        print(f"{packets:,} packets in {elapsed:.1f} s; received {node.transport.received_packets:,}; dropped {dict(dropped)}")
        print(f"members: {members}; incarnation {node.swim.incarnation}")  # type: ignore[union-attr]
        assert members == ["target"], "an unauthenticated packet changed the membership"
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=1_000_000)
    trio.run(main, parser.parse_args().packets)
