"""Worker discovery, health probing and removal, plus control-plane calls (httpx).

A new worker is discovered, after `--worker-startup-delay` seconds, by
`GET /health` and `GET /v1/models` (which names what it serves), retrying
with backoff up to `--worker-startup-timeout-secs`; its health machine then needs
`--health-success-threshold` good probes to become ready. A worker that is
not ready yet is logged at its first failure and then once a minute, with the
error: the start-up timeout is 30 minutes by default, and an unreachable URL
must not stay pending that long without a word. A periodic loop
probes every discovered worker each `--health-check-interval-secs` and feeds
the results to its `HealthMachine`. Every task runs in the registrar's
nursery.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Callable
from typing import Any, Protocol

import httpx
import trio

from smg.workers.health import HealthState
from smg.workers.overload import LoadReport, parse_load_report
from smg.workers.providers import RUNTIME_TYPE, auth_headers, models_path
from smg.workers.registry import Worker, WorkerRegistry

log = logging.getLogger("smg.workers")


def describe(exc: BaseException) -> str:
    """`Type: message` of a failed call, with the cause's message when the error has none of its own
    (httpx's ConnectError for a failed TLS handshake is empty; its cause names the certificate)."""
    message, cause = str(exc), exc.__cause__ or exc.__context__
    for _ in range(8):  # the first message down the chain (httpx -> httpcore -> trio -> ssl)
        if message or cause is None:
            break
        message, cause = str(cause), cause.__cause__ or cause.__context__
    return f"{type(exc).__name__}: {message}"


class EngineProbe(Protocol):
    """How the registrar reaches `grpc://` workers (implemented by `smg.upstream.grpc.fleet`,
    a layer above: the registrar only needs these three answers, not the RPCs)."""

    async def discover(self, worker: Worker, timeout: float) -> None:
        """Find the engine and its model; set `worker.models`, `runtime_type` and engine labels.
        Raises ValueError with what failed."""
        ...

    async def probe(self, worker: Worker, timeout: float) -> str | None:
        """None when the engine reports healthy, else why not."""
        ...

    async def load(self, worker: Worker, timeout: float) -> LoadReport:
        """The engine's load report (zeros when it does not answer)."""
        ...


DISCOVERY_SECS = 5.0  # each discovery call (HTTP or gRPC)
DISCOVERY_TIMEOUT = httpx.Timeout(DISCOVERY_SECS)
FIRST_RETRY_SECS = 0.1
STARTUP_LOG_SECS = 60.0  # a worker still starting up is logged this often


class Registrar:
    def __init__(
        self,
        registry: WorkerRegistry,
        *,
        startup_timeout: float,
        check_interval: float,
        startup_delay: float = 0.0,
        health_interval: float = 10.0,
        health_timeout: float = 5.0,
        health_endpoint: str = "/health",
        health_checks: bool = True,
        remove_failed: bool = False,
        load_interval: float | None = None,
        api_key: str | None = None,
        on_change: Callable[[], None] = lambda: None,
        startup_log_secs: float = STARTUP_LOG_SECS,
        transport: httpx.AsyncBaseTransport | None = None,
        ssl_context: ssl.SSLContext | None = None,
        stagger: random.Random | None = None,
    ) -> None:
        """`transport` (default: httpx's own) lets tests fake the workers without sockets;
        `ssl_context`: for https:// workers (None: the system's CAs), as the data plane's.

        `startup_delay` (`--worker-startup-delay`): seconds each registration waits
        before its first probe, for engines known to take a while to open their port
        (model loading): probing them at once only fills the log with refused
        connections. The start-up timeout counts from the end of the delay, as the
        reference's does (its delay sits on the registration workflow's first step).

        `stagger`: the first health round, and the second load poll, come after a random
        0.5-1.5 intervals instead of one, so the rounds of gateways started together (a
        cluster, --processes N) do not fall on the same instant every interval. They did: 8
        gateways polling 4 workers at once every 10 s stalled each other and the workers
        into a burst of slow first tokens (bench/cluster_routing.py --trace).
        """
        self.registry = registry
        self.startup_timeout = startup_timeout
        self.startup_delay = startup_delay
        self.check_interval = check_interval
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.health_endpoint = health_endpoint
        self.health_checks = health_checks
        self.remove_failed = remove_failed
        self.load_interval = load_interval
        self.stagger = stagger
        self.api_key = api_key
        self.on_change = on_change
        self.startup_log_secs = startup_log_secs
        self.on_removed: Callable[[Worker], None] = lambda worker: None
        self.engines: EngineProbe | None = None  # gRPC workers (set by the context when it has a fleet)
        # with the HA mesh: only a worker's health owners probe it, and they publish each result
        self.should_check: Callable[[Worker], bool] = lambda worker: True
        self.on_checked: Callable[[Worker, bool], None] = lambda worker, ok: None
        # what an operator would look for first, beside its log line: (worker, text, "info" | "warning")
        self.on_event: Callable[[Worker, str, str], None] = lambda worker, text, severity: None
        self.client = httpx.AsyncClient(timeout=DISCOVERY_TIMEOUT, transport=transport, verify=ssl_context or True)
        self._nursery: trio.Nursery | None = None
        self._probes: dict[str, trio.CancelScope] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery every probe and drain runs in, until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.health_checks:
                    nursery.start_soon(self._health_loop)
                if self.load_interval:
                    nursery.start_soon(self._load_loop, self.load_interval)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self.client.aclose()

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._nursery is None:
            raise RuntimeError("registrar is not running")
        self._nursery.start_soon(fn, *args)

    def headers_for(self, worker: Worker) -> dict[str, str]:
        if worker.provider is not None:  # its own key, never the gateway's
            key = worker.api_key
            return {name.decode(): value.decode() for name, value in auth_headers(worker.provider, key)} if key else {}
        key = worker.api_key or self.api_key
        return {"authorization": f"Bearer {key}"} if key else {}

    # -- discovery ------------------------------------------------------------

    def register(self, worker: Worker) -> None:
        """Discover `worker` in the background until it is ready or the start-up timeout passes."""
        previous = self._probes.pop(worker.id, None)
        if previous is not None:
            previous.cancel()
        worker.health.reset()
        worker.discovered = False
        self.changed()
        self._spawn(self._start_up, worker)

    async def _start_up(self, worker: Worker) -> None:
        with trio.CancelScope() as scope:
            self._probes[worker.id] = scope
            if self.startup_delay > 0:  # inside the scope: a removal or a new registration cancels the wait too
                await trio.sleep(self.startup_delay)
            while not await self._start_up_phase(worker):
                self.changed()
                if self.remove_failed and self.should_check(worker):  # with the mesh: its health owners decide
                    self.registry.remove(worker.id)
                    log.warning("worker %s removed: it never became ready (--remove-unhealthy-workers)", worker.url)
                    self.on_event(worker, "removed: it never became ready", "warning")
                    self.on_removed(worker)
                    break
                # keep looking, slowly: a worker registered before its engine was up is found
                # once it answers, instead of staying failed for good
                while True:
                    await trio.sleep(self.health_interval)
                    if await self._start_up_step(worker):
                        break
                log.info("worker %s answers after failing its start-up; starting it again", worker.url)
                self.on_event(worker, "answers after failing its start-up", "info")
                worker.health.reset()
            self.changed()
        if self._probes.get(worker.id) is scope:
            del self._probes[worker.id]

    async def _start_up_phase(self, worker: Worker) -> bool:
        """Probe with back-off until ready (True) or until the next attempt would pass the
        start-up timeout (False: the worker is `failed`)."""
        deadline = trio.current_time() + self.startup_timeout
        delay = FIRST_RETRY_SECS
        attempt = 0
        next_log = -float("inf")
        while True:
            attempt += 1
            ok = await self._start_up_step(worker)
            if not self.health_checks or worker.provider is not None:  # a provider is ready once its models answer
                if worker.discovered:
                    worker.health.reset(HealthState.READY)
            else:
                worker.health.observe_startup(ok)
            if worker.health.state is HealthState.READY:
                worker.last_error = None
                log.info("worker %s ready: models %s (%s)", worker.url, ", ".join(worker.models), worker.runtime_type)
                self.on_event(worker, f"ready: models {', '.join(worker.models)}", "info")
                return True
            now = trio.current_time()
            if now + delay > deadline:
                worker.health.reset(HealthState.FAILED)
                log.error(
                    "worker %s failed to become ready after %d attempts: %s (%s)",
                    worker.url,
                    attempt,
                    worker.last_error,
                    "removing it" if self.remove_failed else f"retrying every {self.health_interval:g}s",
                )
                self.on_event(worker, f"failed to become ready: {worker.last_error}", "warning")
                return False
            if not ok and now >= next_log:
                next_log = now + self.startup_log_secs
                log.warning(
                    "worker %s not ready after %d attempts: %s (retrying until --worker-startup-timeout-secs, %.0fs left)",
                    worker.url,
                    attempt,
                    worker.last_error,
                    deadline - now,
                )
            await trio.sleep(delay)
            delay = min(self.check_interval, delay * 2)

    async def _start_up_step(self, worker: Worker) -> bool:
        """Discover the models first; after that, probe health."""
        if worker.discovered:
            return worker.provider is not None or await self.probe_health(worker)
        try:
            await self._discover_models(worker)
        except httpx.HTTPError as exc:
            worker.last_error = f"discovery: {describe(exc)}"
            return False
        except ValueError as exc:
            worker.last_error = str(exc)
            return False
        worker.discovered = True
        return True

    async def _discover_models(self, worker: Worker) -> None:
        if worker.is_grpc:
            await self._engines().discover(worker, DISCOVERY_SECS)
            return
        if worker.provider is None and not await self.probe_health(worker):  # a provider has no /health
            raise ValueError(worker.last_error)
        path = models_path(worker.provider) if worker.provider is not None else "/v1/models"
        response = await self.client.get(worker.url + path, headers=self.headers_for(worker))
        if response.status_code in (401, 403) and worker.provider is not None:
            raise ValueError(f"/v1/models answered {response.status_code}: the provider refused the gateway's key")
        if response.status_code != 200:
            raise ValueError(f"/v1/models answered {response.status_code}")
        answer = response.json()
        if not isinstance(answer, dict):
            raise ValueError("/v1/models answered JSON that is not an object")
        data = answer.get("data")
        if not isinstance(data, list) or not data:
            raise ValueError("/v1/models lists no model")
        models = [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
        if not models:
            raise ValueError("/v1/models lists no model id")
        worker.models = models
        worker.runtime_type = RUNTIME_TYPE if worker.provider is not None else str(data[0].get("owned_by") or "unknown")

    def _engines(self) -> EngineProbe:
        if self.engines is None:
            raise ValueError("this gateway has no gRPC client (gRPC workers are not enabled)")
        return self.engines

    async def probe_health(self, worker: Worker) -> bool:
        if worker.is_grpc:
            error = await self._engines().probe(worker, self.health_timeout)
            if error is not None:
                worker.last_error = f"health probe: {error}"
            return error is None
        try:
            response = await self.client.get(
                worker.url + self.health_endpoint, headers=self.headers_for(worker), timeout=self.health_timeout
            )
        except httpx.HTTPError as exc:
            worker.last_error = f"health probe: {describe(exc)}"
            return False
        if response.status_code != 200:
            worker.last_error = f"health probe answered {response.status_code}"
            return False
        return True

    # -- periodic health checks ---------------------------------------------

    def _phase(self, interval: float) -> float:
        """The wait before a loop's first periodic round: `interval`, or 0.5-1.5 of it with `stagger`."""
        return interval if self.stagger is None else interval * self.stagger.uniform(0.5, 1.5)

    async def _health_loop(self) -> None:
        wait = self._phase(self.health_interval)
        while True:
            await trio.sleep(wait)
            wait = self.health_interval
            workers = [
                w
                for w in self.registry
                if w.discovered
                and not w.draining
                and w.provider is None  # a provider has no /health: its answers are its health (the breaker)
                and w.health.state is not HealthState.PENDING
                and self.should_check(w)
            ]
            async with trio.open_nursery() as nursery:
                for worker in workers:
                    nursery.start_soon(self._check, worker)

    async def _check(self, worker: Worker) -> None:
        ok = await self.probe_health(worker)
        if worker.draining or self.registry.get(worker.id) is not worker:
            return  # removed or draining while the probe was out
        transition = worker.health.observe(ok)
        self.on_checked(worker, ok)
        if transition is None:
            return
        if transition.new is HealthState.READY:
            worker.last_error = None
            log.info("worker %s is healthy again (%s -> ready)", worker.url, transition.old.value)
            self.on_event(worker, f"healthy again ({transition.old.value} -> ready)", "info")
        else:
            log.warning("worker %s: %s -> %s (%s)", worker.url, transition.old.value, transition.new.value, worker.last_error)
            self.on_event(worker, f"{transition.old.value} -> {transition.new.value} ({worker.last_error})", "warning")
        if transition.new is HealthState.FAILED and self.remove_failed:
            self.registry.remove(worker.id)
            log.warning("worker %s removed after %d failed probes", worker.url, worker.health.failures)
            self.on_event(worker, f"removed after {worker.health.failures} failed probes", "warning")
            self.on_removed(worker)
        self.changed()

    # -- load monitor -------------------------------------------------------

    async def _load_loop(self, interval: float) -> None:
        """Poll each routable worker's /v1/loads; a worker that does not answer reports 0."""
        wait = self._phase(interval)
        while True:
            workers = self.registry.available_any()
            http = [w for w in workers if not w.is_grpc and w.provider is None]
            reports = [(worker, load_report(result)) for worker, result in await self.fan_out("GET", "/v1/loads", http)]
            if self.engines is not None and len(http) < len(workers):
                reports += await self._engine_loads([w for w in workers if w.is_grpc], self.engines)
            for worker, report in reports:
                worker.reported_load = report.load
                worker.reported_waiting = report.waiting
                worker.reported_token_usage = report.token_usage
            await trio.sleep(wait)
            wait = interval

    async def _engine_loads(self, workers: list[Worker], engines: EngineProbe) -> list[tuple[Worker, LoadReport]]:
        """GetLoads on every gRPC worker at once (`--load-monitor-interval`, like /v1/loads)."""
        reports: list[tuple[Worker, LoadReport]] = []

        async def one(worker: Worker) -> None:
            reports.append((worker, await engines.load(worker, self.health_timeout)))

        async with trio.open_nursery() as nursery:
            for worker in workers:
                nursery.start_soon(one, worker)
        return reports

    # -- removal ------------------------------------------------------------

    def drain_and_remove(self, worker: Worker, grace: float) -> None:
        """Stop routing to `worker` now; forget it when its requests finish."""
        probe = self._probes.pop(worker.id, None)
        if probe is not None:
            probe.cancel()
        worker.draining = True
        self.changed()
        self._spawn(self._remove_when_idle, worker, grace)

    async def _remove_when_idle(self, worker: Worker, grace: float) -> None:
        with trio.move_on_after(grace):
            while worker.in_flight:
                await trio.sleep(0.05)
        if self.registry.get(worker.id) is worker:
            self.registry.remove(worker.id)
            log.info("worker %s removed", worker.url)
            self.on_event(worker, "removed", "info")
            self.changed()

    def changed(self) -> None:
        """The set of routable workers may have changed: reindex, tell the context."""
        self.registry.refresh()
        self.on_change()

    # -- fan-out ------------------------------------------------------------

    async def fan_out(
        self, method: str, path: str, workers: list[Worker], *, json: Any = None, timeout: float | None = None
    ) -> list[tuple[Worker, httpx.Response | Exception]]:
        """Call `path` on every worker concurrently; results in worker order.

        `json`: a body for each call; `timeout`: seconds instead of the probes' 5 s, for
        calls a worker may take long to answer (stopping a profile writes its traces). Hosted
        providers are left out: they have none of the engines' endpoints.
        """
        workers = [w for w in workers if w.provider is None]
        results: list[httpx.Response | Exception | None] = [None] * len(workers)
        bound = self.client.timeout if timeout is None else httpx.Timeout(timeout)

        async def call(i: int, worker: Worker) -> None:
            try:
                results[i] = await self.client.request(
                    method, worker.url + path, headers=self.headers_for(worker), json=json, timeout=bound
                )
            except httpx.HTTPError as exc:
                results[i] = exc

        async with trio.open_nursery() as nursery:
            for i, worker in enumerate(workers):
                nursery.start_soon(call, i, worker)
        return [(w, r) for w, r in zip(workers, results, strict=True) if r is not None]


def load_report(result: httpx.Response | Exception) -> LoadReport:
    """A worker's `/v1/loads` answer; one that fails or does not parse reports nothing (zeros)."""
    if isinstance(result, Exception) or result.status_code != 200:
        return LoadReport()
    try:
        return parse_load_report(result.json())
    except ValueError:
        return LoadReport()
