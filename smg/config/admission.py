"""Who is let in and how much: API keys, admission, tenant limits, CORS, background responses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from smg.limits.tenants import TenantLimits
from smg.settings import ConfigError, header_names, non_negative, positive, setting
from smg.storage.settings import G_HISTORY

G_ADMISSION = "admission and auth"


def _limit_or_unlimited(flag: str, value: int) -> None:
    if value == 0 or value < -1:
        raise ConfigError(f"{flag} must be positive, or -1 for no limit")


def _tenant_keys(flag: str, entries: tuple[str, ...]) -> None:
    for entry in entries:
        tenant, sep, key = entry.partition(":")
        if not sep or not tenant or not key:
            raise ConfigError(f"{flag} must look like TENANT:KEY, got '{entry}'")


def _origins(flag: str, origins: tuple[str, ...]) -> None:
    for origin in origins:
        if origin != "*" and "://" not in origin:
            raise ConfigError(f"{flag}: '{origin}' is not an origin like https://example.com or '*'")


@dataclass(frozen=True)
class AdmissionSettings:
    GROUP: ClassVar[str] = G_ADMISSION

    max_concurrent_requests: int = setting(
        -1,
        "--max-concurrent-requests",
        check=_limit_or_unlimited,
        help="requests served at once; the permit is held until the response (stream included) ends; -1: no limit",
    )
    queue_size: int = setting(
        100,
        "--queue-size",
        check=non_negative(),
        help="requests that may wait for a permit; beyond: 429 admission_queue_full",
    )
    queue_timeout_secs: float = setting(
        60.0,
        "--queue-timeout-secs",
        check=positive,
        help="longest wait for a permit; then 503 admission_queue_timeout",
    )
    rate_limit_tokens_per_second: float = setting(
        0.0,
        "--rate-limit-tokens-per-second",
        check=non_negative(),
        help="admitted requests per second (a token bucket bursting to --max-concurrent-requests); 0: no rate limit",
    )
    tenant_api_keys: tuple[str, ...] = setting(
        (),
        "--tenant-api-key",
        metavar="TENANT:KEY",
        many="append",
        check=_tenant_keys,
        help="a data-plane key of one tenant (repeatable); tenant keys get 401 on control-plane routes",
    )
    cors_allowed_origins: tuple[str, ...] = setting(
        (),
        "--cors-allowed-origins",
        metavar="ORIGIN",
        check=_origins,
        help="origins browsers may call from, or '*'",
    )
    tenant_rate_limit_config: str | None = setting(
        None,
        "--tenant-rate-limit-config",
        metavar="FILE",
        help='per-tenant limits, JSON or YAML: {"default": {"requests_per_minute": N, "tokens_per_minute": M}, "tenants": {"NAME": {...}}}; cluster-wide with --ha-mesh',
    )
    max_background_responses: int = setting(
        1024,
        "--max-background-responses",
        check=non_negative("0 runs background requests in the foreground"),
        help="Responses API requests with background: true in flight at once; one more answers 429; 0 runs them in the foreground",
        group=G_HISTORY,
    )

    trust_tenant_header: bool = setting(
        False,
        "--trust-tenant-header",
        help="take the tenant from the header named by --tenant-header-name (set by a trusted proxy in front); "
        "stored responses and conversations are scoped to their tenant",
        differs="the header also applies to callers with the shared --api-key (the reference ignores it for them); "
        "a tenant key still wins",
    )
    tenant_header_name: str = setting(
        "x-smg-tenant-id",
        "--tenant-header-name",
        check=header_names,
        help="the tenant header read with --trust-tenant-header",
    )
    tenant_rate_limit_enabled: bool = setting(
        False,
        "--tenant-rate-limit-enabled",
        help="turn on per-tenant limits (needs --tenant-rate-limit-config)",
        differs="--tenant-rate-limit-config alone also turns them on",
    )

    # the `tenant_limits` section of --config (not a flag: the file's own form of the one above)
    file_tenant_limits: TenantLimits | None = field(default=None, repr=False)

    def tenant_limits(self) -> TenantLimits | None:
        if self.tenant_rate_limit_config is None:
            return self.file_tenant_limits
        try:
            return TenantLimits.load(self.tenant_rate_limit_config)
        except OSError as exc:
            raise ConfigError(
                f"--tenant-rate-limit-config: cannot read {self.tenant_rate_limit_config}: {exc.strerror}"
            ) from None
        except ValueError as exc:
            raise ConfigError(f"--tenant-rate-limit-config: {exc}") from None

    def tenant_keys(self) -> dict[str, str]:
        """API key -> tenant id."""
        return {key: tenant for tenant, _, key in (entry.partition(":") for entry in self.tenant_api_keys)}
