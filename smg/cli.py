"""The `smg` command: `smg [launch]`, `smg serve`, `smg sim-worker`.

Gateway flags are spelled as the reference gateway spells them, so a user can
switch by changing the command name only.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any, NoReturn

import httpx
import trio

from smg import __version__
from smg.cluster.node import advertise_host
from smg.config import (
    DEFAULT_REQUEST_ID_HEADERS,
    LOG_LEVELS,
    GatewayConfig,
)
from smg.gateway import run_gateway, run_serve
from smg.http.server import ServeError, find_error
from smg.observability.logs import setup_logging
from smg.routing.policies import POLICIES
from smg.settings import ConfigError
from smg.simworker.engine import SimConfig
from smg.simworker.fleet import run_fleet, run_supervised
from smg.storage.settings import HISTORY_BACKENDS
from smg.upstream import UPSTREAM_CLIENTS

COMMANDS = ("launch", "serve", "sim-worker", "mesh")

EPILOG = """commands:
  smg [launch] ...           run the gateway over --worker-urls (the default command)
  smg serve --sim-workers N  run N simulated workers and a gateway over them (embedded default)
  smg sim-worker ...         run simulated workers alone (see: smg sim-worker --help)
  smg mesh status --url URL  print a gateway's view of the HA mesh members
