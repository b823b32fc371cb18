"""The node's gRPC side: the loop thread, one client per gRPC worker, the models' tokenizers.

`EngineFleet.run` is a task of the gateway's root nursery: it starts the grpc.aio loop thread
(`smg.aiothread.AioThread`), owns the tokenizer load jobs, and on cancellation closes every
channel and stops the thread. It is also the registrar's `EngineProbe` (discovery, health,
loads of `grpc://` workers), so the registrar, a layer below, never sees an RPC.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

import trio

from smg.aiothread import AioThread
from smg.upstream.grpc.client import EngineClient, EngineClients, UnsupportedEngine
from smg.upstream.grpc.status import EngineStatusError
from smg.upstream.grpc.tokenizers import ModelTokenizers
from smg.workers.overload import LoadReport
from smg.workers.registry import Worker

log = logging.getLogger("smg.workers")


class EngineFleet:
    def __init__(self, tokenizers: ModelTokenizers, *, preferred: str | None = None) -> None:
        """`preferred` (`--backend`): the engine to speak when a worker answers as several."""
        self.tokenizers = tokenizers
        self.aio = AioThread("smg-grpc")
        self.clients = EngineClients(self.aio, preferred=preferred)
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.aio.start()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.tokenizers.attach(nursery)
                self.clients.attach(nursery)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self.tokenizers.attach(None)
            self.clients.attach(None)
            with trio.CancelScope(shield=True):  # this task is being cancelled: the cleanup must still run
                with trio.move_on_after(5):
                    await self.clients.aclose()
                await trio.to_thread.run_sync(self.aio.stop)

    def client(self, worker: Worker) -> EngineClient:
        return self.clients.get(worker.url)

    def retain(self, urls: Iterable[str]) -> None:
        """Close the channels of workers no longer registered (`urls`: the gRPC workers left)."""
        keep = set(urls)
        nursery = self._nursery
        if nursery is None:
            return
        for url in self.clients.urls():
            if url not in keep:
                nursery.start_soon(self.clients.forget, url)

    # -- the registrar's EngineProbe ------------------------------------------

    async def discover(self, worker: Worker, timeout: float) -> None:
        client = self.client(worker)
        try:
            runtime = await client.detect(timeout)
            info = await client.info(timeout)
        except UnsupportedEngine as exc:
            raise ValueError(str(exc)) from None
        except EngineStatusError as exc:
            raise ValueError(f"discovery: {exc.status}: {exc.details}") from None
        worker.models = [info.model_id]
        worker.runtime_type = runtime
        worker.engine_labels = dict(info.labels)  # kept apart: a PATCH of the operator's labels keeps them
        self.tokenizers.ensure(info.model_id, info, client)

    async def probe(self, worker: Worker, timeout: float) -> str | None:
        client = self.client(worker)
        try:
            if client.runtime is None:  # a new channel (the worker was re-added): find its engine again
                await client.detect(timeout)
            healthy, message = await client.health(timeout)
        except UnsupportedEngine as exc:
            return str(exc)
        except EngineStatusError as exc:
            return f"{exc.status}: {exc.details}"
        if not healthy:
            return f"the engine reports unhealthy{': ' + message if message else ''}"
        return None

    async def load(self, worker: Worker, timeout: float) -> LoadReport:
        client = self.client(worker)
        if client.runtime is None:
            return LoadReport()
        try:
            return await client.loads(timeout)
        except EngineStatusError:
            return LoadReport()

    def abort(self, worker: Worker, request_id: str, reason: str) -> None:
        """Tell the engine to drop `request_id` (the client left, or every choice stopped on a
        stop string), from the fleet's nursery: the caller's cancellation must not cancel it."""
        nursery = self._nursery
        if nursery is not None:
            with contextlib.suppress(RuntimeError):  # the node is stopping: its calls are being cancelled anyway
                nursery.start_soon(self.client(worker).abort, [request_id], reason)
