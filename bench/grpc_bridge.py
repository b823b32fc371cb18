"""gRPC streams inside trio, three ways, on the same streaming RPC, in one run: smg's own HTTP/2
data path on trio sockets (`smg.upstream.grpc.channel`, what Generate uses), `grpc.aio` on one
loop thread bridged to trio (`smg.aiothread`, what the other RPCs use), and grpcio's sync API in
trio's thread pool; with grpc.aio alone in asyncio as the floor of grpcio itself.

    python bench/grpc_bridge.py                         # 256-token streams, concurrency 1 and 16
    python bench/grpc_bridge.py --tokens 64 --streams 400 --concurrency 1 8 32

A server process (grpcio's sync server, the SGLang scheduler protocol from `smg-grpc-proto`)
answers every Generate with `--tokens` chunks of one token id each, as fast as it can. The client
(this process: trio plus the bridge under test) runs `--streams` streams at each concurrency and
the figure is the client's CPU time (user + system of every thread, `time.process_time`) per
streamed message: what the gateway would pay per token for the transport alone, before any
detokenizing. The server's CPU is not counted.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

# run as a script, this directory comes first on the path, and its grpc.py (the gateway benchmark)
# would shadow grpcio
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import grpc  # noqa: E402
import trio  # noqa: E402
from smg_grpc_proto.generated import sglang_scheduler_pb2 as pb  # noqa: E402
from smg_grpc_proto.generated import sglang_scheduler_pb2_grpc as pb_grpc  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from smg.aiothread import AioThread  # noqa: E402
from smg.upstream.grpc.channel import StreamChannel  # noqa: E402

GENERATE = "/sglang.grpc.scheduler.SglangScheduler/Generate"


class Streamer(pb_grpc.SglangSchedulerServicer):  # type: ignore[misc]
    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    def Generate(self, request: pb.GenerateRequest, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        for i in range(self.tokens):
            yield pb.GenerateResponse(
                request_id=request.request_id,
                chunk=pb.GenerateStreamChunk(token_ids=[i], prompt_tokens=8, completion_tokens=i + 1),
            )
        yield pb.GenerateResponse(
            request_id=request.request_id,
            complete=pb.GenerateComplete(finish_reason="length", prompt_tokens=8, completion_tokens=self.tokens),
        )


def serve(port: int, tokens: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    pb_grpc.add_SglangSchedulerServicer_to_server(Streamer(tokens), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(bound, flush=True)
    server.wait_for_termination()


def request(i: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=f"bench-{i}",
        tokenized=pb.TokenizedInput(input_ids=[1, 2, 3, 4, 5, 6, 7, 8]),
        sampling_params=pb.SamplingParams(max_new_tokens=256),
        stream=True,
    )


async def run_aio(address: str, streams: int, concurrency: int) -> int:
    aio = AioThread("bench-grpc")
    aio.start()
    channel = aio.run_sync(lambda: grpc.aio.insecure_channel(address))
    stub = pb_grpc.SglangSchedulerStub(channel)
    received = 0

    async def one(i: int) -> None:
        nonlocal received
        async with aio.stream(lambda: stub.Generate(request(i))) as messages:
            async for _ in messages:
                received += 1

    await _fan_out(one, streams, concurrency)
    await aio.call(channel.close)
    aio.stop()
    return received


async def run_h2(address: str, streams: int, concurrency: int) -> int:
    channel = StreamChannel(address, max_message_size=1 << 24)
    received = 0

    async def one(i: int) -> None:
        nonlocal received
        async with channel.stream(GENERATE, request(i).SerializeToString()) as batches:
            async for batch in batches:
                for data in batch:
                    pb.GenerateResponse.FromString(data)
                    received += 1

    async with trio.open_nursery() as nursery:
        channel.nursery = nursery
        await _fan_out(one, streams, concurrency)
        await channel.aclose()
    return received


async def run_threads(address: str, streams: int, concurrency: int) -> int:
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.SglangSchedulerStub(channel)
    received = 0
    limiter = trio.CapacityLimiter(max(concurrency, 1))

    async def one(i: int) -> None:
        nonlocal received
        call = stub.Generate(request(i))
        try:
            while True:
                message = await trio.to_thread.run_sync(next, call, None, limiter=limiter, abandon_on_cancel=True)
                if message is None:
                    return
                received += 1
        finally:
            call.cancel()

    await _fan_out(one, streams, concurrency)
    channel.close()
    return received


async def _fan_out(one, streams: int, concurrency: int) -> None:  # type: ignore[no-untyped-def]
    send, receive = trio.open_memory_channel[int](streams)
    for i in range(streams):
        send.send_nowait(i)
    send.close()

    async def worker() -> None:
        async for i in receive:
            await one(i)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)


def run_asyncio_alone(address: str, streams: int, concurrency: int) -> int:
    """The floor: grpc.aio in a plain asyncio program, no trio and no bridge."""
    import asyncio

    async def main() -> int:
        channel = grpc.aio.insecure_channel(address)
        stub = pb_grpc.SglangSchedulerStub(channel)
        received = 0
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(streams):
            queue.put_nowait(i)

        async def worker() -> None:
            nonlocal received
            while not queue.empty():
                async for _ in stub.Generate(request(queue.get_nowait())):
                    received += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await channel.close()
        return received

    return asyncio.run(main())


def measure(kind: str, address: str, streams: int, concurrency: int) -> tuple[float, float, int]:
    if kind == "floor":
        run_asyncio_alone(address, 4, 1)
        cpu, wall = time.process_time(), time.perf_counter()
        received = run_asyncio_alone(address, streams, concurrency)
        return time.process_time() - cpu, time.perf_counter() - wall, received
    runner = {"aio": run_aio, "threads": run_threads, "h2": run_h2}[kind]
    trio.run(runner, address, 4, 1)  # warm-up: channels, imports, the server's threads
    cpu, wall = time.process_time(), time.perf_counter()
    received = trio.run(runner, address, streams, concurrency)
    return time.process_time() - cpu, time.perf_counter() - wall, received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.tokens)
        return
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "0", "--tokens", str(args.tokens)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        address = f"127.0.0.1:{server.stdout.readline().strip()}"
        print(f"{args.streams} streams of {args.tokens} tokens per row; client CPU per streamed message")
        print(f"{'bridge':<28}{'conc':>6}{'µs CPU/msg':>12}{'msgs/s':>12}{'vs aio':>8}")
        for concurrency in args.concurrency:
            figures = {}
            labels = {
                "h2": "smg HTTP/2 on trio sockets",
                "aio": "grpc.aio on one loop thread",
                "threads": "sync API, trio thread pool",
                "floor": "floor: asyncio alone",
            }
            rates = {}
            for kind in labels:
                cpu, wall, received = measure(kind, address, args.streams, concurrency)
                figures[kind], rates[kind] = cpu / received * 1e6, received / wall
            for kind, label in labels.items():
                ratio = figures[kind] / figures["aio"]
                print(f"{label:<28}{concurrency:>6}{figures[kind]:>12.1f}{rates[kind]:>12.0f}{ratio:>8.2f}")
    finally:
        server.terminate()
        server.wait(5)


if __name__ == "__main__":
    main()
