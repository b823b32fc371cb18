"""Who may call the control plane: the check `smg.app` makes on `/workers`, `/mesh/*`, ...

It is on when `--control-plane-api-keys` or `--jwt-issuer` is given. A caller
sends `Authorization: Bearer <credential>` (`x-api-key: <key>` also works for
keys, as on the data plane). The credential is looked up among the keys first
(a control-plane key, or the shared `--api-key`, an admin); a credential shaped
like a JWT is then verified against the issuer's keys. Missing or invalid
credentials: 401 with `WWW-Authenticate: Bearer`; a known caller whose role does
not allow the method (`user` changing something, a token with no mapped role):
403; a token whose key cannot be fetched because the issuer is unreachable: 503.
Every answer is counted by result (`on_result`), and no message, metric or log
line carries a credential.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from smg.auth import jwt as tokens
from smg.auth.jwks import JwksCache
from smg.auth.keys import ANONYMOUS, VIA_JWT, ApiKey, KeyRing, Principal, permits
from smg.http.asgi import Scope, header
from smg.http.errors import GatewayError

log = logging.getLogger("smg.auth")

REALM = b'Bearer realm="smg-control-plane"'
# codes in the control plane's style (`WORKER_NOT_FOUND`, `BAD_REQUEST`)
UNAUTHORIZED, FORBIDDEN, UNAVAILABLE = "UNAUTHORIZED", "FORBIDDEN", "AUTH_UNAVAILABLE"
# the `result` label of smg_http_control_plane_auth_total
ALLOWED, MISSING, INVALID, DENIED, NOT_VERIFIABLE = "allowed", "missing", "invalid", "forbidden", "unavailable"


class ControlAuthError(GatewayError):
    """A refused control-plane call; `caller` is who it was, when that is known (a 403), for the audit log."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        caller: Principal = ANONYMOUS,
        challenge: bytes | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        extra = [(b"www-authenticate", challenge)] if challenge else []
        super().__init__(status, code, message, headers=extra + (headers or []))
        self.caller = caller


@dataclass(frozen=True, slots=True)
class JwtSettings:
    """`--jwt-*` as plain values (smg.auth sits below the config package)."""

    issuer: str
    audience: str | None = None
    jwks_uri: str | None = None
    role_mapping: Mapping[str, str] | None = None


