"""Run several simulated workers in one trio process, one port each."""

from __future__ import annotations

import dataclasses
import logging

import trio

from smg.serving import hypercorn_config, serve_app
from smg.testing.engine import SimConfig
from smg.testing.worker import SimWorker

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

    Reports the workers' base URLs once all of them are listening.
    """
    urls: list[str] = []
    async with trio.open_nursery() as nursery:
        for i, config in enumerate(worker_configs(base, count)):
            worker = SimWorker(config)
            hc = hypercorn_config(host, port + i if port else 0, graceful_timeout=1.0)
            binds = await nursery.start(serve_app, worker, hc)
            urls.append(binds[0])
        for url in urls:
            log.info("simulated worker for model %s listening on %s", base.model, url)
        task_status.started(urls)
