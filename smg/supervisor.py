"""`smg launch --processes N`: one parent, N gateway processes on this host.

Python runs one core per process, so a host's cores are used by running several gateways. Each
is a whole gateway and a whole mesh member (`GatewayConfig.for_process`): the kernel spreads
client connections over them (SO_REUSEPORT on --port and --health-check-port), and everything
they must agree on (workers, health, loads, tenant limits, prefix summaries) is replicated
between them exactly as between gateways on different hosts. So N processes behave as N nodes
of a cluster, which is what the mesh was built for, and a process that dies is a node that
dies: its in-flight requests fail, the others carry on.

The parent does no gateway work. It:
- starts the processes (`python -m smg launch <the same flags>`, with $SMG_PROCESS_INDEX),
  after taking what must be taken once per host: the default SQLite history file's lock (the
  processes then share the file, which SQLite's WAL mode allows) and, when the processes form a
  mesh of their own (no --ha-mesh, no key), a fresh key for it;
- restarts a process that dies, at once (logged); one that keeps dying (more than
  `MAX_RESTARTS` within `RESTART_WINDOW_SECS`) stops them all with exit status 1, and one that
  fails at start-up (exit status 2: a taken port, a bad flag) stops them all with 2;
- forwards SIGTERM and SIGINT, so each process runs its own settle-and-drain sequence, and
  waits for them (a second signal kills them);
- holds the write end of a pipe whose read end each process watches: when the parent dies (even
  by SIGKILL) the processes see end-of-file and shut down, so none is left serving without a
  supervisor. (Not PR_SET_PDEATHSIG: it fires when the forking *thread* exits, and trio starts
  processes from its worker threads, which end when idle.)

Metrics stay per process, on consecutive ports from --prometheus-port: each series is then
exact and cheap (no shared files between processes, as prometheus_client's multiprocess mode
needs), and Prometheus sums them with `sum without (instance)`.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

import trio

from smg.config import GatewayConfig
from smg.config.server import process_count
from smg.storage import lock as history_lock

log = logging.getLogger("smg.supervisor")

RESTART_WINDOW_SECS = 60.0
MAX_RESTARTS = 5  # deaths of one process within the window before the parent gives up
STARTUP_ERROR = 2  # a gateway's exit status for a start-up error (one line on stderr)


def _status(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"


class Supervisor:
    """Runs `count` gateway processes and keeps them running (see the module docstring)."""

    def __init__(self, count: int, command: Sequence[str], env: dict[str, str]) -> None:
        self.count = count
        self.command = list(command)
        # the processes' lifeline: they read its end; only this process holds the write end
        self._lifeline, self._held = os.pipe()
        os.set_inheritable(self._lifeline, True)
        self.env = {**env, "SMG_PROCESS_PARENT_FD": str(self._lifeline)}
        self.processes: dict[int, trio.Process] = {}
        self.stopping = False
        self.exit_code = 0

    async def run(self) -> int:
        async with trio.open_nursery() as outer:
            outer.start_soon(self._signals)
            try:
                async with trio.open_nursery() as children:
                    for index in range(self.count):
                        children.start_soon(self._keep, index)
            finally:
                self._signal_all(signal.SIGKILL)  # an unexpected way out: leave none behind (a no-op after a stop)
                os.close(self._lifeline)
                os.close(self._held)
            outer.cancel_scope.cancel()
        return self.exit_code

    def stop(self, exit_code: int = 0) -> None:
        """Stop every process (SIGTERM: each drains); `exit_code` is the parent's."""
        if not self.stopping:
            self.stopping = True
            self.exit_code = exit_code
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, signum: int) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    async def _keep(self, index: int) -> None:
        deaths: collections.deque[float] = collections.deque()
        env = {**self.env, "SMG_PROCESS_INDEX": str(index)}
        while not self.stopping:
            process = await trio.lowlevel.open_process(self.command, env=env, pass_fds=(self._lifeline,))
            self.processes[index] = process
            log.info("gateway process %d started (pid %d)", index, process.pid)
            if self.stopping:  # the stop came while it was starting: it missed the signal
                process.send_signal(signal.SIGTERM)
            code = await process.wait()
            if self.stopping:
                log.info("gateway process %d (pid %d) stopped (%s)", index, process.pid, _status(code))
                return
            if code == STARTUP_ERROR:
                log.error("gateway process %d could not start (see its error above); stopping", index)
                self.stop(STARTUP_ERROR)
                return
            now = trio.current_time()
            deaths.append(now)
            while deaths and deaths[0] < now - RESTART_WINDOW_SECS:
                deaths.popleft()
            if len(deaths) > MAX_RESTARTS:
                log.error(
                    "gateway process %d died %d times within %.0fs (last: %s); stopping",
                    index,
                    len(deaths),
                    RESTART_WINDOW_SECS,
                    _status(code),
                )
                self.stop(1)
                return
            log.warning("gateway process %d (pid %d) exited with %s; restarting it", index, process.pid, _status(code))

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as received:
            async for signum in received:
                if signum == signal.SIGHUP:  # --config reread: by every process, each its own
                    self._signal_all(signal.SIGHUP)
                elif not self.stopping:
                    log.info("%s: stopping %d gateway processes", signal.Signals(signum).name, self.count)
                    self.stop(0)
                else:  # asked twice: do not wait for the drains
                    self._signal_all(signal.SIGKILL)


async def supervise(config: GatewayConfig, argv: Sequence[str]) -> int:
    """Run `config.processes` gateway processes with the flags `argv` (the parent's own)."""
    count = process_count(config.processes)
    env = dict(os.environ)
    if not config.ha_mesh and not config.mesh_key_list():
        env["SMG_MESH_KEY"] = base64.b64encode(os.urandom(32)).decode()  # the siblings' mesh: this host's key
    held = None
    if config.history_backend == "sqlite" and config.history_path_is_default():
        path = config.history_path()
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        held = history_lock.acquire(path)  # for the processes, which share the file
        env["SMG_HISTORY_DB_PATH"] = path
    mesh = f"mesh ports {config.mesh_port}-{config.mesh_port + count - 1}"
    log.info("starting %d gateway processes on port %d (%s)", count, config.port, mesh)
    try:
        return await Supervisor(count, [sys.executable, "-m", "smg", "launch", *argv], env).run()
    finally:
        if held is not None:
            history_lock.release(held)
