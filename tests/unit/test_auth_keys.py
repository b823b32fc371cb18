"""Control-plane API keys and roles (`smg.auth.keys`), the flags' checks (`smg.config.auth`),
and the guard's decisions for keys (`smg.auth.guard`) without a network."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import pytest
import trio

from smg.auth.audit import AuditLog
from smg.auth.guard import ControlAuthError, ControlPlaneGuard
from smg.auth.keys import (
    ADMIN,
    SHARED_KEY,
    USER,
    VIA_KEY,
    KeyRing,
    Principal,
    mapped_role,
    masked,
    parse_api_keys,
    parse_role_mapping,
    permits,
)
from smg.config import GatewayConfig
from smg.observability.logs import format_text
from smg.settings import ConfigError

ENTRIES = ("ci:CI pipeline:admin:sk-admin", "mon:Read Only:user:sk:with:colons")


def test_entries_parse_into_digests_never_keeping_the_key() -> None:
    admin, user = parse_api_keys(ENTRIES)
    assert (admin.key_id, admin.name, admin.role) == ("ci", "CI pipeline", ADMIN)
    assert (user.key_id, user.role) == ("mon", USER)
    assert b"sk-admin" not in admin.digest and "sk-admin" not in repr(admin)
    assert "sk:with:colons" not in repr(user)


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        (("ci:name:admin",), "'ci:name:***' is not ID:NAME:ROLE:KEY"),
        (("ci::admin:k",), "is not ID:NAME:ROLE:KEY"),
        (("ci:name:root:k",), "key 'ci' has role 'root'; roles are admin and user"),
        (("ci:a:admin:k1", "ci:b:user:k2"), "key id 'ci' is given twice"),
        (("a:a:admin:same", "b:b:user:same"), "key 'a' has the same secret as another key"),
    ],
)
def test_bad_entries_are_refused_without_showing_the_key(entries: tuple[str, ...], words: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        parse_api_keys(entries)
    assert words in str(info.value)
    assert "same" not in str(info.value).replace("same secret", "") and "k2" not in str(info.value)


def test_masked_hides_what_follows_the_last_colon() -> None:
    assert masked("a:b:admin:secret") == "a:b:admin:***"
    assert masked("nocolon") == "***"


def test_role_mapping_and_its_errors() -> None:
    assert parse_role_mapping(["Gateway.Admin=admin", "a=b=user"]) == {"Gateway.Admin": ADMIN, "a=b": USER}
    for entry, words in [("no-equals", "is not IDP_ROLE=ROLE"), ("=admin", "is not IDP_ROLE=ROLE"), ("x=root", "maps to 'root'")]:
        with pytest.raises(ValueError, match=words):
            parse_role_mapping([entry])
    with pytest.raises(ValueError, match="mapped to both admin and user"):
        parse_role_mapping(["x=admin", "x=user"])
    assert parse_role_mapping(["x=admin", "x=admin"]) == {"x": ADMIN}


def test_the_highest_mapped_role_wins_and_unmapped_names_grant_nothing() -> None:
    mapping = {"ops": ADMIN, "dev": USER}
    assert mapped_role(["dev", "ops"], mapping) == ADMIN
    assert mapped_role(["dev", "other"], mapping) == USER
    assert mapped_role(["admin", "other"], mapping) is None  # a mapping given: names do not stand for themselves
    assert mapped_role([], mapping) is None
    assert mapped_role(["user"], {}) == USER  # none given: the gateway's role names themselves
    assert mapped_role(["admin", "user"], {}) == ADMIN


def test_admin_may_do_everything_user_may_only_read() -> None:
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        assert permits(ADMIN, method)
    assert permits(USER, "GET") and permits(USER, "HEAD")
    assert not any(permits(USER, m) for m in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
    assert not permits(None, "GET")


def test_the_ring_finds_keys_the_shared_key_and_refused_keys() -> None:
    ring = KeyRing(parse_api_keys(ENTRIES), shared="shared-secret", refused=["tenant-key"])
    assert len(ring) == 4
    known, caller = ring.match(b"sk-admin")
    assert (
        known
        and caller is not None
        and (caller.who, caller.role, caller.via, caller.name) == ("ci", ADMIN, VIA_KEY, "CI pipeline")
    )
    assert ring.match(b"sk:with:colons")[1].role == USER  # type: ignore[union-attr]
    assert ring.match(b"shared-secret") == (True, SHARED_KEY)
    assert ring.match(b"tenant-key") == (True, None)
    assert ring.match(b"sk-admin ") == (False, None)
    assert ring.match(b"") == (False, None)


# -- the flags ---------------------------------------------------------------------------------


def config(**settings: object) -> GatewayConfig:
    return GatewayConfig(history_backend="none", **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"jwt_audience": "smg"}, "--jwt-audience needs --jwt-issuer"),
        ({"jwt_jwks_uri": "https://idp/jwks"}, "--jwt-jwks-uri needs --jwt-issuer"),
        ({"jwt_role_mapping": ("a=admin",)}, "--jwt-role-mapping needs --jwt-issuer"),
        ({"jwt_issuer": "https://idp ", "jwt_audience": "smg"}, "--jwt-issuer has leading or trailing spaces"),
        (
            {"control_plane_api_keys": ("a:A:admin:k",), "api_key": "k"},
            "--control-plane-api-keys: key 'a' is the same secret as --api-key",
        ),
        (
            {"control_plane_api_keys": ("a:A:user:k",), "tenant_api_keys": ("blue:k",)},
            "--control-plane-api-keys: key 'a' is the same secret as the --tenant-api-key key of 'blue'",
        ),
        ({"control_plane_api_keys": ("a:A:admin",)}, "--control-plane-api-keys: 'a:A:***' is not ID:NAME:ROLE:KEY"),
        ({"jwt_issuer": "https://idp", "jwt_role_mapping": ("x=admin", "x=user")}, "--jwt-role-mapping: 'x' is mapped"),
    ],
)
def test_cross_field_checks_name_the_flag(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(**settings)
    assert str(info.value).startswith(message.split(" ")[0].rstrip(":")) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_valid_combinations_are_accepted() -> None:
    base = config(control_plane_api_keys=ENTRIES, api_key="other", control_plane_audit_enabled=True)
    replace(base, jwt_issuer="https://idp.example/realms/r", jwt_audience="smg", jwt_role_mapping=("ops=admin",))
    replace(base, jwt_issuer="http://127.0.0.1:8080", jwt_jwks_uri="http://127.0.0.1:8080/keys")


# -- the guard, keys only ------------------------------------------------------------------------


def scope(authorization: bytes | None = None, **headers: bytes) -> dict[str, object]:
    pairs = [(name.replace("_", "-").encode(), value) for name, value in headers.items()]
    if authorization is not None:
        pairs.append((b"authorization", authorization))
    return {"type": "http", "headers": pairs}


def check(guard: ControlPlaneGuard, method: str, **kwargs: object) -> object:
    async def run() -> object:
        return await guard.check(scope(**kwargs), method)  # type: ignore[arg-type]

    return trio.run(run)


def refusal(guard: ControlPlaneGuard, method: str, **kwargs: object) -> ControlAuthError:
    with pytest.raises(ControlAuthError) as info:
        check(guard, method, **kwargs)
    return info.value


def test_the_guard_allows_by_role_and_refuses_with_the_right_status() -> None:
    results: list[str] = []
    guard = ControlPlaneGuard(parse_api_keys(ENTRIES), shared_key="shared", tenant_keys=["tk"], on_result=results.append)
    assert check(guard, "POST", authorization=b"Bearer sk-admin").who == "ci"  # type: ignore[attr-defined]
    assert check(guard, "GET", authorization=b"bearer sk:with:colons").role == USER  # type: ignore[attr-defined]
    assert check(guard, "DELETE", authorization=b"Bearer shared") == SHARED_KEY
    assert check(guard, "GET", x_api_key=b"sk-admin").role == ADMIN  # type: ignore[attr-defined]

    forbidden = refusal(guard, "POST", authorization=b"Bearer sk:with:colons")
    assert forbidden.status == 403 and forbidden.code == "FORBIDDEN" and forbidden.caller.who == "mon"
    assert "only read" in forbidden.message and "POST needs the admin role" in forbidden.message

    missing = refusal(guard, "GET")
    assert missing.status == 401 and (b"www-authenticate", b'Bearer realm="smg-control-plane"') in missing.headers
    for authorization, words in [
        (b"Bearer wrong", "invalid API key or token"),
        (b"Basic c2stYWRtaW4=", "is not 'Bearer <key or token>'"),
        (b"Bearer tk", "tenant keys (--tenant-api-key) cannot use control-plane routes"),
        (b"Bearer a.b.c", "invalid API key or token"),  # shaped like a JWT, but no --jwt-issuer
    ]:
        error = refusal(guard, "GET", authorization=authorization)
        assert error.status == 401 and words in error.message, error.message
        assert dict(error.headers)[b"www-authenticate"].endswith(b'error="invalid_token"')
        assert b"wrong" not in error.message.encode() and b"c2st" not in error.message.encode()
    assert results == [
        "allowed",
        "allowed",
        "allowed",
        "allowed",
        "forbidden",
        "missing",
        "invalid",
        "invalid",
        "invalid",
        "invalid",
    ]


# -- the audit line ------------------------------------------------------------------------------


def audit_fields(caplog: pytest.LogCaptureFixture, json_format: bool, caller: Principal | None, **kwargs: Any) -> dict[str, Any]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="smg.audit"):
        AuditLog(json_format).record(caller, "POST", "/workers", kwargs.pop("status", 202), "rid-1", **kwargs)
    (record,) = [r for r in caplog.records if r.name == "smg.audit"]
    return record.fields  # type: ignore[attr-defined, no-any-return]


def test_audit_lines_name_the_caller_and_stay_one_line(caplog: pytest.LogCaptureFixture) -> None:
    key = parse_api_keys(ENTRIES)[0].principal
    fields = audit_fields(caplog, False, key)
    assert fields == {
        "who": "ci",
        "name": '"CI pipeline"',  # quoted in the text format: it has a space
        "auth": "api_key",
        "role": "admin",
        "method": "POST",
        "path": "/workers",
        "status": 202,
        "outcome": "ok",
        "request_id": "rid-1",
    }
    assert audit_fields(caplog, True, key)["name"] == "CI pipeline"  # JSON escapes what it must itself
    hostile = Principal("eve\nINFO smg.audit: who=admin", "user", "jwt", subject="x" * 1000)
    fields = audit_fields(caplog, False, hostile, status=403, denied=True, detail="role user may only read")
    line = format_text(0.0, "INFO", "smg.audit", "control-plane call", fields)
    assert "\n" not in line and fields["who"] == json.dumps(hostile.who)
    assert len(fields["sub"]) < 300 and fields["outcome"] == "denied" and fields["detail"] == '"role user may only read"'
    fields = audit_fields(caplog, False, None, status=401, denied=True)
    assert (fields["who"], fields["auth"], fields["role"], fields["outcome"]) == ("anonymous", "none", "none", "denied")
    assert audit_fields(caplog, False, SHARED_KEY, status=500)["outcome"] == "failed"


def test_audit_lines_are_written_whatever_the_log_level(caplog: pytest.LogCaptureFixture) -> None:
    audit = AuditLog()
    logging.getLogger().setLevel(logging.ERROR)
    try:
        assert logging.getLogger("smg.audit").isEnabledFor(logging.INFO)
        with caplog.at_level(logging.INFO, logger="smg.audit"):
            audit.record(SHARED_KEY, "GET", "/workers", 200, "rid")
        assert any(r.name == "smg.audit" for r in caplog.records)
    finally:
        logging.getLogger().setLevel(logging.WARNING)