"""

SIM_HELP = {
    "model": "model id the worker serves",
    "seed": "seed of the fault draws and generated text (worker i uses seed + i)",
    "ttft_ms": "fixed part of time to first token, in ms",
    "prefill_tokens_per_sec": "prefill speed: uncached prompt tokens per second added to the TTFT",
    "tpot_ms": "decode time per output token, in ms, with one running request",
    "batch_slowdown": "fractional slowdown of decode per extra running request",
    "max_running": "requests decoded at once; more wait in a FIFO queue",
    "cache_blocks": "prefix KV-cache capacity in blocks of 16 tokens (LRU)",
    "output_tokens": "output tokens when the request sets no max_tokens",
    "embedding_dim": "dimension of generated embeddings",
    "owned_by": "owned_by reported by /v1/models (gateways read the engine type from it)",
    "fail_rate": "fraction of generation requests answered with --*fail-status",
    "fail_status": "HTTP status of injected failures",
    "unhealthy": "answer /health with 503",
    "hang_rate": "fraction of requests that hang before the first byte until the client leaves",
    "die_mid_stream_rate": "fraction of streams cut off half-way (connection dropped)",
}


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"smg: error: {message}\n")


def add_gateway_args(parser: argparse.ArgumentParser) -> None:
    net = parser.add_argument_group("server")
    net.add_argument("--host", default="0.0.0.0", help="address to bind the gateway (default: %(default)s)")
    net.add_argument("--port", type=int, default=30000, help="port of the gateway (default: %(default)s)")
    net.add_argument("--tls-cert-path", help="serve HTTPS with this PEM certificate (needs --tls-key-path)")
    net.add_argument("--tls-key-path", help="PEM private key for --tls-cert-path")
    net.add_argument(
        "--max-payload-size",
        type=int,
        default=512 * 1024 * 1024,
        help="largest request body in bytes; larger gets 413 (default: %(default)s)",
    )
    net.add_argument(
        "--request-timeout-secs",
        type=float,
        default=1800.0,
        help="longest a request may take end to end; then 504 (default: %(default)s)",
    )
    net.add_argument(
        "--shutdown-grace-period-secs",
        type=float,
        default=180.0,
        help="on SIGTERM, how long in-flight requests may finish (default: %(default)s)",
    )
    net.add_argument(
        "--header-read-timeout-secs",
        type=float,
        default=30.0,
        help="close a connection whose request head is not complete this long after it was accepted (or after "
        "the first byte of a later request's head), or whose request body stops arriving for this long; "
        "0 disables (default: %(default)s)",
    )
    net.add_argument(
        "--idle-connection-timeout-secs",
        type=float,
        default=90.0,
        help="close a keep-alive connection with no request in flight for this long (an open stream counts as in "
        "flight), and one whose client reads nothing of a response for this long; keep it above the idle timeout "
        "of a balancer in front; 0 disables (default: %(default)s)",
    )
    net.add_argument(
        "--max-client-connections",
        type=int,
        default=10_000,
        help="open client connections this process accepts at once; more wait in the listen backlog, with a "
        "warning in the log (default: %(default)s)",
    )
    net.add_argument(
        "--request-id-headers",
        nargs="+",
        default=list(DEFAULT_REQUEST_ID_HEADERS),
        metavar="HEADER",
        help="headers whose value is taken as the request id, first match wins (default: %(default)s)",
    )
    net.add_argument(
        "--api-key", help="require 'Authorization: Bearer KEY' on every route but the probes and /v1/models; also sent to workers"
    )

    workers = parser.add_argument_group("workers and routing")
    workers.add_argument(
        "--worker-urls", nargs="*", default=[], metavar="URL", help="worker base URLs, e.g. http://127.0.0.1:8000"
    )
    workers.add_argument(
        "--policy", choices=list(POLICIES), default="cache_aware", help="load-balancing policy (default: %(default)s)"
    )
    workers.add_argument(
        "--enable-igw",
        action="store_true",
        help="multi-model mode: start with no workers and serve whatever models workers added through /workers offer",
    )
    workers.add_argument(
        "--worker-startup-timeout-secs",
        type=float,
        default=1800.0,
        help="how long a new worker may take to pass its first health check (default: %(default)s)",
    )
    workers.add_argument(
        "--worker-startup-check-interval",
        type=float,
        default=1.0,
        help="longest pause between start-up probes, in seconds (default: %(default)s)",
    )
    workers.add_argument(
        "--connect-timeout-secs",
        type=float,
        default=10.0,
        help="limit for opening a connection to a worker; then 502 (default: %(default)s)",
    )
    workers.add_argument(
        "--upstream-client",
        choices=UPSTREAM_CLIENTS,
        default="pool",
        help="HTTP client of the data plane: smg's lean keep-alive pool, or httpx (default: %(default)s)",
    )
    workers.add_argument(
        "--upstream-max-idle-per-worker",
        type=int,
        default=256,
        help="idle keep-alive connections kept per worker (default: %(default)s)",
    )

    policy = parser.add_argument_group("policy tuning")
    policy.add_argument(
        "--cache-threshold",
        "--cache-match-threshold",
        dest="cache_threshold",
        type=float,
        default=0.3,
        help="cache_aware: least matched share of the prompt that pins it to the matching worker (default: %(default)s)",
    )
    policy.add_argument(
        "--balance-abs-threshold",
        "--spill-abs-threshold",
        dest="balance_abs_threshold",
        type=int,
        default=64,
        help="cache_aware: imbalance when max - min load exceeds this ... (default: %(default)s)",
    )
    policy.add_argument(
        "--balance-rel-threshold",
        "--spill-rel-threshold",
        dest="balance_rel_threshold",
        type=float,
        default=1.5,
        help="... and max exceeds this multiple of min; then the least loaded wins (default: %(default)s)",
    )
    policy.add_argument(
        "--max-tree-size",
        type=int,
        default=64 * 1024 * 1024,
        help="cache_aware: characters (or tokens) remembered per model, shared by its workers (default: %(default)s)",
    )
    policy.add_argument(
        "--eviction-interval-secs",
        type=float,
        default=60.0,
        help="cache_aware: seconds between evictions down to --max-tree-size (default: %(default)s)",
    )
    policy.add_argument("--tokenizer-path", help="cache_aware in token mode: a tokenizer.json (or a directory holding one)")
    policy.add_argument(
        "--prefix-token-count",
        type=int,
        default=256,
        help="prefix_hash: tokens hashed (4 characters each, untokenised) (default: %(default)s)",
    )
    policy.add_argument(
        "--prefix-hash-load-factor",
        type=float,
        default=1.25,
        help="prefix_hash: a worker above this multiple of its fair share is passed over (default: %(default)s)",
    )
    policy.add_argument(
        "--max-idle-secs",
        "--sticky-key-idle-secs",
        dest="max_idle_secs",
        type=float,
        default=14400.0,
        help="manual: an unused routing key is forgotten after this (default: %(default)s)",
    )
    policy.add_argument(
        "--bucket-adjust-interval-secs",
        type=float,
        default=60.0,
        help="bucket: seconds between boundary adjustments (default: %(default)s)",
    )
    policy.add_argument(
        "--load-monitor-interval",
        type=float,
        default=10.0,
        help="seconds between polls of workers' /v1/loads for load-aware policies (default: %(default)s)",
    )
    policy.add_argument(
        "--disable-load-monitoring", action="store_true", help="load-aware policies use the gateway's in-flight counts only"
    )

    health = parser.add_argument_group("worker health")
    health.add_argument(
        "--health-check-interval-secs",
        type=float,
        default=10.0,
        help="seconds between health probes of each worker (default: %(default)s; the reference: 60)",
    )
    health.add_argument(
        "--health-check-timeout-secs", type=float, default=5.0, help="limit of one health probe (default: %(default)s)"
    )
    health.add_argument("--health-check-endpoint", default="/health", help="path probed on each worker (default: %(default)s)")
    health.add_argument(
        "--health-success-threshold",
        type=int,
        default=2,
        help="consecutive successes that make a worker ready (default: %(default)s)",
    )
    health.add_argument(
        "--health-failure-threshold",
        type=int,
        default=3,
        help="consecutive failures that take a worker out (default: %(default)s)",
    )
    health.add_argument(
        "--health-failed-threshold",
        type=int,
        default=30,
        help="consecutive failures after which a worker is 'failed' (default: %(default)s)",
    )
    health.add_argument(
        "--disable-health-check", action="store_true", help="no periodic probes: a worker is ready once discovered"
    )
    health.add_argument(
        "--remove-unhealthy-workers", action="store_true", help="remove workers that reach 'failed' (default: keep probing them)"
    )

    breaker = parser.add_argument_group("circuit breaker")
    breaker.add_argument(
        "--cb-failure-threshold",
        type=int,
        default=10,
        help="consecutive failed attempts that open a worker's breaker (default: %(default)s)",
    )
    breaker.add_argument(
        "--cb-success-threshold", type=int, default=3, help="successful half-open probes that close it (default: %(default)s)"
    )
    breaker.add_argument(
        "--cb-timeout-duration-secs",
        type=float,
        default=60.0,
        help="how long an open breaker hides the worker (default: %(default)s)",
    )
    breaker.add_argument(
        "--cb-window-duration-secs",
        type=float,
        default=120.0,
        help="failures further apart than this do not add up (default: %(default)s)",
    )
    breaker.add_argument("--disable-circuit-breaker", action="store_true")

    retry = parser.add_argument_group("retries and timeouts")
    retry.add_argument(
        "--retry-max-retries",
        type=int,
        default=5,
        help="attempts in total, the first included; each picks a worker again (default: %(default)s)",
    )
    retry.add_argument("--retry-initial-backoff-ms", type=float, default=50.0, help="(default: %(default)s)")
    retry.add_argument("--retry-max-backoff-ms", type=float, default=30000.0, help="(default: %(default)s)")
    retry.add_argument("--retry-backoff-multiplier", type=float, default=1.5, help="(default: %(default)s)")
    retry.add_argument(
        "--retry-jitter-factor", type=float, default=0.2, help="backoff varies by +/- this fraction (default: %(default)s)"
    )
    retry.add_argument("--disable-retries", action="store_true", help="one attempt only")
    retry.add_argument(
        "--worker-first-byte-timeout-secs",
        type=float,
        default=120.0,
        help="a worker sending no response headers within this fails the attempt (default: %(default)s)",
    )
    retry.add_argument(
        "--stream-stall-timeout-secs",
        type=float,
        default=300.0,
        help="a stream silent this long is ended with an error event (default: %(default)s)",
    )
    retry.add_argument(
        "--max-upstream-response-size",
        type=int,
        default=256 * 1024 * 1024,
        metavar="BYTES",
        help="largest non-streamed answer read from a worker; larger is 502 upstream_protocol_error (default: %(default)s)",
    )
    retry.add_argument(
        "--max-sse-event-size",
        type=int,
        default=16 * 1024 * 1024,
        metavar="BYTES",
        help="largest single server-sent event relayed from a worker; larger ends the stream with an error event "
        "(default: %(default)s)",
    )

    admission = parser.add_argument_group("admission and auth")
    admission.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=-1,
        help="requests served at once; the permit is held until the response (stream included) ends; -1: no limit (default: %(default)s)",
    )
    admission.add_argument(
        "--queue-size",
        type=int,
        default=100,
        help="requests that may wait for a permit; beyond: 429 admission_queue_full (default: %(default)s)",
    )
    admission.add_argument(
        "--queue-timeout-secs",
        type=float,
        default=60.0,
        help="longest wait for a permit; then 503 admission_queue_timeout (default: %(default)s)",
    )
    admission.add_argument(
        "--rate-limit-tokens-per-second",
        type=float,
        default=0.0,
        help="admitted requests per second (a token bucket bursting to --max-concurrent-requests); 0: no rate limit",
    )
    admission.add_argument(
        "--tenant-api-key",
        dest="tenant_api_keys",
        action="append",
        default=[],
        metavar="TENANT:KEY",
        help="a data-plane key of one tenant (repeatable); tenant keys get 401 on control-plane routes",
    )
    admission.add_argument(
        "--tenant-rate-limit-config",
        metavar="FILE",
        help='per-tenant limits, JSON or YAML: {"default": {"requests_per_minute": N, "tokens_per_minute": M}, '
        '"tenants": {"NAME": {...}}}; cluster-wide with --ha-mesh',
    )
    admission.add_argument(
        "--cors-allowed-origins", nargs="+", default=[], metavar="ORIGIN", help="origins browsers may call from, or '*'"
    )

    obs = parser.add_argument_group("logs and metrics")
    obs.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="(default: %(default)s)")
    obs.add_argument("--log-json", action="store_true", help="one JSON object per log line, with the request id")
    obs.add_argument(
        "--prometheus-host",
        default=None,
        help="address of the /metrics server (default: --host, so a gateway on loopback keeps its metrics there)",
    )
    obs.add_argument(
        "--prometheus-port",
        type=int,
        default=29000,
        help="port of the /metrics server; 0 picks a free port (default: %(default)s)",
    )
    add_mesh_args(parser)
    add_history_args(parser)


def _seed_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_mesh_args(parser: argparse.ArgumentParser) -> None:
    mesh = parser.add_argument_group("HA mesh (several gateways as one)")
    mesh.add_argument(
        "--ha-mesh", "--enable-mesh", dest="ha_mesh", action="store_true", help="join the other gateways in a SWIM mesh"
    )
    mesh.add_argument(
        "--seeds",
        dest="mesh_seeds",
        type=_seed_list,
        action="extend",
        default=[],
        metavar="HOST:PORT,...",
        help="mesh addresses of other gateways; every one is tried, and retried until one answers",
    )
    mesh.add_argument(
        "--mesh-peer-urls", dest="mesh_seeds", nargs="*", action="extend", metavar="HOST:PORT", help="same as --seeds"
    )
    mesh.add_argument("--mesh-host", default="0.0.0.0", help="address the mesh binds, UDP and TCP (default: %(default)s)")
    mesh.add_argument("--mesh-port", type=int, default=39527, help="mesh port, UDP and TCP; 0 picks one (default: %(default)s)")
    mesh.add_argument(
        "--mesh-advertise-host",
        help="address peers reach this node at; needed with --mesh-host 0.0.0.0 unless the route to a seed tells it",
    )
    mesh.add_argument(
        "--mesh-server-name",
        help="this node's member name (default: ADVERTISE_HOST:MESH_PORT, stable across restarts so the node rejoins as itself)",
    )
    mesh.add_argument(
        "--mesh-cluster-label", default="", help="bound into every packet: clusters with different labels never merge"
    )
    mesh.add_argument(
        "--mesh-key",
        dest="mesh_keys",
        action="append",
        default=[],
        metavar="BASE64",
        help="AES-GCM key (16, 24 or 32 bytes, base64; repeatable, the first encrypts); default: $SMG_MESH_KEY "
        "(comma-separated); none: unencrypted, with a warning",
    )
    mesh.add_argument("--mesh-keyring-file", help="file of base64 mesh keys, one per line, after any --mesh-key")
    mesh.add_argument(
        "--mesh-health-owners",
        type=int,
        default=2,
        help="gateways that health-check each worker (rendezvous-hashed over alive members); the rest follow their "
        "majority verdict (default: %(default)s)",
    )
    mesh.add_argument(
        "--mesh-prefix-budget",
        type=int,
        default=100_000,
        help="cache_aware: shared prefix-summary entries kept per model (default: %(default)s)",
    )
    mesh.add_argument(
        "--mesh-prefix-ttl-secs",
        type=float,
        default=180.0,
        help="cache_aware: a shared prefix record not seen again for this long is dropped (default: %(default)s)",
    )
    mesh.add_argument(
        "--mesh-fault-injection",
        action="store_true",
        help="testing only: enable POST /mesh/faults (drop mesh traffic to chosen members, random loss)",
    )


def add_history_args(parser: argparse.ArgumentParser) -> None:
    history = parser.add_argument_group("history storage (Conversations and Responses APIs)")
    history.add_argument(
        "--history-backend",
        choices=HISTORY_BACKENDS,
        default="sqlite",
        help="where conversations and stored responses live: sqlite (an embedded file; the default), memory "
        "(bounded, lost on restart), postgres (shared by a cluster), redis, none (APIs off) (default: %(default)s)",
    )
    history.add_argument(
        "--history-db-path",
        default="",
        metavar="FILE",
        help="sqlite: the database file (default: $SMG_HISTORY_DB_PATH, else ~/.local/share/smg/history.db)",
    )
    history.add_argument(
        "--history-memory-max-responses",
        type=int,
        default=10_000,
        help="memory: stored responses kept, the oldest go first (default: %(default)s)",
    )
    history.add_argument(
        "--history-memory-max-items",
        type=int,
        default=100_000,
        help="memory: conversation items kept; the least recently used conversations go first, whole (default: %(default)s)",
    )
    history.add_argument(
        "--history-memory-retention-secs",
        type=float,
        default=86_400.0,
        help="memory: a conversation is dropped this long after its last use, a response this long after it was "
        "stored; 0 keeps them until a bound drops them (default: %(default)s)",
    )
    history.add_argument(
        "--max-background-responses",
        type=int,
        default=1024,
        help="Responses API requests with background: true in flight at once; one more answers 429; 0 runs "
        "them in the foreground (default: %(default)s)",
    )
    history.add_argument(
        "--postgres-db-url",
        default=os.environ.get("POSTGRES_DB_URL"),
        metavar="URL",
        help="postgres: e.g. postgres://user:password@host:5432/db (default: $POSTGRES_DB_URL)",
    )
    history.add_argument("--postgres-pool-max", type=int, default=16, help="postgres: most connections (default: %(default)s)")
    history.add_argument(
        "--postgres-op-timeout-secs",
        type=float,
        default=5.0,
        help="postgres: bound on each storage call (pool wait, connect, statement); past it: 503 "
        "storage_unavailable (default: %(default)s)",
    )
    history.add_argument("--redis-url", default=os.environ.get("REDIS_URL"), metavar="URL", help="redis: (default: $REDIS_URL)")
    history.add_argument("--redis-pool-max", type=int, default=16, help="redis: most connections (default: %(default)s)")
    history.add_argument(
        "--redis-retention-days",
        type=int,
        default=30,
        help="redis: records expire this many days after their last write; -1 keeps them (default: %(default)s)",
    )
    history.add_argument(
        "--redis-op-timeout-secs",
        type=float,
        default=5.0,
        help="redis: bound on each storage call; past it: 503 storage_unavailable (default: %(default)s)",
    )


def add_sim_args(parser: argparse.ArgumentParser, prefix: str) -> None:
    group = parser.add_argument_group("simulated worker" + (f" (--{prefix}*)" if prefix else ""))
    for f in dataclasses.fields(SimConfig):
        flag = f"--{prefix}{f.name.replace('_', '-')}"
        default = f.default
        if isinstance(default, bool):
            group.add_argument(flag, dest=f"sim_{f.name}", action="store_true", help=SIM_HELP[f.name])
        else:
            group.add_argument(
                flag, dest=f"sim_{f.name}", type=type(default), default=default, help=f"{SIM_HELP[f.name]} (default: %(default)s)"
            )


def sim_config_from(args: argparse.Namespace) -> SimConfig:
    return SimConfig(**{f.name: getattr(args, f"sim_{f.name}") for f in dataclasses.fields(SimConfig)})


def gateway_config_from(args: argparse.Namespace) -> GatewayConfig:
    """Every gateway flag's dest is the name of its `GatewayConfig` field."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(GatewayConfig)}
    values["worker_urls"] = tuple(args.worker_urls)
    values["request_id_headers"] = tuple(args.request_id_headers)
    values["tenant_api_keys"] = tuple(args.tenant_api_keys)
    values["cors_allowed_origins"] = tuple(args.cors_allowed_origins)
    values["mesh_seeds"] = tuple(args.mesh_seeds)
    values["mesh_keys"] = tuple(args.mesh_keys) or tuple(
        k.strip() for k in os.environ.get("SMG_MESH_KEY", "").split(",") if k.strip()
    )  # from the environment, so a key need not sit in a command line or a compose file
    return GatewayConfig(**values)


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
        parser.add_argument("action", choices=["status"], help="status: members table and store digests")
        parser.add_argument("--url", default="http://127.0.0.1:30000", help="a gateway's URL (default: %(default)s)")
        parser.add_argument("--api-key", help="the gateway's --api-key, if it has one")
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
        return print_mesh_status(args.url, args.api_key)
    try:
        runner = _runner(command, args)
    except (ConfigError, ValueError) as exc:
        parser.error(str(exc))
    setup_logging(args.log_level, args.log_json)
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


