"""`--config`'s file, applied at start and reread on SIGHUP, without dropping a request.

The file's workers and providers are a discovery source (`smg.discovery.apply`): the registry
keeps matching them, through the path `POST /workers` and `DELETE` take (so with `--ha-mesh`
the cluster hears of every change, and each node's own file and the replicated registry stay
consistent). Aliases, fallbacks and tenant limits are read per request, so a new
`GatewayConfig` carrying them replaces the old one between requests. Any other setting that
changed needs a restart, which the log says, naming the flags. A file that no longer parses
changes nothing (one line in the log); the gateway serves on as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from collections.abc import Callable

import trio

from smg.config import GatewayConfig
from smg.config.file import FileConfig, load
from smg.context import GatewayContext
from smg.discovery.apply import Callbacks, Discovered
from smg.discovery.manifest import WorkerSpec
from smg.limits.tenants import TenantLimits
from smg.settings import ConfigError, flag_of

log = logging.getLogger("smg.server")

RELOADED = ("model_alias", "model_fallback", "file_tenant_limits")  # read per request: changed live
Reconfigure = Callable[[], tuple[GatewayConfig, FileConfig | None]]


class ConfigFile:
    """The gateway's `--config` file: its workers kept registered, the file reread on SIGHUP.

    `reconfigure` builds the settings again as the command line did (flags over `SMG_*`
    variables over the file); without one, only the workers are reread."""

    def __init__(self, ctx: GatewayContext, callbacks: Callbacks, reconfigure: Reconfigure | None = None) -> None:
        self.ctx = ctx
        self.settings_too = reconfigure is not None
        self.reconfigure = reconfigure or self._workers_only
        self.discovered = Discovered(callbacks, gone="no longer in --config")
        self.wanted: list[WorkerSpec] = []

    def _workers_only(self) -> tuple[GatewayConfig, FileConfig | None]:
        path = self.ctx.config.config_file
        return self.ctx.config, load(path, os.environ, GatewayConfig) if path else None

    def start(self) -> None:
        """Register the file's workers and providers (its settings were read with the flags)."""
        path = self.ctx.config.config_file
        if path:
            self.wanted = load(path, os.environ, GatewayConfig).workers
            self.discovered.apply(self.wanted)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """SIGHUP rereads the file; in between, the listed workers are reapplied every
        `--discovery-check-interval-secs`, so one removed behind the file's back (DELETE
        /workers, --remove-unhealthy-workers, a peer) or still draining when it was listed
        again comes back without waiting for the next SIGHUP."""
        async with trio.open_nursery() as nursery:
            if self.ctx.config.config_file is not None:
                nursery.start_soon(self._reapply)
            with trio.open_signal_receiver(signal.SIGHUP) as signals:
                task_status.started()
                async for _ in signals:
                    if self.ctx.config.config_file is None:  # a SIGHUP that stopped the gateway would surprise more
                        log.info("SIGHUP: no --config file to reread; ignored")
                        continue
                    await self.reload()

    async def _reapply(self) -> None:
        while True:
            await trio.sleep(self.ctx.config.discovery_check_interval_secs)
            self.discovered.apply(self.wanted)

    async def reload(self) -> None:
        try:
            config, file = await trio.to_thread.run_sync(self.reconfigure)
        except Exception as exc:  # a file that does not parse, or a check that fails: the gateway serves on
            message = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
            log.error("SIGHUP: %s; nothing changed", message)
            return
        self.apply(config, file)

    def apply(self, config: GatewayConfig, file: FileConfig | None) -> None:
        ctx, old = self.ctx, self.ctx.config
        if old.process_index is not None:  # one of --processes N: its own ports and seeds, as at start
            config = config.for_process(old.process_index)
        changed = [f for f in dataclasses.fields(GatewayConfig) if getattr(old, f.name) != getattr(config, f.name)]
        restart = sorted(flag.name for f in changed if f.name not in RELOADED and (flag := flag_of(f)) is not None)
        if restart:
            log.warning("SIGHUP: %s changed; restart the gateway to apply (the rest is reloaded)", ", ".join(restart))
        reloaded = {name: getattr(config, name) for name in RELOADED}
        limits = config.tenant_limits()
        if limits != old.tenant_limits():
            if ctx.limiter is None:
                log.warning("SIGHUP: tenant limits were off at start; restart the gateway to turn them on")
                reloaded["file_tenant_limits"] = old.file_tenant_limits
            else:
                ctx.limiter.limits = limits if limits is not None else TenantLimits()
        ctx.config = dataclasses.replace(old, **reloaded)
        if file is not None:
            self.wanted = file.workers
            self.discovered.apply(self.wanted)
        if not self.settings_too:
            log.info("SIGHUP: %s reread: %d workers and providers listed", old.config_file, len(self.wanted))
            return
        log.info(
            "SIGHUP: %s reread: %d workers and providers listed, %d aliases, %d fallbacks",
            old.config_file,
            len(self.wanted),
            len(ctx.config.model_alias),
            len(ctx.config.model_fallback),
        )
