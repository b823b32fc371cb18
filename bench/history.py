"""History storage per backend: the store alone, and what it costs a gateway, in one run.

    python bench/history.py                        # memory, sqlite, postgres, redis
    python bench/history.py --backends sqlite postgres --count 4000

1. The backend alone (no HTTP): stored responses per second from one
   thread and from 8, and the latency of reading one back (p50, p99).
2. Through a gateway (one zero-delay simulated worker, `max_output_tokens`
   1): `POST /v1/responses` at 16 concurrent connections with `store` on,
   beside the same load with `store: false` (no storage at all), and `GET
   /v1/responses/{id}` latency from one client.

PostgreSQL and Redis are the machine's (127.0.0.1:5432 database `test`,
127.0.0.1:6379); each run uses its own database / key prefix and removes it.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import trio

from smg.storage.base import HistoryBackend
from smg.storage.memory import MemoryHistory
from smg.storage.records import StoredResponse, new_id
from smg.storage.redis_store import RedisHistory
from smg.storage.sql import SqlHistory

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from loadgen import build_request, run_load
from overhead import free_port, start, stop, wait_http

from tests.storage_backends import REDIS_URL, postgres_database

HOST = "127.0.0.1"


@contextmanager
def opened(kind: str, workdir: Path) -> Iterator[tuple[HistoryBackend, list[str]]]:
    """The backend, and the gateway flags that select the same store."""
    if kind == "memory":
        yield MemoryHistory(time.time, max_responses=10**7), ["--history-backend", "memory"]
    elif kind == "sqlite":
        path = workdir / f"history-{secrets.token_hex(4)}.db"
        store = SqlHistory.sqlite(str(path))
        yield store, ["--history-db-path", str(path)]
        store.close()
    elif kind == "postgres":
        with postgres_database() as url:
            store = SqlHistory.postgres(url, pool_size=16, op_timeout_secs=5)
            yield store, ["--history-backend", "postgres", "--postgres-db-url", url]
            store.close()
    else:
        prefix = f"smg-bench-{secrets.token_hex(4)}:"
        store = RedisHistory(REDIS_URL, prefix=prefix)
        yield store, ["--history-backend", "redis", "--redis-url", REDIS_URL]
        keys = list(store.redis.scan_iter(match=prefix + "*"))
        for start_at in range(0, len(keys), 1000):
            store.redis.delete(*keys[start_at : start_at + 1000])
        store.close()


def sample_response(n: int) -> StoredResponse:
    output = [{"type": "message", "id": new_id("message"), "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": "an answer of a few words " * 8, "annotations": []}]}]  # fmt: skip
    data = {"id": new_id("response"), "object": "response", "status": "completed", "model": "m", "output": output}
    inputs = [{"type": "message", "id": new_id("message"), "role": "user",
               "content": [{"type": "input_text", "text": f"question {n} " * 20}]}]  # fmt: skip
    return StoredResponse(data["id"], "bench", int(time.time()), data, inputs)


def backend_alone(store: HistoryBackend, count: int) -> dict[str, float]:
    store.migrate()
    records = [sample_response(n) for n in range(count)]
    started = time.perf_counter()
    for record in records[: count // 2]:
        store.put_responses([record])
    one_thread = (count // 2) / (time.perf_counter() - started)
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda r: store.put_responses([r]), records[count // 2 :]))
    eight_threads = (count - count // 2) / (time.perf_counter() - started)
    reads = []
    for record in random.Random(1).sample(records, min(1000, count)):
        t = time.perf_counter()
        assert store.get_response("bench", record.id) is not None
        reads.append(time.perf_counter() - t)
    return {"put_1": one_thread, "put_8": eight_threads, **percentiles(reads)}


def percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000,
    }


def through_gateway(worker_url: str, flags: list[str], count: int, logdir: Path) -> dict[str, float]:
    port = free_port()
    proc = start(
        [sys.executable, "-m", "smg", "--host", HOST, "--port", str(port), "--worker-urls", worker_url,
         "--prometheus-port", "0", "--log-level", "warn", "--policy", "round_robin", *flags],
        logdir / f"gateway-{port}.log",
    )  # fmt: skip
    try:
        wait_http(f"http://{HOST}:{port}/readiness")
        figures = {}
        for name, store in (("stored", True), ("unstored", False)):
            body = json.dumps({"model": "sim-model", "input": "how fast is storage?", "max_output_tokens": 1, "store": store})
            request = build_request(HOST, port, "/v1/responses", body.encode())
            trio.run(run_load, HOST, port, request, 16, 200)  # warm-up
            result = trio.run(run_load, HOST, port, request, 16, count)
            if result.errors or set(result.statuses) != {200}:
                raise RuntimeError(f"{name}: errors {result.errors}, statuses {result.statuses}")
            figures[f"{name}_rps"] = result.rate
            figures[f"{name}_p50_ms"] = result.percentile(50) * 1000
        with httpx.Client(base_url=f"http://{HOST}:{port}") as client:
            ids = [client.post("/v1/responses", json={"model": "sim-model", "input": f"r{n}", "max_output_tokens": 1}).json()["id"]
                   for n in range(300)]  # fmt: skip
            reads = []
            for response_id in ids:
                t = time.perf_counter()
                client.get(f"/v1/responses/{response_id}").raise_for_status()
                reads.append(time.perf_counter() - t)
        figures.update({f"get_{k}": v for k, v in percentiles(reads).items()})
        return figures
    finally:
        stop([proc])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["memory", "sqlite", "postgres", "redis"])
    parser.add_argument("--count", type=int, default=2000, help="responses per measurement (default: %(default)s)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="smg-bench-history-"))
    worker_port = free_port()
    worker = start(
        [sys.executable, "-m", "smg", "sim-worker", "--host", HOST, "--port", str(worker_port), "--ttft-ms", "0",
         "--tpot-ms", "0", "--log-level", "warn"],
        workdir / "worker.log",
    )  # fmt: skip
    try:
        wait_http(f"http://{HOST}:{worker_port}/health")
        print(f"{'backend':<10}{'put/s 1 thr':>12}{'put/s 8 thr':>12}{'get p50':>9}{'get p99':>9}"
              f"{'gw stored/s':>13}{'unstored/s':>12}{'ratio':>7}{'gw p50 ms':>10}{'GET p50':>9}{'GET p99':>9}")  # fmt: skip
        for kind in args.backends:
            with opened(kind, workdir) as (store, flags):
                alone = backend_alone(store, args.count)
                gw = through_gateway(f"http://{HOST}:{worker_port}", flags, args.count, workdir)
            print(
                f"{kind:<10}{alone['put_1']:>12.0f}{alone['put_8']:>12.0f}{alone['p50_ms']:>8.2f}m{alone['p99_ms']:>8.2f}m"
                f"{gw['stored_rps']:>13.0f}{gw['unstored_rps']:>12.0f}{gw['stored_rps'] / gw['unstored_rps']:>7.2f}"
                f"{gw['stored_p50_ms']:>10.1f}{gw['get_p50_ms']:>8.2f}m{gw['get_p99_ms']:>8.2f}m",
                flush=True,
            )
    finally:
        stop([worker])


if __name__ == "__main__":
    main()
