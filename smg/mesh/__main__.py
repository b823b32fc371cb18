"""Run one mesh node on its own: `python -m smg.mesh --name n1 --port 7946 --seeds HOST:PORT ...`.

For benchmarks and experiments (the gateway embeds the node itself): prints
one JSON line per membership event and a stats line every second.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any

import trio

from smg.mesh.keyring import Keyring, parse_key
from smg.mesh.node import MeshNode


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
    keyring = Keyring([parse_key(k) for k in args.key], args.label) if args.key else None
    node = MeshNode(args.name, args.host, args.port, seeds=args.seeds, keyring=keyring)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        emit({"t": time.time(), "ready": node.address})
        events = node.subscribe()

        async def stats() -> None:
            while True:
                await trio.sleep(1.0)
                emit({"t": time.time(), "sent_bytes": node.transport.sent_bytes, "received_bytes": node.transport.received_bytes})

        nursery.start_soon(stats)
        async for event in events:
            emit({"t": time.time(), "member": event.name, "state": event.state.value, "incarnation": event.incarnation})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m smg.mesh")
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7946)
    parser.add_argument("--seeds", nargs="*", default=[])
    parser.add_argument("--key", action="append", default=[], help="base64 AES key (repeatable; the first is primary)")
    parser.add_argument("--label", default="", help="cluster label, bound into every packet")
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main, parser.parse_args())
