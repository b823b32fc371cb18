"""Start-up and shutdown of one gateway node.

The node's root nursery owns the registrar (worker probes), the data-plane
server, the metrics server and, with `--health-check-port`, the probe listener. Shutdown is cancellation after a drain:
SIGTERM/SIGINT (or `GatewayHandle.shutdown`) flips readiness to `draining`,
keeps accepting for a settle window while balancers notice, then stops
accepting and waits for in-flight requests up to the grace period, leaves
the mesh, and cancels the nursery. A second signal cancels at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from smg.app import GatewayApp, health, readiness
from smg.background import Background
from smg.cluster.node import ClusterNode, advertise_host
from smg.config import GatewayConfig
from smg.context import GatewayContext
from smg.discovery.apply import Callbacks
from smg.discovery.file import FileDiscovery
from smg.discovery.kubernetes import KubernetesApi, KubernetesDiscovery, api_access
from smg.discovery.manifest import WorkerSpec
from smg.discovery.pods import WorkerRules, parse_selector
from smg.http.asgi import ASGIApp, Receive, Scope, Send, serve_lifespan
from smg.http.errors import GatewayError
from smg.http.exchange import Exchange
from smg.http.server import BindError, ServeError, ServerConfig, format_bind, serve_app, server_config
from smg.observability import tracing
from smg.observability.metrics import GatewayMetrics, MetricsApp
from smg.observability.request_id import request_id_for
from smg.reconfigure import ConfigFile, Reconfigure
from smg.simworker.engine import SimConfig
from smg.storage import open_backend
from smg.storage.service import History
from smg.ui.sampler import run_sampler
from smg.ui.views import peer_view
from smg.workers.providers import PROVIDERS, api_of, launch_keys
from smg.workers.registry import DuplicateWorker, worker_id_for
from smg.workers.spec import replaced_settings

log = logging.getLogger("smg.server")

DRAIN_POLL_SECS = 0.05
CLOSE_SECS = 10.0  # bound on closing the upstream pool and the history store at exit
SIM_START_SECS = 30.0  # `smg serve`: longest wait for the simulated workers' child to report its ports
SIM_STOP_SECS = 5.0  # then how long it may take to stop before it is killed
SETTLE_MAX_SECS = 5.0  # the reference's cap on the settle window


@dataclass
class GatewayHandle:
    """What a started gateway reports: where it listens, and how to stop it."""

    ctx: GatewayContext
    urls: list[str]
    metrics_urls: list[str]
    probe_urls: list[str] = field(default_factory=list)  # --health-check-port's listener, if any
    _stop: trio.Event = field(default_factory=trio.Event)

    def shutdown(self) -> None:
        """Begin a graceful shutdown (the same path as SIGTERM)."""
        self._stop.set()


async def run_gateway(
    config: GatewayConfig,
    *,
    handle_signals: bool = False,
    reconfigure: Reconfigure | None = None,
    settle: Callable[[], None] | None = None,
    task_status: trio.TaskStatus[GatewayHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`reconfigure`: the settings built again as the command line built them, for SIGHUP.
    `settle`: run just before the data plane takes connections (the process's owner settles
    its heap then: `smg.cli.settle_heap`), so its pause falls on no request."""
    ctx = GatewayContext.create(config)
    try:
        await _run_gateway(ctx, config, handle_signals, reconfigure, task_status, settle)
    finally:
        # Also when cancelled or failing (a port taken, `smg serve` losing its workers): the
        # pool's sockets and the history store (a SQLite file, a PostgreSQL pool) are closed
        # on every way out, within a bound, shielded from the cancellation that got us here.
        with trio.move_on_after(CLOSE_SECS, shield=True):
            await ctx.upstream.aclose()
            if ctx.history is not None:
                await ctx.history.close()
        if config.enable_trace:  # the last spans, after the last requests ended (within tracing.FLUSH_SECS)
            with trio.CancelScope(shield=True):
                await tracing.stop()
    log.info("smg gateway stopped")