class ControlPlaneGuard:
    def __init__(
        self,
        keys: Iterable[ApiKey],
        *,
        shared_key: str | None = None,
        tenant_keys: Iterable[str] = (),
        jwt: JwtSettings | None = None,
        jwks: JwksCache | None = None,
        on_result: Callable[[str], None] = lambda result: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`jwks`: the cache to use (tests); by default one is made for `jwt` and must be run
        (`jwks.run`) in the node's nursery."""
        self.ring = KeyRing(keys, shared=shared_key, refused=tenant_keys)
        self.policy: tokens.JwtPolicy | None = None
        self.jwks: JwksCache | None = None
        if jwt is not None:
            self.policy = tokens.JwtPolicy(jwt.issuer, jwt.audience, dict(jwt.role_mapping or {}))
            self.jwks = jwks or JwksCache(jwt.issuer, jwt.jwks_uri)
            _warn_about(jwt)
        self._count = on_result
        self._clock = clock

    async def check(self, scope: Scope, method: str) -> Principal:
        """The caller, allowed to call `method` on a control-plane route; raises `ControlAuthError`."""
        caller = await self._authenticate(scope)
        if not permits(caller.role, method):
            self._count(DENIED)
            raise ControlAuthError(
                403,
                FORBIDDEN,
                f"{_described(caller)} has the role '{caller.role}', which may only read the control plane "
                f"(GET, HEAD); {method} needs the admin role",
                caller=caller,
                challenge=REALM + b', error="insufficient_scope"',
            )
        self._count(ALLOWED)
        return caller

    async def _authenticate(self, scope: Scope) -> Principal:
        credential = _credential(scope)
        if credential is None:
            self._count(MISSING)
            raise ControlAuthError(
                401,
                UNAUTHORIZED,
                "the control plane needs credentials: send 'Authorization: Bearer <key or token>'",
                challenge=REALM,
            )
        if not credential:
            raise self._invalid("the Authorization header is not 'Bearer <key or token>'")
        known, caller = self.ring.match(credential)
        if known:
            if caller is None:
                raise self._invalid("tenant keys (--tenant-api-key) cannot use control-plane routes")
            return caller
        if self.policy is not None and credential.count(b".") == 2:
            return await self._verify_token(credential, self.policy)
        raise self._invalid("invalid API key or token")

    async def _verify_token(self, token: bytes, policy: tokens.JwtPolicy) -> Principal:
        assert self.jwks is not None
        try:
            try:
                verified = tokens.verify(token, self.jwks.keys or tokens.KeySet(), self._clock(), policy)
            except tokens.UnknownKey:
                await self.jwks.refetch()  # the issuer may have rotated its keys (rate-limited)
                verified = tokens.verify(token, self.jwks.keys or tokens.KeySet(), self._clock(), policy)
        except tokens.NoRole as exc:
            self._count(DENIED)
            caller = Principal(exc.identity, None, VIA_JWT, subject=exc.subject)
            raise ControlAuthError(403, FORBIDDEN, exc.message, caller=caller, challenge=REALM) from None
        except tokens.UnknownKey as exc:
            jwks = self.jwks
            if jwks.keys is None or jwks.last_error is not None:  # cannot tell: the issuer's keys are not at hand
                self._count(NOT_VERIFIABLE)
                if jwks.keys is None:
                    why = jwks.last_error or f"the first fetch from {jwks.describe()} has not completed"
                    message = f"cannot verify the token yet: the issuer's keys are not loaded ({why})"
                else:
                    message = f"cannot verify the token: {exc.message} (as last fetched), and {jwks.last_error}"
                raise ControlAuthError(503, UNAVAILABLE, message, headers=[(b"retry-after", b"5")]) from None
            raise self._invalid(f"invalid token: {exc.message} (as fetched from {jwks.describe()})") from None
        except tokens.TokenError as exc:
            raise self._invalid(f"invalid token: {exc.message}") from None
        return Principal(verified.identity, verified.role, VIA_JWT, subject=verified.subject)

    def _invalid(self, message: str) -> ControlAuthError:
        """A 401 for credentials that open nothing here (counted; logged at debug, never the credential)."""
        self._count(INVALID)
        log.debug("control-plane credentials refused: %s", message)
        return ControlAuthError(401, UNAUTHORIZED, message, challenge=REALM + b', error="invalid_token"')


def _warn_about(jwt: JwtSettings) -> None:
    """Settings that work but leave a door open: said once, at start."""
    if jwt.audience is None:
        log.warning(
            "--jwt-issuer without --jwt-audience: every token %s issues, for any of its clients, is accepted on "
            "the control plane when its roles map; set --jwt-audience",
            jwt.issuer,
        )
    for flag, url in (("--jwt-issuer", jwt.issuer), ("--jwt-jwks-uri", jwt.jwks_uri)):
        if url and url.startswith("http://") and not _loopback(urlsplit(url).hostname or ""):
            log.warning("%s %s is plain HTTP: whoever can alter that traffic can substitute the signing keys", flag, url)


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _credential(scope: Scope) -> bytes | None:
    """The presented key or token; None when none was sent, b"" for an Authorization header
    that is not `Bearer <credential>`."""
    authorization = header(scope, b"authorization")
    if authorization is None:
        return header(scope, b"x-api-key") or None
    scheme, _, credential = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return b""
    return credential.strip()


def _described(caller: Principal) -> str:
    if caller.name is not None:
        return f"key '{caller.who}' ({caller.name})"
    return f"'{caller.who}'"
