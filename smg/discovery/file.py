"""`--discovery-provider file`: workers listed in a JSON manifest, reread as soon as it changes.

The file is checked every `POLL_SECS` (its size, modification time and inode) and reread
when any of them changed, and at least every `--discovery-check-interval-secs`. It may
appear after the start: until then the gateway waits for it (logged once). A manifest
that does not parse leaves the registry as it was (logged once per distinct problem).
The shell only decides and calls back; the gateway's callbacks add, update and remove
workers the same way `POST /workers` does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from smg.discovery.manifest import ManifestError, WorkerSpec, diff, parse

log = logging.getLogger("smg.workers")

POLL_SECS = 1.0
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


@dataclass
class Callbacks:
    """What discovery asks of the gateway; each may raise ValueError for a worker it refuses."""

    add: Callable[[WorkerSpec], None]
    update: Callable[[WorkerSpec], None]
    remove: Callable[[str], None]
    # registered and not draining: a listed worker removed behind discovery's back (DELETE
    # /workers, --remove-unhealthy-workers) is added again at the next reread
    present: Callable[[str], bool] = lambda url: True


@dataclass
class FileDiscovery:
    path: str
    check_interval: float
    callbacks: Callbacks
    discovered: dict[str, WorkerSpec] = field(default_factory=dict)  # by URL: what this source added
    rereads: int = 0
    _stamp: tuple[int, int, int] | None = None
    _last_problem: str | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        next_reread = trio.current_time()
        while True:
            stamp = self._stat()
            now = trio.current_time()
            if stamp is not None and (stamp != self._stamp or now >= next_reread):
                self._stamp = stamp
                next_reread = now + self.check_interval
                await self.reread()
            await trio.sleep(POLL_SECS)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._problem(f"discovery file {self.path} does not exist yet; waiting for it")
            return None
        except OSError as exc:
            self._problem(f"discovery file {self.path}: {exc.strerror}")
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    async def reread(self) -> None:
        """Read the manifest and apply it; a checkpoint, so a long list does not starve the loop."""
        await trio.lowlevel.checkpoint()
        try:
            # read in the event loop, not a thread: a manifest is small and local, and a
            # thread per poll would cost more than the read (the size is bounded)
            with open(self.path, "rb") as f:
                data = f.read(MAX_MANIFEST_BYTES + 1)
            if len(data) > MAX_MANIFEST_BYTES:
                raise ManifestError(f"larger than {MAX_MANIFEST_BYTES} bytes")
            wanted = parse(data)
        except OSError as exc:
            self._problem(f"discovery file {self.path}: {exc.strerror}")
            return
        except ManifestError as exc:
            self._problem(f"discovery file {self.path} is not used (the workers stay as they were): {exc}")
            return
        self.rereads += 1
        self._last_problem = None
        self.apply(wanted)

    def apply(self, wanted: list[WorkerSpec]) -> None:
        self.discovered = {url: spec for url, spec in self.discovered.items() if self.callbacks.present(url)}
        changes = diff(wanted, self.discovered)
        for spec in changes.add:
            try:
                self.callbacks.add(spec)
            except ValueError as exc:
                log.warning("discovery: worker %s not added: %s", spec.url, exc)
                continue
            self.discovered[spec.url] = spec
            log.info("discovery: added worker %s", spec.url)
        for spec in changes.update:
            self.callbacks.update(spec)
            self.discovered[spec.url] = spec
            log.info("discovery: updated worker %s", spec.url)
        for url in changes.remove:
            self.callbacks.remove(url)
            del self.discovered[url]
            log.info("discovery: removing worker %s (no longer listed)", url)

    def _problem(self, line: str) -> None:
        if line != self._last_problem:
            log.warning("%s", line)
            self._last_problem = line