def print_mesh_status(url: str, api_key: str | None) -> int:
    """`smg mesh status`: one line per member, then each store's size and digest."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(url.rstrip("/") + "/mesh/status", headers=headers, timeout=10)
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        print(f"smg: error: cannot read {url}/mesh/status: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        print(f"smg: error: {url}/mesh/status answered {response.status_code}: {message or response.text}", file=sys.stderr)
        return 1
    rows = [("NAME", "ADDRESS", "HTTP", "STATUS", "INCARNATION")]
    for node in body["nodes"]:
        name = node["name"] + (" *" if node["name"] == body["node_name"] else "")
        rows.append((name, node["address"], node.get("http_address") or "-", node["status"], str(node["incarnation"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(f"\n{body['node_count']} live of {len(body['nodes'])} known members (* = the node asked)")
    for store, info in sorted(body.get("stores", {}).items()):
        print(f"store {store}: {info['entries']} entries, digest {info['digest']}")
    if body.get("error"):
        print(f"mesh error: {body['error']}")
    return 0


def _checked(config: GatewayConfig) -> GatewayConfig:
    """Checks that need the machine (routes, files) and fail before anything starts."""
    if config.ha_mesh:
        advertise_host(config)
        config.mesh_key_list()
    return config


def _runner(command: str, args: argparse.Namespace) -> Any:
    if command == "launch":
        return partial(run_gateway, _checked(gateway_config_from(args)), handle_signals=True)
    sim = sim_config_from(args)
    if command == "serve":
        if args.sim_workers < 1:
            raise ConfigError("--sim-workers must be at least 1")
        config = _checked(gateway_config_from(args))
        if args.sim_port is not None and not 1 <= args.sim_port <= 65536 - args.sim_workers:
            raise ConfigError(f"--sim-port {args.sim_port} leaves no room for {args.sim_workers} workers")
        return partial(run_serve, config, sim, args.sim_workers, args.sim_host, args.sim_port)
    if args.count < 1:
        raise ConfigError("--count must be at least 1")
    if not 0 <= args.port <= 65536 - args.count:
        raise ConfigError(f"--port {args.port} leaves no room for {args.count} workers")
    run = run_supervised if args.supervised else run_fleet
    return partial(run, sim, args.host, args.port, args.count)
