"""Workers: the start-up list, how they are reached, probed, broken out and retried."""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass
from typing import ClassVar

from smg.routing.policies import POLICIES
from smg.settings import ConfigError, at_least, existing_file, non_negative, positive, setting
from smg.upstream import UPSTREAM_CLIENTS
from smg.workers.breaker import BreakerConfig
from smg.workers.health import HealthConfig
from smg.workers.overload import OverloadLimits
from smg.workers.registry import normalize_url
from smg.workers.retry import RetryConfig

G_WORKERS = "workers and routing"
G_HEALTH = "worker health"
G_BREAKER = "circuit breaker"
G_RETRIES = "retries and timeouts"


def _path(flag: str, value: str) -> None:
    if not value.startswith("/"):
        raise ConfigError(f"{flag} must start with '/'")


def _aliases(flag: str, aliases: tuple[str, ...]) -> None:
    seen: set[str] = set()
    for entry in aliases:
        alias, sep, canonical = entry.partition("=")
        if not sep or not alias or not canonical or alias == canonical:
            raise ConfigError(f"{flag} must look like ALIAS=CANONICAL, got '{entry}'")
        if alias in seen:
            raise ConfigError(f"{flag}: '{alias}' is given twice")
        seen.add(alias)


@functools.cache
def alias_table(entries: tuple[str, ...]) -> dict[str, str]:
    """`--model-alias` entries (`ALIAS=CANONICAL`, checked when the flags were read) as a dict,
    built once per configuration rather than on every request."""
    return {alias: canonical for alias, _, canonical in (entry.partition("=") for entry in entries)}


