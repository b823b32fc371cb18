"""The `smg` command: `smg [launch]`, `smg serve`, `smg sim-worker`.

Gateway flags are spelled as the reference gateway spells them, so a user can
switch by changing the command name only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, NoReturn

import httpx
import trio

from smg import __version__
from smg.cluster.node import advertise_host
from smg.config import GROUPS, LOG_LEVELS, GatewayConfig
from smg.config.file import FileConfig, layered
from smg.config.server import process_count
from smg.gateway import run_gateway, run_serve
from smg.http.server import ServeError, find_error
from smg.observability.logs import setup_logging
from smg.settings import ConfigError, add_arguments, values_from
from smg.simworker.engine import SimConfig
from smg.simworker.fleet import run_fleet, run_supervised
from smg.supervisor import supervise

COMMANDS = ("launch", "serve", "sim-worker", "mesh")

EPILOG = """commands:
  smg [launch] ...           run the gateway over --worker-urls (the default command)
  smg serve --sim-workers N  run N simulated workers and a gateway over them (embedded default)
  smg sim-worker ...         run simulated workers alone (see: smg sim-worker --help)
  smg mesh status --url URL  print a gateway's view of the HA mesh members
"""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"smg: error: {message}\n")


def add_gateway_args(parser: argparse.ArgumentParser) -> None:
    """Every gateway flag, generated from `GatewayConfig`'s fields (see `smg.settings`)."""
    add_arguments(parser, GatewayConfig, group_order=GROUPS)


def add_sim_args(parser: argparse.ArgumentParser, prefix: str) -> None:
    add_arguments(parser, SimConfig, dest_prefix="sim_", flag_prefix=prefix)


def sim_config_from(args: argparse.Namespace) -> SimConfig:
    return SimConfig(**values_from(SimConfig, args, dest_prefix="sim_"))


def gateway_config_from(args: argparse.Namespace) -> GatewayConfig:
    return configured(args)[0]


def configured(args: argparse.Namespace) -> tuple[GatewayConfig, FileConfig | None]:
    """The gateway's settings (flags over `SMG_*` variables over `--config`'s file over the
    defaults), and what the file says (its workers and providers); again on SIGHUP."""
    values, loaded = layered(values_from(GatewayConfig, args), os.environ, GatewayConfig)
    return GatewayConfig(**values), loaded


