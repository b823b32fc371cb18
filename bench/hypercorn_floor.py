"""A trivial ASGI app on hypercorn's trio worker: the floor under any gateway built on it.

    python bench/hypercorn_floor.py PORT

`bench/overhead.py --floor` runs it as one more target, so the figures show
how much of smg's per-request CPU is the HTTP server itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from smg.http.asgi import Receive, Scope, Send, send_bytes, serve_lifespan
from smg.http.server import hypercorn_config, serve_app

BODY = b'{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"}}]}'


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


if __name__ == "__main__":
    trio.run(serve_app, app, hypercorn_config("127.0.0.1", int(sys.argv[1])))
