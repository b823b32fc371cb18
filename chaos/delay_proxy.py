"""A TCP proxy that adds latency: `python -m chaos.delay_proxy --listen H:P --to H:P --delay-ms 150`.

This kernel has no `tc netem`, so the chaos suite adds delay in the
application: every chunk read in either direction is forwarded `delay`
later, in order, so the connection behaves like a longer wire (one-way
delay each way, throughput unchanged) rather than a slower one.
"""

from __future__ import annotations

import argparse
import math

import trio

CHUNK = 65536


async def _pump(source: trio.SocketStream, sink: trio.SocketStream, delay: float) -> None:
    send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)

    async def deliver() -> None:
        async for due, data in receive:
            await trio.sleep_until(due)
            if not data:  # the source half-closed: pass that on, as a wire would
                await sink.send_eof()
                return
            await sink.send_all(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(deliver)
        async with send:
            while True:
                data = await source.receive_some(CHUNK)
                await send.send((trio.current_time() + delay, data))
                if not data:
                    return


async def _connection(client: trio.SocketStream, target: tuple[str, int], delay: float) -> None:
    try:
        async with client, await trio.open_tcp_stream(*target) as upstream, trio.open_nursery() as nursery:
            nursery.start_soon(_pump, client, upstream, delay)
            nursery.start_soon(_pump, upstream, client, delay)
    except* (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # either side went away: the other sees its connection close


async def serve(listen: tuple[str, int], target: tuple[str, int], delay: float) -> None:
    await trio.serve_tcp(lambda s: _connection(s, target, delay), listen[1], host=listen[0])


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m chaos.delay_proxy", description=__doc__)
    parser.add_argument("--listen", type=_address, required=True, help="HOST:PORT to accept on")
    parser.add_argument("--to", type=_address, required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, default=100.0, help="one-way delay added each way")
    args = parser.parse_args()
    trio.run(serve, args.listen, args.to, args.delay_ms / 1000)


if __name__ == "__main__":
    main()
