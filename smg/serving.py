"""Run an ASGI app on hypercorn's trio worker inside the caller's nursery."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from smg.asgi import ASGIApp


def format_bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hypercorn_config(
    host: str,
    port: int,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    graceful_timeout: float = 5.0,
    keep_alive_timeout: float = 75.0,
) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [format_bind(host, port)]
    config.accesslog = None  # the gateway writes its own, one line per request
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = graceful_timeout
    config.keep_alive_timeout = keep_alive_timeout
    # Load balancers and gateways hold long-lived keep-alive connections; hypercorn's
    # default closes each after 1,000 requests, which costs a reconnect for nothing.
    config.keep_alive_max_requests = 1_000_000
    config.backlog = 1024
    if certfile:
        config.certfile = certfile
        config.keyfile = keyfile
    return config


async def serve_app(
    app: ASGIApp,
    config: HypercornConfig,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled or `shutdown_trigger` returns; reports the bound URLs."""
    kwargs = {"shutdown_trigger": shutdown_trigger} if shutdown_trigger else {}
    await serve(app, config, task_status=task_status, mode="asgi", **kwargs)  # type: ignore[arg-type]


def bound_port(binds: list[str]) -> int:
    """Port of the first URL hypercorn reports, e.g. 'http://127.0.0.1:41234'."""
    return int(binds[0].rsplit(":", 1)[1])