def build_parser(command: str) -> Parser:
    if command == "launch":
        parser = Parser(
            prog="smg",
            description="smg: high-availability LLM routing gateway",
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument("--version", action="version", version=f"smg {__version__}")
        add_gateway_args(parser)
    elif command == "serve":
        parser = Parser(prog="smg serve", description="simulated workers plus a gateway over them: the embedded default")
        parser.add_argument("--sim-workers", type=int, default=2, help="how many simulated workers (default: %(default)s)")
        parser.add_argument("--sim-host", default="127.0.0.1", help="address the simulated workers bind (default: %(default)s)")
        parser.add_argument(
            "--sim-port",
            type=int,
            default=None,
            help="port of the first simulated worker, the rest follow (default: free ports the system picks, "
            "so they never collide with the gateway's own listeners)",
        )
        add_gateway_args(parser)
        add_sim_args(parser, "sim-")
    elif command == "mesh":
        parser = Parser(prog="smg mesh", description="inspect a running HA mesh through one gateway")
        parser.add_argument(
            "action", choices=["status"], help="status: members, store digests (agreeing or not) and each gateway's workers"
        )
        parser.add_argument("--url", default="http://127.0.0.1:30000", help="a gateway's URL (default: %(default)s)")
        parser.add_argument("--api-key", help="a control-plane credential: the gateway's --api-key, a control-plane key or a JWT")
        parser.add_argument("--json", action="store_true", help="print the view as JSON (what the /ui page reads)")
    else:
        parser = Parser(prog="smg sim-worker", description="simulated OpenAI-compatible workers with a prefix KV-cache model")
        parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
        parser.add_argument(
            "--port", type=int, default=8000, help="port of the first worker; 0 picks free ports (default: %(default)s)"
        )
        parser.add_argument("--count", type=int, default=1, help="workers on consecutive ports (default: %(default)s)")
        parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
        parser.add_argument("--log-json", action="store_true")
        # the child of `smg serve`: report the ports on stdout, exit when stdin closes
        parser.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
        add_sim_args(parser, "")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = "launch"
    if args_list and args_list[0] in COMMANDS:
        command = args_list.pop(0)
    parser = build_parser(command)
    args = parser.parse_args(args_list)
    if command == "mesh":
        return print_mesh_status(args.url, args.api_key, as_json=args.json)
    try:
        runner, logging = _runner(command, args, args_list)
        setup_logging(*logging)  # before anything starts: an unusable --log-dir is one line too
    except (ConfigError, ValueError) as exc:
        parser.error(str(exc))
    # SIGHUP rereads --config once the gateway can (`smg.reconfigure`); until then, and for
    # processes that never handle it, it must not end the process as its default action would
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        result = trio.run(runner)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # a start-up failure is one line, not a trio traceback
        error = find_error(exc, ServeError) or find_error(exc, ConfigError)
        if error is None:
            raise
        print(f"smg: error: {error}", file=sys.stderr)
        return error.exit_code if isinstance(error, ServeError) else 2
    return result if isinstance(result, int) else 0


def print_mesh_status(url: str, api_key: str | None, *, as_json: bool = False) -> int:
    """`smg mesh status`: one line per member, each store's digest and whether the gateways agree on
    it, then each gateway's own view of the workers: what the cluster page (`/ui`) shows, from the
    same endpoint."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    endpoint = url.rstrip("/") + "/ui/api/cluster"
    try:
        response = httpx.get(endpoint, params={"series": "0"}, headers=headers, timeout=10)
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        print(f"smg: error: cannot read {endpoint}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        print(f"smg: error: {endpoint} answered {response.status_code}: {message or response.text}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(body, indent=2, sort_keys=True))
        return 0
    rows = [("NAME", "ADDRESS", "HTTP", "HOST", "STATUS", "INCARNATION")]
    # the processes of one host (--processes N) together, each named by its index
    for node in sorted(body["nodes"], key=lambda n: (n.get("host") or "", n.get("process") is None, n["name"])):
        name = node["name"] + (" *" if node["name"] == body["node_name"] else "")
        host = node.get("host") or "-"
        if node.get("process") is not None:
            host += f" (process {node['process']})"
        address = node.get("address") or "-"
        rows.append((name, address, node.get("http_address") or "-", host, node["status"], str(node["incarnation"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(f"\n{body['node_count']} live of {len(body['nodes'])} known members (* = the node asked)")
    for store, info in sorted(body.get("stores", {}).items()):
        print(f"store {store}: {info['entries']} entries, digest {info['digest']}")
    views = body.get("views", {})
    differing = sorted(store for store, same in body.get("agreeing", {}).items() if not same)
    if differing:
        for store in differing:
            found = ", ".join(
                f"{name}: {view['replication']['stores'][store]['digest']}"
                for name, view in sorted(views.items())
                if store in view.get("replication", {}).get("stores", {})
            )
            print(f"store {store}: digests differ ({found})")
    elif body.get("agreeing"):
        print(f"digests agree on every gateway that answered ({sum(1 for v in views.values() if 'error' not in v)})")
    for name, view in sorted(views.items()):
        if "error" in view:
            print(f"gateway {name}: {view['error']}")
            continue
        workers = view.get("workers", [])
        ready = sum(1 for w in workers if w.get("status") == "ready")
        print(f"gateway {name}: {len(workers)} workers ({ready} ready), {view.get('in_flight', 0)} in flight")
    if body.get("error"):
        print(f"mesh error: {body['error']}")
    return 0


def _checked(config: GatewayConfig) -> GatewayConfig:
    """Checks that need the machine (routes, files) and fail before anything starts."""
    if config.ha_mesh:
        advertise_host(config)
        config.mesh_key_list()
    return config


def _runner(command: str, args: argparse.Namespace, argv: list[str]) -> tuple[Any, tuple[str, bool, str | None, int | None]]:
    """What to run, and the log level, format and directory (`setup_logging`'s arguments) it runs with."""
    if command == "launch":
        config = gateway_config_from(args)
        logging = (config.log_level, config.log_json, config.log_dir, config.process_index)
        if config.process_index is not None:  # one of the processes of --processes N
            config = config.for_process(config.process_index)
        elif process_count(config.processes) > 1:  # the parent of --processes N
            _checked(config.for_process(0))  # a mesh that cannot start fails here, once, not in every process
            return partial(supervise, config, argv), logging
        config = _checked(config)
        gateway = partial(run_gateway, config, handle_signals=True, reconfigure=partial(configured, args), settle=settle_heap)
        return partial(settled_once_started, gateway), logging
    sim = sim_config_from(args)
    if command == "serve":
        if args.sim_workers < 1:
            raise ConfigError("--sim-workers must be at least 1")
        config = _checked(gateway_config_from(args))
        if process_count(config.processes) > 1:
            raise ConfigError("--processes is for smg launch: smg serve runs its simulated workers in its own process")
        if args.sim_port is not None and not 1 <= args.sim_port <= 65536 - args.sim_workers:
            raise ConfigError(f"--sim-port {args.sim_port} leaves no room for {args.sim_workers} workers")
        serve = partial(run_serve, config, sim, args.sim_workers, args.sim_host, args.sim_port)
        return partial(settled_once_started, partial(serve, reconfigure=partial(configured, args))), (
            config.log_level,
            config.log_json,
            config.log_dir,
            None,
        )
    if args.count < 1:
        raise ConfigError("--count must be at least 1")
    if not 0 <= args.port <= 65536 - args.count:
        raise ConfigError(f"--port {args.port} leaves no room for {args.count} workers")
    fleet = partial(settled_once_started, partial(run_fleet, sim, args.host, args.port, args.count))
    run = partial(run_supervised, sim, args.host, args.port, args.count, settle_heap) if args.supervised else fleet
    return run, (args.log_level, args.log_json, None, None)


async def settled_once_started(serve: Callable[..., Awaitable[Any]]) -> Any:
    """Run `serve` (a server taking `task_status`); once it has started, `settle_heap()`."""
    result = None

    async def run(*, task_status: trio.TaskStatus[Any]) -> None:
        nonlocal result
        result = await serve(task_status=task_status)

    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        settle_heap()
    return result


def settle_heap() -> None:
    """Exempt everything a starting server holds from the cyclic garbage collector (`gc.freeze`).

    Start-up leaves a million long-lived objects (modules, classes, settings, the libraries'
    tables). Python's oldest-generation collection walks all of them whenever the heap has
    grown by a quarter since the last one, which happens in the first minute of traffic: a
    gateway then stops for 75-185 ms on this 2-core machine, and a simulated engine for 95 ms
    (`bench/cluster_routing.py`, the issue-20 workload: with 8 gateways each one stops once,
    and every request in flight there waits; with one gateway the TTFT p99 fell from 41.7 to
    32.1 ms once this was done). The gateway calls it just before its data plane takes
    connections, and `settled_once_started` again once everything has started (the second
    pass walks only what start-up added since). Frozen objects are still freed by reference
    counting; what is never collected is a reference cycle through them that becomes
    garbage later: the stores a mesh restart replaces (bounded: once per restart), or a
    `--worker-urls` worker removed later. What the server allocates from here on is
    collected as before.
    """
    gc.collect()
    gc.freeze()
