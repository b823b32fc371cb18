"""History storage as trio sees it: one backend, called without blocking the event loop.

A blocking backend's call runs in a worker thread; at most `pool_size`
run at once (more would only queue for a database connection inside the
thread), and one that takes longer than `op_timeout` is abandoned: the
request gets 503 `storage_unavailable` while the thread finishes or fails
on its own. Every call is timed and counted by result.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import trio

from smg.observability import tracing
from smg.observability.metrics import GatewayMetrics
from smg.storage.base import HistoryBackend, StorageError
from smg.storage.records import StoredResponse

log = logging.getLogger("smg.storage")
T = TypeVar("T")


class History:
    def __init__(self, backend: HistoryBackend, op_timeout: float, metrics: GatewayMetrics | None = None) -> None:
        self.backend = backend
        self.op_timeout = op_timeout
        self.metrics = metrics
        self._limiter = trio.CapacityLimiter(max(1, backend.pool_size))
        self.ready = False  # the schema is migrated
        self.unready_reason = "starting"
        self._saves: list[tuple[StoredResponse, _Waiter]] = []  # waiting for the next group commit
        self._saves_waiting = trio.Event()

    async def maintain(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Migrate the schema, retrying while the store is down (the gateway serves stateless
        traffic meanwhile and history calls answer 503 until the store is ready); then commit
        saved responses, in groups, for as long as the node runs."""
        task_status.started()
        delay = 1.0
        while not self.ready:
            try:
                version = await self.run(self.backend.migrate, check_ready=False)
            except StorageError as exc:
                self.unready_reason = str(exc)
                log.error("history: the %s store is not ready (%s); retrying in %gs", self.backend.name, exc, delay)
                await trio.sleep(delay)
                delay = min(30.0, delay * 2)
                continue
            self.ready = True
            log.info("history: %s store ready (schema version %d)", self.backend.name, version)
        await self._commit_saves()

    async def run(self, operation: Callable[..., T], *args: object, check_ready: bool = True) -> T:
        """`operation(*args)` (a method of `backend`); StorageError when it fails or times out."""
        started = time.perf_counter()
        result = "ok"
        # a leaf span (none outside a request): the call runs in a thread, which needs no context
        span = tracing.start_span("smg.storage", self._span_attributes(operation)) if tracing.ENABLED else None
        try:
            if check_ready and not self.ready:
                raise StorageError(f"the {self.backend.name} store is not ready: {self.unready_reason}")
            if not self.backend.blocking:
                return operation(*args)
            try:
                with trio.fail_after(self.op_timeout):
                    return await trio.to_thread.run_sync(
                        functools.partial(operation, *args), limiter=self._limiter, abandon_on_cancel=True
                    )
            except trio.TooSlowError:
                result = "timeout"
                raise StorageError(f"the {self.backend.name} history store did not answer within {self.op_timeout:g}s") from None
        except StorageError as exc:
            if result == "ok":
                result = "error"
            log.warning("history: %s failed: %s", operation.__name__, exc)
            raise
        finally:
            if self.metrics is not None:
                name = operation.__name__
                self.metrics.storage_operations(self.backend.name, name, result).inc()
                self.metrics.storage_duration(self.backend.name, name).observe(time.perf_counter() - started)
            if span is not None:
                span.set_attribute("smg.storage.result", result)
                tracing.finish(span, None if result == "ok" else f"storage_{result}")

    def _span_attributes(self, operation: Callable[..., object]) -> dict[str, str]:
        return {"smg.storage.operation": operation.__name__, "smg.storage.backend": self.backend.name}

    async def save_response(self, record: StoredResponse) -> None:
        """Store one response, committed with the others that arrive meanwhile (group commit:
        one transaction and one thread hand-off for many concurrent responses). Returns once
        this one is committed; raises the group's StorageError. A caller that leaves early
        leaves its record to be committed anyway."""
        if not self.ready:
            raise StorageError(f"the {self.backend.name} store is not ready: {self.unready_reason}")
        waiter = _Waiter()
        self._saves.append((record, waiter))
        self._saves_waiting.set()
        # the commit runs in the committing task, outside any request: the request's span is the wait
        span = tracing.start_span("smg.storage", self._span_attributes(self.save_response)) if tracing.ENABLED else None
        try:
            await waiter.done.wait()
        finally:
            if span is not None:
                tracing.finish(span, None if waiter.error is None else "storage_error")
        if waiter.error is not None:
            raise waiter.error

    async def _commit_saves(self) -> None:
        """The one task that writes saved responses: everything waiting, as one group."""
        while True:
            await self._saves_waiting.wait()
            self._saves_waiting = trio.Event()
            group, self._saves = self._saves, []
            try:
                await self.run(self.backend.put_responses, [record for record, _ in group])
            except StorageError as exc:
                for _, waiter in group:
                    waiter.error = exc
            for _, waiter in group:
                waiter.done.set()

    async def close(self) -> None:
        if self.backend.blocking:
            await trio.to_thread.run_sync(self.backend.close)
        else:
            self.backend.close()


class _Waiter:
    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: StorageError | None = None
