"""Run several simulated workers in one trio process, one port each."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable

import trio

from smg.http.server import BindError, find_error, serve_app, server_config
from smg.simworker.app import SimWorker
from smg.simworker.engine import SimConfig

log = logging.getLogger("smg.sim")


def worker_configs(base: SimConfig, count: int) -> list[SimConfig]:
    """Per-worker configs: worker i draws its faults from seed + i."""
    return [dataclasses.replace(base, seed=base.seed + i) for i in range(count)]


async def run_fleet(
    base: SimConfig,
    host: str,
    port: int,
    count: int,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `count` workers on `port`, `port + 1`, ... (port 0: any free ports).

    Reports the workers' base URLs once all of them are listening (`grpc://host:port` with
    `--grpc`: the SGLang gRPC scheduler protocol, `smg.simworker.grpc_server`).
    """
    if base.grpc:  # imported here: grpcio and the tokenizer load only for the gRPC mode
        from smg.simworker.grpc_server import serve_grpc_fleet

        async with trio.open_nursery() as nursery:
            task_status.started(await nursery.start(serve_grpc_fleet, worker_configs(base, count), host, port))
        return
    urls: list[str] = []
    async with trio.open_nursery() as nursery:
        for i, config in enumerate(worker_configs(base, count)):
            worker = SimWorker(config)
            hc = server_config(host, port + i if port else 0, graceful_timeout=1.0)
            try:
                binds = await nursery.start(serve_app, worker, hc)
            except BindError as exc:  # say which worker's port, under the flag the user gave
                raise BindError(exc.flag, exc.port, exc.reason, flag_value=port or None) from None
            urls.append(binds[0])
        for url in urls:
            log.info("simulated worker for model %s listening on %s", base.model, url)
        task_status.started(urls)


async def run_supervised(
    base: SimConfig, host: str, port: int, count: int, once_started: Callable[[], None] | None = None
) -> int:
    """`smg sim-worker --supervised`: the child process of `smg serve`.

    Reports to the parent on stdout, one JSON line: `{"urls": [...]}` once
    every worker listens, or `{"error": {"port", "reason"}}` (exit 2) when a
    port is taken, so the parent prints the one error line under its own
    flag (`--sim-port`). Then serves until stdin reaches end of file: the
    parent holds the other end of that pipe, and the kernel closes it when
    the parent exits in any way, `kill -9` included, so the workers never
    outlive it (portable, unlike Linux's PR_SET_PDEATHSIG, and with no
    polling). Returns the exit code. `once_started` runs once the workers listen (the
    process's owner settles its heap: `smg.cli.settle_heap`).
    """
    async with trio.open_nursery() as nursery:
        try:
            urls = await nursery.start(run_fleet, base, host, port, count)
        except (BindError, BaseExceptionGroup) as exc:
            error = find_error(exc, BindError)
            if error is None:
                raise
            _report({"error": {"port": error.port, "reason": error.reason}})
            return 2
        _report({"urls": urls})
        if once_started is not None:
            once_started()
        await until_stdin_closes()
        log.info("stdin closed (the parent stopped or is gone): stopping the simulated workers")
        nursery.cancel_scope.cancel()
    return 0


def _report(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def until_stdin_closes() -> None:
    """Return when standard input reaches end of file (whatever is written to it is ignored)."""
    async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
        while await stdin.receive_some():
            pass
