"""Start-up and shutdown of one gateway node.

The node's root nursery owns the registrar (worker probes), the data-plane
server and the metrics server. Shutdown is cancellation: SIGTERM/SIGINT (or
`GatewayHandle.shutdown`) first flips readiness to `draining`, waits for
in-flight requests up to the grace period, then cancels the nursery. A
second signal cancels at once.
"""

from __future__ import annotations

import logging
import signal
import sys
from dataclasses import dataclass, field, replace
from functools import partial

import trio

from smg.cluster.node import ClusterNode, advertise_host
from smg.config import GatewayConfig
from smg.observability.metrics import MetricsApp
from smg.router.app import GatewayApp
from smg.router.background import Background
from smg.router.context import GatewayContext
from smg.router.workers import DuplicateWorker
from smg.serving import hypercorn_config, serve_app
from smg.storage import open_backend
from smg.storage.service import History
from smg.testing.engine import SimConfig

log = logging.getLogger("smg.server")

DRAIN_POLL_SECS = 0.05


@dataclass
class GatewayHandle:
    """What a started gateway reports: where it listens, and how to stop it."""

    ctx: GatewayContext
    urls: list[str]
    metrics_urls: list[str]
    _stop: trio.Event = field(default_factory=trio.Event)

    def shutdown(self) -> None:
        """Begin a graceful shutdown (the same path as SIGTERM)."""
        self._stop.set()


async def run_gateway(
    config: GatewayConfig,
    *,
    handle_signals: bool = False,
    task_status: trio.TaskStatus[GatewayHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    ctx = GatewayContext.create(config)
    backend = open_backend(config)
    if backend is not None:
        ctx.history = History(backend, _op_timeout(config), ctx.metrics)
    app = GatewayApp(ctx)
    async with trio.open_nursery() as nursery:
        if ctx.history is not None:
            await nursery.start(ctx.history.maintain)
            if config.max_background_responses > 0:
                ctx.background = Background(config.max_background_responses)
                await nursery.start(ctx.background.run)
        await nursery.start(ctx.registrar.run)
        await nursery.start(ctx.access_log.run)
        nursery.start_soon(ctx.maintain_policy)
        for url in config.worker_urls:
            try:
                ctx.add_worker(url)
            except DuplicateWorker:
                log.warning("ignoring duplicate worker URL %s", url)
        ctx.publish_worker_metrics()
        main = hypercorn_config(
            config.host, config.port, certfile=config.tls_cert_path, keyfile=config.tls_key_path, graceful_timeout=1.0
        )
        urls = await nursery.start(serve_app, app, main)
        metrics_urls: list[str] = []
        if config.prometheus_port is not None:
            metrics_config = hypercorn_config(config.metrics_host, config.prometheus_port, graceful_timeout=0.5)
            metrics_urls = await nursery.start(serve_app, MetricsApp(ctx.metrics), metrics_config)
        if config.ha_mesh:
            ctx.cluster = await nursery.start(ClusterNode(config, ctx).run, advertised_url(config, urls[0]))
        handle = GatewayHandle(ctx, urls, metrics_urls)
        log.info(
            "smg gateway listening on %s (policy %s, %d workers, metrics %s)",
            ", ".join(urls),
            config.policy,
            len(config.worker_urls),
            ", ".join(metrics_urls) or "off",
        )
        if handle_signals:
            nursery.start_soon(_watch_signals, handle, nursery.cancel_scope)
        task_status.started(handle)
        await handle._stop.wait()
        await drain(ctx, config.shutdown_grace_period_secs)
        if ctx.cluster is not None:
            await ctx.cluster.leave()
        nursery.cancel_scope.cancel()
    await ctx.upstream.aclose()
    if ctx.history is not None:
        await ctx.history.close()
    log.info("smg gateway stopped")


def _op_timeout(config: GatewayConfig) -> float:
    """The bound on one history call: the backend's own flag (SQLite shares PostgreSQL's)."""
    return config.redis_op_timeout_secs if config.history_backend == "redis" else config.postgres_op_timeout_secs


def advertised_url(config: GatewayConfig, bound_url: str) -> str:
    """The data-plane URL peers and clients reach this node at (the bind address may be 0.0.0.0)."""
    scheme, _, rest = bound_url.partition("://")
    port = rest.rpartition(":")[2]
    return f"{scheme}://{advertise_host(config)}:{port}"


async def drain(ctx: GatewayContext, grace: float) -> None:
    ctx.draining = True
    log.info("draining: readiness now answers 503; waiting up to %gs for %d in-flight requests", grace, ctx.in_flight)
    with trio.move_on_after(grace) as scope:
        while ctx.in_flight:
            await trio.sleep(DRAIN_POLL_SECS)
    if scope.cancelled_caught:
        log.warning("grace period over with %d requests still in flight; closing", ctx.in_flight)


async def _watch_signals(handle: GatewayHandle, root: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if not handle._stop.is_set():
                log.info("received %s: shutting down gracefully", signal.Signals(signum).name)
                handle.shutdown()
            else:
                log.warning("received %s again: stopping now", signal.Signals(signum).name)
                root.cancel()
                return


async def run_serve(
    config: GatewayConfig,
    sim: SimConfig,
    count: int,
    sim_host: str,
    sim_port: int,
    *,
    task_status: trio.TaskStatus[GatewayHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The embedded default: simulated workers in a child process plus a gateway over them."""
    async with trio.open_nursery() as nursery:
        urls = [f"http://{sim_host}:{sim_port + i}" for i in range(count)]
        command = [
            sys.executable, "-m", "smg", "sim-worker", "--host", sim_host, "--port", str(sim_port),
            "--count", str(count), "--log-level", config.log_level, *sim_flags(sim),
        ]  # fmt: skip
        nursery.start_soon(partial(trio.run_process, command, check=False))
        gateway_config = replace(config, worker_urls=(*config.worker_urls, *urls))

        async def gateway_then_workers(task_status: trio.TaskStatus[GatewayHandle]) -> None:
            await run_gateway(gateway_config, handle_signals=True, task_status=task_status)
            nursery.cancel_scope.cancel()  # the gateway has drained: stop the workers too

        task_status.started(await nursery.start(gateway_then_workers))


def sim_flags(sim: SimConfig) -> list[str]:
    """The `smg sim-worker` flags that reproduce `sim` in a child process."""
    out = []
    for key, value in sim.as_dict().items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                out.append(flag)
        else:
            out += [flag, str(value)]
    return out