async def _run_gateway(
    ctx: GatewayContext,
    config: GatewayConfig,
    handle_signals: bool,
    reconfigure: Reconfigure | None,
    task_status: trio.TaskStatus[GatewayHandle],
    settle: Callable[[], None] | None = None,
) -> None:
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
        if ctx.engines is not None:
            await nursery.start(ctx.engines.run)  # before the registrar: it probes gRPC workers through it
        await nursery.start(ctx.registrar.run)
        await nursery.start(ctx.access_log.run)
        if app.guard is not None and app.guard.jwks is not None:
            await nursery.start(app.guard.jwks.run)  # --jwt-issuer's keys: fetched now, then kept fresh
        nursery.start_soon(ctx.maintain_policy)
        nursery.start_soon(run_sampler, ctx)  # the cluster page's last 15 minutes
        add_workers(ctx, config.worker_urls)
        config_file = ConfigFile(ctx, discovered_by(ctx), reconfigure)
        config_file.start()
        main = server_config(
            config.host,
            config.port,
            certfile=config.tls_cert_path,
            keyfile=config.tls_key_path,
            header_read_timeout=config.header_read_timeout_secs,
            keep_alive_timeout=config.idle_connection_timeout_secs,
            write_timeout=config.idle_connection_timeout_secs,  # a client reading nothing is as good as idle
            body_timeout=config.request_timeout_secs,  # the whole body is part of the request: its end-to-end bound
            max_connections=config.max_client_connections,
            shared_port=config.is_process,
            on_refused=partial(count_refused, ctx.metrics),
        )
        data_plane = DataPlane(app, main)
        urls: list[str] = []
        if not config.is_process:
            if settle is not None:
                settle()
            urls = await nursery.start(data_plane.serve)
        metrics_urls: list[str] = []
        if config.prometheus_port is not None:
            metrics_config = server_config(
                config.metrics_host, config.prometheus_port, graceful_timeout=0.5, port_flag="--prometheus-port"
            )
            metrics_urls = await nursery.start(serve_app, MetricsApp(ctx.metrics), metrics_config)
        probe_urls: list[str] = []
        if config.health_check_port is not None:
            probe_urls = await nursery.start(serve_probes, ctx, config)
        if config.ha_mesh:
            bound = urls[0] if urls else shared_url(config)
            ctx.cluster = await nursery.start(ClusterNode(config, ctx).run, advertised_url(config, bound))
            ctx.cluster.describe = partial(peer_view, ctx)
        if config.discovery_provider == "file" and config.discovery_file:
            discovery = FileDiscovery(config.discovery_file, config.discovery_check_interval_secs, discovered_by(ctx))
            await nursery.start(discovery.run)
        elif config.kubernetes_discovery:
            await nursery.start(kubernetes_discovery(ctx, config).run)
        if config.is_process:
            # --processes N: the kernel gives this process its share of new connections as soon
            # as it binds the shared port, so it binds once it can answer them (a restarted one
            # would otherwise answer 503 while its siblings could serve), or after a bound
            await until_ready(ctx, PROCESS_READY_SECS)
            if settle is not None:
                settle()
            urls = await nursery.start(data_plane.serve)
        if config.enable_trace:  # now that the mesh node, if any, has its name
            tracing.start(config.otlp_traces_endpoint, ctx.cluster.name if ctx.cluster is not None else None)
        handle = GatewayHandle(ctx, urls, metrics_urls, probe_urls)
        if probe_urls:
            log.info("health probes (/health, /liveness, /readiness) also served on %s", ", ".join(probe_urls))
        log.info(
            "smg gateway listening on %s (policy %s, %d workers, metrics %s)",
            ", ".join(urls),
            config.policy,
            len(config.worker_urls),
            ", ".join(metrics_urls) or "off",
        )
        if handle_signals:
            nursery.start_soon(_watch_signals, handle, nursery.cancel_scope)
            await nursery.start(config_file.run)
        if config.process_parent_fd is not None:
            nursery.start_soon(_watch_parent, handle, config.process_parent_fd)
        task_status.started(handle)
        await handle._stop.wait()
        await drain(ctx, config.shutdown_grace_period_secs, data_plane)
        # Leave only now: while it still serves, the node must keep replicating its load
        # and tenant counts (peers would otherwise admit its share of a limit on top) and
        # keep receiving registry and health changes. Peers send it no requests, so staying a
        # member to the end costs nothing.
        if ctx.cluster is not None:
            await ctx.cluster.leave()
        nursery.cancel_scope.cancel()


