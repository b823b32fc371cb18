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
from dataclasses import dataclass, field

import trio

from smg.discovery.apply import Callbacks, Discovered
from smg.discovery.manifest import ManifestError, WorkerSpec, parse

__all__ = ["POLL_SECS", "Callbacks", "FileDiscovery"]

log = logging.getLogger("smg.workers")

POLL_SECS = 1.0
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


@dataclass
class FileDiscovery:
    path: str
    check_interval: float
    callbacks: Callbacks
    rereads: int = 0
    _stamp: tuple[int, int, int] | None = None
    _last_problem: str | None = None
    _applier: Discovered = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._applier = Discovered(self.callbacks, gone="no longer listed")

    @property
    def discovered(self) -> dict[str, WorkerSpec]:
        """What this source added, by URL."""
        return self._applier.by_url

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
        self._applier.apply(wanted)

    def _problem(self, line: str) -> None:
        if line != self._last_problem:
            log.warning("%s", line)
            self._last_problem = line
