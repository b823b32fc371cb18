"""The floor under any gateway built on an HTTP server: a trivial ASGI app, served by smg's own
server (`smg.http.server`) and by hypercorn's trio worker (when installed), under the same load.

    python bench/server_floor.py                 # both servers, 32 and 1 connections, one run
    python bench/server_floor.py --duration 20
    python bench/server_floor.py --serve smg PORT        # serve only (bench/overhead.py --floor)

The app reads the body and answers a fixed 110-byte JSON body. The load is `wrk` (one thread,
keep-alive, POST) when installed, else `loadgen.py`. Figures: requests/s, p50, and the server
process's CPU (user + system) per request.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from smg.http.asgi import Receive, Scope, Send, send_bytes, serve_lifespan
from smg.http.server import serve_app, server_config

BODY = b'{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"}}]}'
REQUEST = {"model": "sim-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    if scope["path"] == "/readiness":
        await send_bytes(send, 200, b"{}")
        return
    while (await receive()).get("more_body"):
        pass
    await send_bytes(send, 200, BODY)


def serve(server: str, port: int) -> None:
    if server == "smg":
        trio.run(serve_app, app, server_config("127.0.0.1", port))
        return
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.keep_alive_max_requests = 1_000_000
    trio.run(hypercorn_serve, app, config)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", nargs=2, metavar=("SERVER", "PORT"), help="serve with SERVER (smg|hypercorn) on PORT")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per server and concurrency")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    from cores import loadgen, wrk
    from overhead import HOST, family_cpu_seconds, free_port, start, stop, wait_http

    servers = ["smg"]
    try:
        import hypercorn  # noqa: F401

        servers.append("hypercorn")
    except ImportError:
        print("hypercorn is not installed: only smg's server is measured")
    logdir = Path(tempfile.mkdtemp(prefix="smg-bench-floor-"))
    script = logdir / "post.lua"
    script.write_text(
        f"wrk.method = 'POST'\nwrk.body = '{json.dumps(REQUEST)}'\nwrk.headers['Content-Type'] = 'application/json'\n"
    )
    use_wrk = shutil.which("wrk") is not None
    rows = []
    for server in servers:
        port = free_port()
        proc = start([sys.executable, __file__, "--serve", server, str(port)], logdir / f"{server}.log")
        try:
            wait_http(f"http://{HOST}:{port}/readiness")
            row = [server]
            for connections in (32, 1):
                before = family_cpu_seconds(proc.pid)
                if use_wrk:
                    rate, p50, _, count = wrk(port, connections, args.duration, script)
                else:
                    rate, p50, _, count = loadgen(port, connections, args.duration)
                cpu = family_cpu_seconds(proc.pid) - before
                row += [f"{rate:,.0f}", f"{p50:.2f}", f"{cpu / count * 1000:.3f}"]
            rows.append(row)
        finally:
            stop([proc])
    print(f"load: {'wrk' if use_wrk else 'loadgen.py'}, {args.duration:g}s per cell; a trivial ASGI app")
    header = ["server", "req/s c=32", "p50 ms", "CPU ms/req", "req/s c=1", "p50 ms c=1", "CPU ms/req c=1"]
    print("  ".join(f"{h:>14}" for h in header))
    for row in rows:
        print("  ".join(f"{v:>14}" for v in row))
    if len(rows) == 2:
        print(f"hypercorn / smg CPU per request: x{float(rows[1][3]) / float(rows[0][3]):.1f} (c=32), "
              f"x{float(rows[1][6]) / float(rows[0][6]):.1f} (c=1)")  # fmt: skip


if __name__ == "__main__":
    main()