PROBE_HANDLERS = {"/health": health, "/liveness": health, "/readiness": readiness}
PROBE_MAX_CONNECTIONS = 64  # orchestrators and balancers: a few probes at a time
PROBE_GRACEFUL_SECS = 0.5  # a probe's answer is a few bytes: nothing to wait for at exit


class ProbeApp:
    """`--health-check-port`: `/health`, `/liveness` and `/readiness`, and nothing else.

    The handlers are the main port's own (`smg.app`), so the answers are the
    same on both ports: readiness 503 `draining` from the first moment of a
    shutdown, liveness 200 throughout. Like the reference's probe router it
    has no middleware: no API key (probes are open on the main port too), no
    CORS, no access log or HTTP metrics; the less a probe shares with the
    request path, the less can slow it. Anything else answers 404, in the
    gateway's error shape, naming what this port serves (the reference's empty
    404 leaves an operator guessing).
    """

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await serve_lifespan(receive, send)
            return
        path = scope["path"]
        ex = Exchange(scope, receive, send, request_id_for(scope, self.ctx.request_id_headers), path)
        handler = PROBE_HANDLERS.get(path)
        if handler is None:
            await ex.fail(
                GatewayError(
                    404,
                    "not_found",
                    f"no route for {scope['method']} {path}: this port (--health-check-port) serves "
                    "only GET /health, /liveness and /readiness",
                )
            )
        elif scope["method"] != "GET":
            await ex.fail(GatewayError(405, "method_not_allowed", f"{scope['method']} is not allowed on {path}"))
        else:
            await handler(self.ctx, ex)


