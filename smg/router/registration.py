"""Worker registration and control-plane calls to workers (httpx).

A worker becomes available once `/health` answers 200 and `/v1/models`
names what it serves. Probing runs in the registrar's nursery, retrying every
`--worker-startup-check-interval` until `--worker-startup-timeout-secs`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import trio

from smg.router.workers import DRAINING, FAILED, PENDING, READY, Worker, WorkerRegistry

log = logging.getLogger("smg.workers")

CONTROL_TIMEOUT = httpx.Timeout(5.0)


class Registrar:
    def __init__(
        self,
        registry: WorkerRegistry,
        *,
        startup_timeout: float,
        check_interval: float,
        api_key: str | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.registry = registry
        self.startup_timeout = startup_timeout
        self.check_interval = check_interval
        self.api_key = api_key
        self.on_change = on_change
        self.client = httpx.AsyncClient(timeout=CONTROL_TIMEOUT)
        self._nursery: trio.Nursery | None = None
        self._probes: dict[str, trio.CancelScope] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery every probe and drain runs in, until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
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
        key = worker.api_key or self.api_key
        return {"authorization": f"Bearer {key}"} if key else {}

    # -- registration -------------------------------------------------------

    def register(self, worker: Worker) -> None:
        """Probe `worker` in the background until it is ready or the timeout passes."""
        previous = self._probes.pop(worker.id, None)
        if previous is not None:
            previous.cancel()
        worker.status = PENDING
        self._changed()
        self._spawn(self._probe_until_ready, worker)

    async def _probe_until_ready(self, worker: Worker) -> None:
        with trio.CancelScope() as scope:
            self._probes[worker.id] = scope
            deadline = trio.current_time() + self.startup_timeout
            attempt = 0
            while True:
                attempt += 1
                try:
                    await self._probe(worker)
                except (httpx.HTTPError, ValueError) as exc:
                    worker.last_error = f"{type(exc).__name__}: {exc}"
                    if trio.current_time() + self.check_interval > deadline:
                        worker.status = FAILED
                        log.error("worker %s failed to register after %d attempts: %s", worker.url, attempt, worker.last_error)
                        self._changed()
                        break
                    log.debug("worker %s not ready (attempt %d): %s", worker.url, attempt, worker.last_error)
                    await trio.sleep(min(self.check_interval, 0.05 * 2**attempt))
                    continue
                if worker.status == PENDING:
                    worker.status = READY
                    worker.last_error = None
                    log.info("worker %s ready: models %s (%s)", worker.url, ", ".join(worker.models), worker.runtime_type)
                    self._changed()
                break
        if self._probes.get(worker.id) is scope:
            del self._probes[worker.id]

    async def _probe(self, worker: Worker) -> None:
        headers = self.headers_for(worker)
        health = await self.client.get(worker.url + "/health", headers=headers)
        if health.status_code != 200:
            raise ValueError(f"/health answered {health.status_code}")
        response = await self.client.get(worker.url + "/v1/models", headers=headers)
        if response.status_code != 200:
            raise ValueError(f"/v1/models answered {response.status_code}")
        data = response.json().get("data")
        if not isinstance(data, list) or not data:
            raise ValueError("/v1/models lists no model")
        models = [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
        if not models:
            raise ValueError("/v1/models lists no model id")
        worker.models = models
        worker.runtime_type = str(data[0].get("owned_by") or "unknown")

    # -- removal ------------------------------------------------------------

    def drain_and_remove(self, worker: Worker, grace: float) -> None:
        """Stop routing to `worker` now; forget it when its requests finish."""
        probe = self._probes.pop(worker.id, None)
        if probe is not None:
            probe.cancel()
        worker.status = DRAINING
        self._changed()
        self._spawn(self._remove_when_idle, worker, grace)

    async def _remove_when_idle(self, worker: Worker, grace: float) -> None:
        with trio.move_on_after(grace):
            while worker.in_flight:
                await trio.sleep(0.05)
        if self.registry.get(worker.id) is worker:
            self.registry.remove(worker.id)
            log.info("worker %s removed", worker.url)
            self._changed()

    def _changed(self) -> None:
        self.registry.refresh()
        self.on_change()

    # -- fan-out ------------------------------------------------------------

    async def fan_out(self, method: str, path: str, workers: list[Worker]) -> list[tuple[Worker, httpx.Response | Exception]]:
        """Call `path` on every worker concurrently; results in worker order."""
        results: list[httpx.Response | Exception | None] = [None] * len(workers)

        async def call(i: int, worker: Worker) -> None:
            try:
                results[i] = await self.client.request(method, worker.url + path, headers=self.headers_for(worker))
            except httpx.HTTPError as exc:
                results[i] = exc

        async with trio.open_nursery() as nursery:
            for i, worker in enumerate(workers):
                nursery.start_soon(call, i, worker)
        return [(w, r) for w, r in zip(workers, results, strict=True) if r is not None]
