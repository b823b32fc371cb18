"""The gateway's ASGI app: route table, auth, and per-request bookkeeping.

Whom a data-plane request acts for (its tenant: tenant rate limits, history scoping):

- a `--tenant-api-key` key: that key's tenant, whatever headers say (a tenant's key cannot act
  for another tenant, as with the reference gateway, where an authenticated key always wins);
- with `--trust-tenant-header`, a caller without a tenant key (the `--api-key` key, or anyone
  when the gateway checks no key): the tenant named by `--tenant-header-name`, set by a trusted
  proxy in front. (The reference lets the shared `--api-key` win over the header too, which
  leaves the flag nothing to do behind a proxy holding that key; here the key holder, who can
  already change every worker, may say for whom it calls.) Without the header, or with it empty:
- the `--api-key` key: the `admin` tenant; no key checked at all: no tenant (records stored
  without a tenant identity, readable by every caller; the `default` tenant's limits).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from smg import control
from smg.apis.anthropic import messages
from smg.apis.anthropic.messages_format import error_body as anthropic_error
from smg.apis.openai import conversations, responses
from smg.auth.audit import AuditLog
from smg.auth.guard import ControlAuthError, ControlPlaneGuard, JwtSettings
from smg.auth.keys import ANONYMOUS, SHARED_KEY, Principal, parse_api_keys, parse_role_mapping
from smg.cluster import routes as mesh
from smg.context import GatewayContext
from smg.dataplane.dispatch import handle_inference, handle_models
from smg.dataplane.routes import ROUTES
from smg.http.asgi import (
    TEXT_CONTENT,
    BodyTooLarge,
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    header,
    send_bytes,
    send_json,
    send_text,
    serve_lifespan,
)
from smg.http.errors import GatewayError
from smg.http.exchange import Exchange
from smg.limits.tenants import DEFAULT_TENANT
from smg.observability import tracing
from smg.observability.request_id import request_id_for
from smg.ui import routes as ui
from smg.workers.providers import PROVIDERS

log = logging.getLogger("smg.router")

OPEN, DATA, CONTROL = "open", "data", "control"
ADMIN_TENANT = "admin"  # the tenant of the shared --api-key
# Names a tenant header may not claim: the tenant of callers with no identity (whose records
# every caller reads) and the `--api-key` key's own.
RESERVED_TENANTS = frozenset({DEFAULT_TENANT, ADMIN_TENANT})
MAX_TENANT_CHARS = 256  # the history stores' tenant column
Handler = Callable[[GatewayContext, Exchange], Awaitable[None]]
ErrorShape = Callable[[GatewayError], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Route:
    handler: Handler
    template: str  # the `path` label: never a raw path with ids in it
    auth: str
    error_shape: ErrorShape | None = None  # another API's error body, from the first check on


async def health(ctx: GatewayContext, ex: Exchange) -> None:
    await send_text(ex.send, 200, "OK")


async def readiness(ctx: GatewayContext, ex: Exchange) -> None:
    status, body = ctx.readiness()
    await send_json(ex.send, status, body)


def _static_routes() -> dict[tuple[str, str], Route]:
    routes = {
        ("GET", "/health"): Route(health, "/health", OPEN),
        ("GET", "/liveness"): Route(health, "/liveness", OPEN),
        ("GET", "/readiness"): Route(readiness, "/readiness", OPEN),
        ("GET", "/v1/models"): Route(handle_models, "/v1/models", OPEN),
        ("GET", "/workers"): Route(control.list_workers, "/workers", CONTROL),
        ("POST", "/workers"): Route(control.add_worker, "/workers", CONTROL),
        ("GET", "/get_loads"): Route(control.get_loads, "/get_loads", CONTROL),
        ("GET", "/v1/loads"): Route(control.get_loads, "/v1/loads", CONTROL),
        ("POST", "/flush_cache"): Route(control.flush_cache, "/flush_cache", CONTROL),
        ("POST", "/start_profile"): Route(control.start_profile, "/start_profile", CONTROL),
        ("POST", "/stop_profile"): Route(control.stop_profile, "/stop_profile", CONTROL),
        ("GET", "/mesh/status"): Route(mesh.mesh_status, "/mesh/status", CONTROL),
        ("GET", "/mesh/health"): Route(mesh.mesh_health, "/mesh/health", CONTROL),
        ("GET", "/mesh/workers"): Route(mesh.mesh_workers, "/mesh/workers", CONTROL),
        ("GET", "/mesh/rate-limits"): Route(mesh.mesh_rate_limits, "/mesh/rate-limits", CONTROL),
        ("POST", "/mesh/keys"): Route(mesh.mesh_keys, "/mesh/keys", CONTROL),
        ("POST", "/mesh/faults"): Route(mesh.mesh_faults, "/mesh/faults", CONTROL),
        ("POST", "/v1/messages"): Route(messages.create_message, "/v1/messages", DATA, anthropic_error),
        ("GET", "/ui/api/cluster"): Route(ui.api_cluster, "/ui/api/cluster", CONTROL),
        ("GET", "/ui/api/node"): Route(ui.api_node, "/ui/api/node", CONTROL),
    }
    for path in ui.ASSETS:  # the page's static shell: no data, no credentials needed (smg.ui.routes)
        routes[("GET", path)] = Route(ui.asset, path, OPEN)
    for path, inference in ROUTES.items():
        routes[("POST", path)] = Route(partial(handle_inference, route=inference), path, DATA)
    return routes


_WORKER_ITEM = {
    "GET": control.get_worker,
    "PATCH": control.patch_worker,
    "PUT": control.put_worker,
    "DELETE": control.delete_worker,
}


def control_plane_guard(ctx: GatewayContext) -> ControlPlaneGuard | None:
    """The control plane's own credential check when `--control-plane-api-keys` or `--jwt-issuer`
    is given (with `--jwt-issuer`, its JWKS cache must run in the node's nursery)."""
    config = ctx.config
    if not config.control_plane_api_keys and config.jwt_issuer is None:
        return None
    jwt = None
    if config.jwt_issuer is not None:
        mapping = parse_role_mapping(config.jwt_role_mapping)
        jwt = JwtSettings(config.jwt_issuer, config.jwt_audience, config.jwt_jwks_uri, mapping)
    return ControlPlaneGuard(
        parse_api_keys(config.control_plane_api_keys),
        shared_key=config.api_key,
        tenant_keys=ctx.tenant_keys,
        jwt=jwt,
        on_result=lambda result: ctx.metrics.control_plane_auth(result).inc(),
    )


def is_loopback(host: str) -> bool:
    """Only this machine can connect: `localhost` or a loopback address (a name that resolves elsewhere is not)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class GatewayApp:
    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.routes = _static_routes()
        self._paths = {path for _, path in self.routes}
        config = ctx.config
        self._api_key = f"Bearer {config.api_key}".encode() if config.api_key else None
        self._tenant_keys = {f"Bearer {key}".encode(): tenant for key, tenant in ctx.tenant_keys.items()}
        self._tenant_header = config.tenant_header_name.strip().lower().encode() if config.trust_tenant_header else None
        self._cors_any = "*" in config.cors_allowed_origins
        self._cors_origins = {origin.encode() for origin in config.cors_allowed_origins}
        self.guard = control_plane_guard(ctx)  # None: the control plane takes --api-key, as the data plane
        self._audit = AuditLog(config.log_json) if config.control_plane_audit_enabled else None
        if self._api_key is None and not self._tenant_keys and self.guard is None and not is_loopback(config.host):
            # tenant keys alone close the control plane to everyone; no key at all opens it to the network
            log.warning(
                "the control plane (/workers, /flush_cache, /mesh/*) is unauthenticated on %s: anyone who reaches "
                "it can add, change or remove workers; set --api-key or --control-plane-api-keys",
                config.host,
            )
        if config.backend in PROVIDERS and self._api_key is None and not self._tenant_keys and not is_loopback(config.host):
            log.warning(
                "--backend %s without --api-key or --tenant-api-key on %s: anyone who reaches the gateway spends "
                "the provider key it was started with",
                config.backend,
                config.host,
            )
        if self._tenant_header is not None and self._api_key is None and not is_loopback(config.host):
            log.warning(
                "--trust-tenant-header without --api-key on %s: any client that reaches the gateway chooses its "
                "tenant with the %s header; let only a proxy that sets (or strips) it reach the gateway",
                config.host,
                config.tenant_header_name,
            )

    def _route(self, method: str, path: str) -> Route:
        route = self.routes.get((method, path))
        if route is not None:
            return route
        if path.startswith("/workers/") and path.count("/") == 2:
            handler = _WORKER_ITEM.get(method)
            if handler is not None:
                worker_id = path[len("/workers/") :]
                return Route(partial(handler, worker_id=worker_id), "/workers/{id}", CONTROL)
            raise GatewayError(405, "method_not_allowed", f"{method} is not allowed on /workers/{{id}}")
        found = conversations.route(method, path) or responses.route(method, path)
        if found is not None:
            handler, template, params = found
            if handler is None:
                raise GatewayError(405, "method_not_allowed", f"{method} is not allowed on {template}")
            return Route(partial(handler, **params), template, DATA)
        if path in self._paths:
            raise GatewayError(405, "method_not_allowed", f"{method} is not allowed on {path}")
        raise GatewayError(404, "not_found", f"no route for {method} {path}")

    def _authenticate(self, scope: Scope, auth: str) -> str | None:
        """The tenant a request acts for (the rules are in the module's docstring); raises 401
        when its key does not open `auth` routes."""
        if self._api_key is None and not self._tenant_keys:
            return self._header_tenant(scope, auth)
        presented = header(scope, b"authorization")
        if presented is None:  # Anthropic's clients send `x-api-key: KEY`
            api_key = header(scope, b"x-api-key")
            presented = b"Bearer " + api_key if api_key else b""
        if self._api_key is not None and hmac.compare_digest(presented, self._api_key):
            return self._header_tenant(scope, auth) or ADMIN_TENANT
        tenant = self._tenant_keys.get(presented)
        if tenant is not None:
            if auth == DATA:
                return tenant
            raise GatewayError(401, "invalid_api_key", "tenant keys cannot use control-plane routes; use the --api-key key")
        raise GatewayError(401, "invalid_api_key", "missing or invalid API key (send 'Authorization: Bearer <key>')")

    def _header_tenant(self, scope: Scope, auth: str) -> str | None:
        """The tenant the trusted header names on a data-plane route (None: not trusted, not
        sent, or blank). A value that could not be a tenant id is refused rather than mapped
        to another tenant: 400, naming the header."""
        if self._tenant_header is None or auth != DATA:
            return None
        values: list[bytes] = [value for key, value in scope["headers"] if key == self._tenant_header]
        if len(values) > 1:  # a proxy that appends its header must not let the client's own copy win
            raise GatewayError(
                400,
                "invalid_tenant_header",
                f"the {self._tenant_header.decode()} header appears {len(values)} times; send it once",
                param=self._tenant_header.decode(),
            )
        raw = values[0] if values else None
        if raw is None:
            return None
        tenant = raw.strip()
        if not tenant:
            return None
        name = self._tenant_header.decode()
        if len(tenant) > MAX_TENANT_CHARS or not all(0x21 <= byte <= 0x7E for byte in tenant):
            raise GatewayError(
                400,
                "invalid_tenant_header",
                f"the {name} header must be a tenant id of 1 to {MAX_TENANT_CHARS} printable ASCII characters without spaces",
                param=name,
            )
        text = tenant.decode("ascii")
        if text in RESERVED_TENANTS:
            raise GatewayError(
                400,
                "invalid_tenant_header",
                f"the {name} header cannot name the tenant '{text}': it is reserved "
                f"({DEFAULT_TENANT!r} for requests without a tenant, {ADMIN_TENANT!r} for the --api-key key)",
                param=name,
            )
        return text

    def _cors(self, scope: Scope, ex: Exchange) -> bool:
        """Add CORS headers for an allowed origin; True when this was a preflight, answered here."""
        origin = header(scope, b"origin")
        if origin is None or not (self._cors_any or origin in self._cors_origins):
            return False
        ex.extra_headers += [(b"access-control-allow-origin", origin), (b"vary", b"origin")]
        if scope["method"] == "OPTIONS" and header(scope, b"access-control-request-method") is not None:
            ex.extra_headers += [
                (b"access-control-allow-methods", b"GET, POST, PUT, PATCH, DELETE, OPTIONS"),
                (
                    b"access-control-allow-headers",
                    header(scope, b"access-control-request-headers") or b"authorization, content-type",
                ),
                (b"access-control-max-age", b"600"),
            ]
            return True
        ex.extra_headers.append((b"access-control-expose-headers", b"x-request-id, x-smg-routed-worker-id, x-smg-error-code"))
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await serve_lifespan(receive, send)
            return
        ctx = self.ctx
        method = scope["method"]
        # the metrics label stays "unmatched" for unknown paths: raw paths would grow without bound
        ex = Exchange(scope, receive, send, request_id_for(scope, ctx.request_id_headers), "unmatched")
        is_data = False
        traced: tracing.RequestSpan | None = None  # --enable-trace: the request's server span
        auth = OPEN
        caller: Principal | None = None  # who called a control-plane route, for the audit log
        denied = False
        try:
            if self._cors_origins and self._cors(scope, ex):
                await send_bytes(ex.send, 204, b"", content_type=TEXT_CONTENT)
                return
            route = self._route(method, scope["path"])
            ex.route = route.template
            ex.error_shape = route.error_shape
            auth = route.auth
            if auth == CONTROL and self.guard is not None:
                try:
                    caller = await self.guard.check(scope, method)
                except ControlAuthError as error:
                    caller, denied, ex.error_shape = error.caller, True, control.control_error_body
                    raise
            elif auth != OPEN:
                ex.tenant = self._authenticate(scope, auth)
                if auth == CONTROL:
                    caller = SHARED_KEY if self._api_key is not None else ANONYMOUS
            is_data = route.auth == DATA
            if is_data:
                ctx.in_flight += 1
                if tracing.ENABLED:
                    traced = tracing.request_started(ex)
            await route.handler(ctx, ex)
        except GatewayError as error:
            await ex.fail(error)
        except BodyTooLarge as exc:
            await ex.fail(GatewayError(413, "request_body_too_large", str(exc)))
        except ClientDisconnected:
            ex.status = 499
        except Exception:
            log.exception("request %s %s %s failed", ex.request_id, method, scope["path"])
            await ex.fail(GatewayError(500, "internal_error", "internal gateway error; see the gateway log"))
        finally:
            if is_data:
                ctx.in_flight -= 1
                ctx.answered += 1
                if ex.status >= 400 and ex.status != 499:
                    ctx.failed += 1
            if traced is not None:
                tracing.request_ended(traced, ex)
            self._record(ex, method)
            if auth == CONTROL and self._audit is not None:
                denied = denied or caller is None
                self._audit.record(
                    caller, method, scope["path"], ex.status, ex.request_id, denied=denied, detail=ex.error_message
                )

    def _record(self, ex: Exchange, method: str) -> None:
        elapsed = time.perf_counter() - ex.started_at
        metrics = self.ctx.metrics
        path = ex.route
        status = str(ex.status)
        metrics.http_requests(method, path).inc()
        metrics.http_duration(method, path).observe(elapsed)
        metrics.http_responses(path, status).inc()
        if ex.error_code is not None:
            metrics.router_errors(path, ex.error_code).inc()
        if ex.status >= 500:
            level = logging.WARNING
        elif path in ("/health", "/liveness", "/readiness"):
            level = logging.DEBUG
        else:
            level = logging.INFO
        access_log = self.ctx.access_log
        if access_log.enabled_for(level):
            fields = {"request_id": ex.request_id, "status": ex.status, "duration_ms": round(elapsed * 1000, 2)}
            if ex.model:
                fields["model"] = ex.model
            if ex.tenant:
                fields["tenant"] = ex.tenant
            if ex.worker is not None:
                fields["worker"] = ex.worker.url
            if ex.error_code:
                fields["error"] = ex.error_code
                fields["detail"] = ex.error_message
            access_log.write(level, f"{method} {ex.scope['path']}", fields)