async def serve_probes(
    ctx: GatewayContext, config: GatewayConfig, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    """The dedicated probe listener, until the node's nursery is cancelled at the very end.

    The reference serves these probes from a tokio runtime on an OS thread of
    its own, so a starved request runtime cannot delay them. The honest
    equivalent in one trio process is a listener of its own: its own socket
    and listen backlog, no connection cap shared with the data plane (a main
    port at `--max-client-connections`, its new connections waiting in the
    kernel's backlog, does not hold back one probe), its own per-connection
    deadlines, and an answer that never touches a worker, the admission queue
    or the history store. What it cannot do is run while the event loop itself
    is blocked: a CPU-bound stretch in the process delays probes as much as
    requests (there is no such stretch by design; trio's loop is shared).

    It stays open through the whole drain, so an orchestrator sees readiness
    503 `draining` rather than a refused connection, and closes with the node.
    Plain HTTP, as the reference's (`--tls-cert-path` is the main port's); it
    binds `--host`, and a port already taken ends start-up with one line.
    """
    assert config.health_check_port is not None
    probe_config = server_config(
        config.host,
        config.health_check_port,
        graceful_timeout=PROBE_GRACEFUL_SECS,
        header_read_timeout=config.header_read_timeout_secs,
        keep_alive_timeout=config.idle_connection_timeout_secs,
        write_timeout=config.idle_connection_timeout_secs,
        body_timeout=config.header_read_timeout_secs,  # probes carry no body: a body gets as long as a head
        max_connections=PROBE_MAX_CONNECTIONS,  # a flood here must not take the descriptors the main port needs
        port_flag="--health-check-port",
        shared_port=config.is_process,
    )
    await serve_app(ProbeApp(ctx), probe_config, task_status=task_status)


def add_workers(ctx: GatewayContext, urls: Iterable[str], *, engines: bool = False) -> None:
    """Register workers the operator named at start (`--worker-urls`, `smg serve`'s own); with
    `--backend openai|anthropic` the named ones are hosted providers, each speaking the API of
    its host (or the backend's) with its key from the environment. `engines`: `smg serve`'s simulated workers, engines whatever the backend."""
    urls = tuple(urls)
    provider = ctx.config.backend if ctx.config.backend in PROVIDERS and not engines else None
    keys = launch_keys(provider, urls, os.environ) if provider is not None else {}
    for url in urls:
        try:
            if provider is not None:
                ctx.add_worker(url, provider=api_of(provider, url), api_key=keys[url])
            else:
                ctx.add_worker(url)
        except DuplicateWorker:
            log.warning("ignoring duplicate worker URL %s", url)
    ctx.publish_worker_metrics()


def kubernetes_discovery(ctx: GatewayContext, config: GatewayConfig) -> KubernetesDiscovery:
    """Worker pods into the registry and, with --ha-mesh and --router-selector, gateway pods into the
    mesh's seeds. Under discovery --remove-unhealthy-workers defaults to on, as the reference's: a
    worker removed for failing comes back with the next list while its pod stands, and is probed afresh."""
    if config.remove_unhealthy_workers is None:
        ctx.registrar.remove_failed = True
    cluster = ctx.cluster
    on_routers = cluster.router_seeds.set if cluster is not None and cluster.router_seeds is not None else None
    return KubernetesDiscovery(
        KubernetesApi(api_access(config.kubernetes_api_url, config.kubernetes_service_account_dir, os.environ)),
        WorkerRules(parse_selector(config.selector), config.service_discovery_port, config.model_id_from),
        discovered_by(ctx),
        namespace=config.service_discovery_namespace,
        resync=config.discovery_check_interval_secs,
        router_selector=parse_selector(config.router_selector) if on_routers is not None else None,
        on_routers=on_routers,
    )


def discovered_by(ctx: GatewayContext) -> Callbacks:
    """How a discovery source changes the registry: as `POST /workers`, `PATCH` and `DELETE` do (and
    so the cluster hears of it). A worker already registered (by a flag, an operator, or another
    gateway's discovery through the cluster) is adopted rather than refused."""

    def add(spec: WorkerSpec) -> None:
        worker = ctx.registry.get(worker_id_for(spec.url))
        if worker is not None and worker.draining:
            raise ValueError("it is still draining after its removal; added at the next reread")
        try:
            ctx.add_worker(spec.url, model_id=spec.model_id, **spec.settings)
        except DuplicateWorker:
            update(spec)  # listed by the manifest: discovery's now, whoever registered it first
        ctx.publish_worker_metrics()

    def update(spec: WorkerSpec) -> None:
        worker = ctx.registry.get(worker_id_for(spec.url))
        if worker is not None:
            for key, value in replaced_settings(spec.settings).items():  # a setting the entry dropped: its default
                setattr(worker, key, value)
            if worker.model_id != spec.model_id:  # a pod's model id (--model-id-from) changed: serve the new one
                worker.model_id = spec.model_id
                ctx.registry.refresh()
            ctx.worker_settings_changed(worker)

    def present(url: str) -> bool:
        worker = ctx.registry.get(worker_id_for(url))
        return worker is not None and not worker.draining

    def remove(url: str) -> None:
        worker = ctx.registry.get(worker_id_for(url))
        if worker is not None:
            ctx.remove_worker(worker)

    return Callbacks(add=add, update=update, remove=remove, present=present)


def _op_timeout(config: GatewayConfig) -> float:
    """The bound on one history call: the backend's own flag (SQLite shares PostgreSQL's)."""
    return config.redis_op_timeout_secs if config.history_backend == "redis" else config.postgres_op_timeout_secs


PROCESS_READY_SECS = 10.0  # longest a process of --processes N waits to be ready before taking connections
READY_POLL_SECS = 0.05


async def until_ready(ctx: GatewayContext, limit: float) -> None:
    """Until `/readiness` would answer 200, at most `limit` seconds (then a warning)."""
    with trio.move_on_after(limit) as waited:
        while ctx.readiness()[0] != 200:
            await trio.sleep(READY_POLL_SECS)
    if waited.cancelled_caught:
        reason = ctx.readiness()[1].get("reason", "")
        log.warning("not ready after %gs (%s): taking connections on --port anyway", limit, reason)


def count_refused(metrics: GatewayMetrics, status: int, code: str) -> None:
    """A request the HTTP parser refused (malformed, head too large, HTTP/2 without TLS):
    counted as the app's answers are, under the path `-`, since it has none."""
    metrics.http_responses("-", str(status)).inc()
    metrics.router_errors("-", code).inc()


def shared_url(config: GatewayConfig) -> str:
    """The data plane's URL before it is bound (a fixed --port, as --processes requires)."""
    scheme = "https" if config.tls_cert_path else "http"
    return f"{scheme}://{format_bind(config.host, config.port)}"


def advertised_url(config: GatewayConfig, bound_url: str) -> str:
    """The data-plane URL peers and clients reach this node at (the bind address may be 0.0.0.0)."""
    scheme, _, rest = bound_url.partition("://")
    port = rest.rpartition(":")[2]
    return f"{scheme}://{advertise_host(config)}:{port}"


class DataPlane:
    """The data-plane server, with a way to stop accepting that is not cancellation.

    Cancelling the server drops every connection at once, requests under way
    included. Its graceful shutdown (`shutdown_trigger`) instead closes the
    listening socket, closes idle keep-alive connections, lets each busy one
    finish its response and close, and returns when none is left or after
    `graceful_timeout`. `drain` needs that as a step of its own, after the
    settle window, and needs to know when it has finished.
    """

    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self.app, self.config = app, config
        self.closed = trio.Event()  # the server returned: no connection is left
        self._stop = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve_app(self.app, self.config, shutdown_trigger=self._stop.wait, task_status=task_status)
        finally:
            self.closed.set()

    def stop_accepting(self, within: float) -> None:
        """Close the listener now; cut the connections still open after `within` seconds."""
        self.config.graceful_timeout = within  # the server reads it when the trigger fires
        self._stop.set()


def settle_secs(grace: float) -> float:
    """How long a draining node keeps accepting: min(grace / 2, 5 s), as the reference does."""
    return min(grace / 2, SETTLE_MAX_SECS)


async def drain(ctx: GatewayContext, grace: float, data_plane: DataPlane) -> None:
    """Take this node out of rotation without failing a request a client has sent.

    Readiness answers 503 at once, but a balancer (or Kubernetes, whose
    endpoint watchers also take a moment) keeps sending new connections until
    its next probe; refusing them then would fail requests only the client
    could retry. So for the settle window the node still accepts and serves
    everything. Then the listener closes: a refused connection carried no
    request, so a balancer may resend it elsewhere. What is in flight gets
    the rest of the grace period; the server cuts what is left after that.
    """
    ctx.draining = True
    settle = settle_secs(grace)
    log.info("draining: readiness now answers 503; still accepting for %gs while balancers take this node out", settle)
    await trio.sleep(settle)
    rest = max(0.0, grace - settle)
    log.info("no longer accepting connections; waiting up to %gs for %d in-flight requests", rest, ctx.in_flight)
    data_plane.stop_accepting(within=rest)
    with trio.move_on_after(rest) as scope:
        await data_plane.closed.wait()
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


async def _watch_parent(handle: GatewayHandle, fd: int) -> None:
    """One of the processes of `--processes N`: the parent holds the write end of this pipe and
    never writes, so end-of-file means the parent is gone (even by SIGKILL); shut down, as on
    SIGTERM, rather than serve on without a supervisor."""
    async with trio.lowlevel.FdStream(fd) as pipe:
        while await pipe.receive_some(64):
            pass
    if not handle._stop.is_set():
        log.warning("the parent of --processes is gone: shutting down gracefully")
        handle.shutdown()


async def run_serve(
    config: GatewayConfig,
    sim: SimConfig,
    count: int,
    sim_host: str,
    sim_port: int | None,
    *,
    reconfigure: Reconfigure | None = None,
    task_status: trio.TaskStatus[GatewayHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The embedded default: a gateway plus simulated workers in a child process it supervises.

    The gateway binds first (its port, metrics and mesh listeners), then the
    child binds free ports (or `--sim-port`) and reports them: the workers can
    never take a port the gateway needs, and a port left taken by anything
    fails at once with one line naming its flag. If the child fails to start
    or dies, `smg serve` stops with one line and a non-zero exit rather than
    restarting it: serving 503 behind a restart loop would hide the crash,
    and a supervisor one level up (systemd, Kubernetes, a shell loop) already
    owns restarts.
    """
    async with trio.open_nursery() as nursery:

        async def gateway_then_workers(task_status: trio.TaskStatus[GatewayHandle]) -> None:
            await run_gateway(config, handle_signals=True, reconfigure=reconfigure, task_status=task_status)
            nursery.cancel_scope.cancel()  # the gateway has drained: stop the workers too

        handle: GatewayHandle = await nursery.start(gateway_then_workers)
        command = [
            # -P: sys.path does not start with the working directory, so an `smg/` folder there
            # cannot shadow the installed package in the child
            sys.executable, "-P", "-m", "smg", "sim-worker", "--supervised", "--host", sim_host,
            "--port", str(sim_port or 0), "--count", str(count), "--log-level", config.log_level,
            *(["--log-json"] if config.log_json else []), *sim_flags(sim),
        ]  # fmt: skip
        urls = await nursery.start(supervise_sim_workers, command, sim_port)
        add_workers(handle.ctx, urls, engines=True)
        task_status.started(handle)


async def supervise_sim_workers(
    command: list[str], sim_port: int | None, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the `smg sim-worker --supervised` child; report its URLs; raise `ServeError` if it fails or dies.

    The child is told to stop by closing its stdin (it then closes its
    servers), and killed if it has not exited `SIM_STOP_SECS` later. It runs
    in its own session, so a Ctrl-C in the terminal reaches only this process,
    which drains first and then stops the child.
    """
    process = await trio.lowlevel.open_process(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
    try:
        report = await _first_line(process)
        if "urls" not in report:
            error = report.get("error")
            if isinstance(error, dict):
                raise BindError("--sim-port", int(error["port"]), str(error["reason"]), flag_value=sim_port)
            with trio.move_on_after(SIM_STOP_SECS):
                await process.wait()
            how = describe_exit(process.returncode) if process.returncode is not None else f"no report in {SIM_START_SECS:g}s"
            raise ServeError(f"the simulated workers did not start ({how})")
        urls = [str(url) for url in report["urls"]]
        log.info("simulated workers (pid %d) listening on %s", process.pid, ", ".join(urls))
        task_status.started(urls)
        code = await process.wait()
        raise ServeError(f"the simulated workers (pid {process.pid}) exited ({describe_exit(code)}); stopping")
    finally:
        with trio.move_on_after(SIM_STOP_SECS + 1.0, shield=True):
            await _stop_child(process)


async def _first_line(process: trio.Process) -> dict[str, Any]:
    """The child's report: one JSON line on its stdout ({} if it exits or stays silent instead)."""
    assert process.stdout is not None
    buffer = b""
    with trio.move_on_after(SIM_START_SECS):
        while b"\n" not in buffer:
            chunk = await process.stdout.receive_some()
            if not chunk:
                break
            buffer += chunk
    try:
        report = json.loads(buffer.partition(b"\n")[0])
    except ValueError:
        return {}
    return report if isinstance(report, dict) else {}


async def _stop_child(process: trio.Process) -> None:
    assert process.stdin is not None and process.stdout is not None
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await process.stdin.aclose()  # end of file: the child stops its servers and exits
    if process.returncode is None:
        with trio.move_on_after(SIM_STOP_SECS):
            await process.wait()
        if process.returncode is None:
            log.warning("the simulated workers (pid %d) did not stop within %gs: killing them", process.pid, SIM_STOP_SECS)
            process.kill()
            await process.wait()
    await process.stdout.aclose()


def describe_exit(code: int) -> str:
    """A child's exit status in words: 'exit code 1', 'killed by SIGKILL'."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


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