@functools.cache
def fallback_table(entries: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """`--model-fallback` entries as MODEL -> its fallbacks, in order."""
    table = {}
    for entry in entries:
        model, _, chain = entry.partition("=")
        table[model] = tuple(name.strip() for name in chain.split(","))
    return table


def _fallbacks(flag: str, entries: tuple[str, ...]) -> None:
    seen: set[str] = set()
    for entry in entries:
        model, sep, chain = entry.partition("=")
        names = [name.strip() for name in chain.split(",")]
        if not sep or not model or not all(names):
            raise ConfigError(f"{flag} must look like MODEL=FALLBACK[,FALLBACK...], got '{entry}'")
        if model in names or len(set(names)) < len(names):
            raise ConfigError(f"{flag}: '{entry}' names a model twice (a model is not its own fallback)")
        if model in seen:
            raise ConfigError(f"{flag}: '{model}' is given twice (list all its fallbacks in one entry)")
        seen.add(model)


def _existing_files(flag: str, paths: tuple[str, ...]) -> None:
    for path in paths:
        existing_file(flag, path)


def _worker_urls(flag: str, urls: tuple[str, ...]) -> None:
    for url in urls:
        try:
            normalize_url(url)
        except ValueError as exc:
            raise ConfigError(f"{flag}: {exc}") from None


@dataclass(frozen=True)
class WorkerSettings:
    """Which workers, and how the data plane reaches them."""

    GROUP: ClassVar[str] = G_WORKERS

    worker_urls: tuple[str, ...] = setting(
        (),
        "--worker-urls",
        metavar="URL",
        many="*",
        check=_worker_urls,
        help="worker base URLs, e.g. http://127.0.0.1:8000",
    )
    policy: str = setting(
        "cache_aware",
        "--policy",
        choices=list(POLICIES),
        refused_choices={
            "passthrough": "the passthrough policy is not supported by smg; use round_robin, or consistent_hashing "
            "with the X-SMG-Routing-Key header to pin requests"
        },
        help="load-balancing policy",
        differs="adds bucket (the reference has it for prefill only); passthrough is refused",
    )
    model_alias: tuple[str, ...] = setting(
        (),
        "--model-alias",
        metavar="ALIAS=CANONICAL",
        many="append",
        check=_aliases,
        help="accept another client-facing name for a served model (repeatable; case-sensitive); the worker "
        "gets the canonical name, and answers carry it",
        differs="/v1/models lists the aliases too",
    )
    model_fallback: tuple[str, ...] = setting(
        (),
        "--model-fallback",
        metavar="MODEL=FALLBACK[,FALLBACK...]",
        many="append",
        check=_fallbacks,
        help="when no worker of MODEL can answer (none available, every breaker open, overloaded, or its attempts "
        "failed: 429, 5xx, unreachable), try these models' pools in order (repeatable); a fallback's own fallbacks are "
        "not followed, and none starts once a stream has begun. The answer names the step (x-smg-fallback-step, "
        "x-smg-fallback-model)",
    )
    upstream_pool_idle_timeout_secs: float = setting(
        3.0,
        "--upstream-pool-idle-timeout-secs",
        check=non_negative("0 keeps idle connections forever"),
        help="close a pooled connection to a worker idle this long; keep it below the workers' keep-alive "
        "timeout (vLLM and SGLang: 5); 0 keeps them",
    )
    client_cert_path: str | None = setting(
        None,
        "--client-cert-path",
        metavar="PEM",
        check=existing_file,
        help="the client certificate presented to https:// workers (mutual TLS), with --client-key-path",
    )
    client_key_path: str | None = setting(
        None,
        "--client-key-path",
        metavar="PEM",
        check=existing_file,
        help="the private key of --client-cert-path (PEM, unencrypted)",
    )
    ca_cert_paths: tuple[str, ...] = setting(
        (),
        "--ca-cert-paths",
        metavar="PEM",
        many="*",
        check=_existing_files,
        help="CA certificates that https:// workers' certificates may chain to, besides the system's",
    )
    backend: str = setting(
        "sglang",
        "--backend",
        choices=("sglang", "vllm", "openai", "anthropic"),
        refused_choices={
            "tokenspeed": "TokenSpeed's ZMQ protocol is not supported by smg; use its HTTP server as a worker",
        },
        help="the workers' engine: sglang or vllm over HTTP (the engine of each HTTP worker is also read from its "
        "/v1/models); openai or anthropic: --worker-urls are hosted providers (OpenAI, xAI or any OpenAI-compatible "
        "API; anthropic: Anthropic's Messages API, OpenAI-shaped requests translated), each speaking its known host's "
        "API (api.anthropic.com: Anthropic's) or else the backend's, its key read from OPENAI_API_KEY, "
        "ANTHROPIC_API_KEY or XAI_API_KEY by host, its health judged by its answers",
    )
    connect_timeout_secs: float = setting(
        10.0,
        "--connect-timeout-secs",
        check=positive,
        help="limit for opening a connection to a worker; then 502",
    )
    enable_igw: bool = setting(
        False,
        "--enable-igw",
        help="multi-model mode: start with no workers and serve whatever models workers added through /workers offer",
    )
    worker_startup_timeout_secs: float = setting(
        1800.0,
        "--worker-startup-timeout-secs",
        check=positive,
        help="how long a new worker may take to pass its first health check",
    )
    worker_startup_delay: float = setting(
        0.0,
        "--worker-startup-delay",
        check=non_negative(),
        help="seconds to wait before the first start-up probe of a new worker",
    )
    worker_startup_check_interval: float = setting(
        1.0,
        "--worker-startup-check-interval",
        check=positive,
        help="longest pause between start-up probes, in seconds",
    )
    upstream_client: str = setting(
        "pool",
        "--upstream-client",
        choices=UPSTREAM_CLIENTS,
        help="HTTP client of the data plane: smg's lean keep-alive pool, or httpx",
    )
    upstream_max_idle_per_worker: int = setting(
        256,
        "--upstream-max-idle-per-worker",
        check=non_negative(),
        help="idle keep-alive connections kept per worker",
    )

    def worker_tls(self) -> ssl.SSLContext | None:
        """The TLS context for https:// workers (data plane, health checks, control fan-out), or None for
        the system defaults. Built from --ca-cert-paths (added to the system CAs, as the reference adds
        them to its client's roots) and the --client-cert-path/--client-key-path pair."""
        if not self.ca_cert_paths and not self.client_cert_path:
            return None
        context = ssl.create_default_context()
        for path in self.ca_cert_paths:
            try:
                context.load_verify_locations(cafile=path)
            except (ssl.SSLError, ValueError) as exc:
                raise ConfigError(f"--ca-cert-paths: {path} holds no PEM certificate ({exc})") from None
        if self.client_cert_path and self.client_key_path:
            try:
                context.load_cert_chain(self.client_cert_path, self.client_key_path)
            except (ssl.SSLError, ValueError) as exc:
                raise ConfigError(
                    f"--client-cert-path: {self.client_cert_path} and --client-key-path {self.client_key_path} "
                    f"are not a PEM certificate and its unencrypted key ({exc})"
                ) from None
        return context


@dataclass(frozen=True)
class HealthSettings:
    """How workers are probed, and when a worker leaves or rejoins the routable set."""

    GROUP: ClassVar[str] = G_HEALTH

    health_check_interval_secs: float = setting(
        10.0,
        "--health-check-interval-secs",
        check=positive,
        help="seconds between health probes of each worker (default: the reference: 60)",
    )
    health_check_timeout_secs: float = setting(
        5.0, "--health-check-timeout-secs", check=positive, help="limit of one health probe"
    )
    health_check_endpoint: str = setting("/health", "--health-check-endpoint", check=_path, help="path probed on each worker")
    health_success_threshold: int = setting(
        2, "--health-success-threshold", help="consecutive successes that make a worker ready"
    )
    health_failure_threshold: int = setting(3, "--health-failure-threshold", help="consecutive failures that take a worker out")
    health_failed_threshold: int = setting(
        30, "--health-failed-threshold", help="consecutive failures after which a worker is 'failed'"
    )
    disable_health_check: bool = setting(
        False, "--disable-health-check", help="no periodic probes: a worker is ready once discovered"
    )
    remove_unhealthy_workers: bool | None = setting(
        None,
        "--remove-unhealthy-workers",
        "--worker-auto-recovery",
        negations=("--no-remove-unhealthy-workers", "--no-worker-auto-recovery"),
        help="remove workers that reach 'failed'; the --no- forms keep probing them (the default is on with "
        "Kubernetes discovery, which adds a worker back when its pod is ready again, and off otherwise)",
    )

    def health_config(self) -> HealthConfig:
        return HealthConfig(
            success_threshold=self.health_success_threshold,
            failure_threshold=self.health_failure_threshold,
            failed_threshold=max(self.health_failed_threshold, self.health_failure_threshold),
        )


@dataclass(frozen=True)
class BreakerSettings:
    """When failed attempts take a worker out for a while."""

    GROUP: ClassVar[str] = G_BREAKER

    cb_failure_threshold: int = setting(
        10, "--cb-failure-threshold", help="consecutive failed attempts that open a worker's breaker"
    )
    cb_success_threshold: int = setting(3, "--cb-success-threshold", help="successful half-open probes that close it")
    cb_timeout_duration_secs: float = setting(
        60.0, "--cb-timeout-duration-secs", help="how long an open breaker hides the worker"
    )
    cb_window_duration_secs: float = setting(
        120.0, "--cb-window-duration-secs", help="failures further apart than this do not add up"
    )
    disable_circuit_breaker: bool = setting(
        False,
        "--disable-circuit-breaker",
        help="never take a worker out for failed attempts (health checks still do)",
    )

    def breaker_config(self) -> BreakerConfig:
        return BreakerConfig(
            failure_threshold=self.cb_failure_threshold,
            success_threshold=self.cb_success_threshold,
            timeout=self.cb_timeout_duration_secs,
            window=self.cb_window_duration_secs,
            enabled=not self.disable_circuit_breaker,
        )


@dataclass(frozen=True)
class RetrySettings:
    """How often a request is tried again, and how long each step may take."""

    GROUP: ClassVar[str] = G_RETRIES

    retry_max_retries: int = setting(
        5, "--retry-max-retries", help="attempts in total, the first included; each picks a worker again"
    )
    retry_initial_backoff_ms: float = setting(50.0, "--retry-initial-backoff-ms", help="pause before the second attempt, in ms")
    retry_max_backoff_ms: float = setting(30000.0, "--retry-max-backoff-ms", help="longest pause between attempts, in ms")
    retry_backoff_multiplier: float = setting(1.5, "--retry-backoff-multiplier", help="each pause is the previous one times this")
    retry_jitter_factor: float = setting(0.2, "--retry-jitter-factor", help="backoff varies by +/- this fraction")
    disable_retries: bool = setting(False, "--disable-retries", help="one attempt only")
    worker_first_byte_timeout_secs: float = setting(
        120.0,
        "--worker-first-byte-timeout-secs",
        check=positive,
        help="a worker sending no response headers within this fails the attempt",
    )
    stream_stall_timeout_secs: float = setting(
        300.0,
        "--stream-stall-timeout-secs",
        check=positive,
        help="a stream silent this long is ended with an error event",
    )
    max_upstream_response_size: int = setting(
        256 * 1024 * 1024,
        "--max-upstream-response-size",
        metavar="BYTES",
        check=at_least(1),
        help="largest non-streamed answer read from a worker; larger is 502 upstream_protocol_error",
    )
    max_sse_event_size: int = setting(
        16 * 1024 * 1024,
        "--max-sse-event-size",
        metavar="BYTES",
        check=at_least(1),
        help="largest single server-sent event relayed from a worker; larger ends the stream with an error event",
    )

    def retry_config(self) -> RetryConfig:
        return RetryConfig(
            max_attempts=1 if self.disable_retries else self.retry_max_retries,
            initial_backoff=self.retry_initial_backoff_ms / 1000.0,
            max_backoff=self.retry_max_backoff_ms / 1000.0,
            multiplier=self.retry_backoff_multiplier,
            jitter=self.retry_jitter_factor,
        )


G_OVERLOAD = "worker overload protection"


def _fraction(flag: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"{flag} must be in (0, 1], got {value}")


@dataclass(frozen=True)
class OverloadSettings:
    """When a worker's own load report takes it out of routing (on by default, as the reference)."""

    GROUP: ClassVar[str] = G_OVERLOAD

    worker_overload_waiting_requests: int = setting(
        8,
        "--worker-overload-waiting-requests",
        check=at_least(1),
        help="a worker reporting at least this many waiting requests (over its DP ranks) leaves routing while "
        "another worker is under the thresholds",
    )
    worker_overload_token_usage: float = setting(
        0.8,
        "--worker-overload-token-usage",
        check=_fraction,
        help="likewise for its mean KV-cache token usage, from 0 (excluded) to 1",
    )
    worker_overload_protection: bool = setting(
        False,
        "--worker-overload-protection",
        help="protection is on by default; this flag keeps it on (accepted so older command lines parse)",
    )
    disable_worker_overload_protection: bool = setting(
        False,
        "--disable-worker-overload-protection",
        help="switch overload protection off: no worker leaves routing for its queue or KV usage",
    )
    worker_overload_shed: bool = setting(
        False,
        "--worker-overload-shed",
        help="when every worker a request could use is overloaded, refuse it with 503 "
        "worker_overload_protection_shed (Retry-After: the load poll interval) instead of sending it to the "
        "least-loaded one",
    )

    def overload_limits(self) -> OverloadLimits | None:
        if self.disable_worker_overload_protection:
            return None
        return OverloadLimits(self.worker_overload_waiting_requests, self.worker_overload_token_usage, self.worker_overload_shed)
