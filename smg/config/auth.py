"""Control-plane authentication: role-bearing API keys, OIDC bearer tokens (JWT), the audit log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from smg.auth.keys import digest, parse_api_keys, parse_role_mapping
from smg.settings import ConfigError, setting

G_AUTH = "control-plane auth"


def _api_keys(flag: str, entries: tuple[str, ...]) -> None:
    try:
        parse_api_keys(entries)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def _role_mapping(flag: str, entries: tuple[str, ...]) -> None:
    try:
        parse_role_mapping(entries)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def _https_url(flag: str, value: str | None) -> None:
    if value is not None and not value.startswith(("https://", "http://")):
        raise ConfigError(f"{flag} must be an http(s) URL, got '{value}'")


@dataclass(frozen=True)
class AuthSettings:
    GROUP: ClassVar[str] = G_AUTH

    control_plane_api_keys: tuple[str, ...] = setting(
        (),
        "--control-plane-api-keys",
        metavar="ID:NAME:ROLE:KEY",
        many="*",
        check=_api_keys,
        help="keys for the control plane (/workers, /flush_cache, /mesh/*...): role admin may change, user may "
        "only read; sent as 'Authorization: Bearer KEY'",
    )
    control_plane_audit_enabled: bool = setting(
        False,
        "--control-plane-audit-enabled",
        help="one audit log line (logger smg.audit) per control-plane call: who, what, the result",
    )
    jwt_issuer: str | None = setting(
        None,
        "--jwt-issuer",
        metavar="URL",
        check=_https_url,
        help="OIDC issuer whose bearer tokens (JWT) the control plane accepts; its JWKS is found through "
        "/.well-known/openid-configuration unless --jwt-jwks-uri names it",
    )
    jwt_audience: str | None = setting(
        None, "--jwt-audience", help="the audience (aud) a token must carry (usually the client id)"
    )
    jwt_jwks_uri: str | None = setting(
        None, "--jwt-jwks-uri", metavar="URL", check=_https_url, help="the issuer's JWKS, when not discovered"
    )
    jwt_role_mapping: tuple[str, ...] = setting(
        (),
        "--jwt-role-mapping",
        metavar="IDP_ROLE=ROLE",
        many="*",
        check=_role_mapping,
        help="a token's role or group names (claims roles, groups, role) to gateway roles (admin, user)",
    )

    def validate_auth(self) -> None:
        """The checks that involve several control-plane auth settings (and the other keys)."""
        if self.jwt_issuer is None:
            for flag, value in (
                ("--jwt-audience", self.jwt_audience),
                ("--jwt-jwks-uri", self.jwt_jwks_uri),
                ("--jwt-role-mapping", self.jwt_role_mapping),
            ):
                if value:
                    raise ConfigError(f"{flag} needs --jwt-issuer (the tokens' issuer)")
        if self.jwt_issuer is not None and self.jwt_issuer != self.jwt_issuer.strip():
            raise ConfigError("--jwt-issuer has leading or trailing spaces (tokens' iss is compared exactly)")
        # A control-plane key that is also the shared or a tenant key would have two roles.
        others: dict[bytes, str] = {}
        shared = getattr(self, "api_key", None)
        if shared:
            others[digest(shared.encode())] = "--api-key"
        for entry in getattr(self, "tenant_api_keys", ()):
            tenant, _, key = entry.partition(":")
            others[digest(key.encode())] = f"the --tenant-api-key key of '{tenant}'"
        for key in parse_api_keys(self.control_plane_api_keys):
            if key.digest in others:
                raise ConfigError(f"--control-plane-api-keys: key '{key.key_id}' is the same secret as {others[key.digest]}")
