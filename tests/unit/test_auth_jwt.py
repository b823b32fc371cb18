"""OIDC bearer tokens: the sans-IO verifier (`smg.auth.jwt`), the JWKS cache (`smg.auth.jwks`) on a
virtual clock, and the guard deciding with both. Tokens are signed here with keys made by
`cryptography`; nothing reaches a network."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt as pyjwt
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from smg.auth import jwt as tokens
from smg.auth.guard import ControlAuthError, ControlPlaneGuard, JwtSettings
from smg.auth.jwks import JwksCache, JwksError
from smg.auth.keys import ADMIN, USER, VIA_JWT

ISSUER = "https://idp.example/realms/r"
AUDIENCE = "smg"
NOW = 1_700_000_000.0
POLICY = tokens.JwtPolicy(ISSUER, AUDIENCE, {"Gateway.Admin": ADMIN, "Gateway.User": USER})

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC384_KEY = ec.generate_private_key(ec.SECP384R1())
OTHER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(private: Any, kid: str, **extra: Any) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(private, rsa.RSAPrivateKey) else ECAlgorithm
    return {**algorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid, "use": "sig", **extra}


JWKS = {"keys": [jwk(RSA_KEY, "rsa-1", alg="RS256"), jwk(EC_KEY, "ec-1"), jwk(EC384_KEY, "ec-384")]}
KEYS = tokens.KeySet.from_jwks(JWKS)


def claims(**changes: Any) -> dict[str, Any]:
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "u-123",
        "exp": NOW + 300,
        "iat": NOW - 10,
        "roles": ["Gateway.Admin"],
    }
    base.update(changes)
    return {key: value for key, value in base.items() if value is not None}


def sign(payload: dict[str, Any], key: Any = RSA_KEY, alg: str = "RS256", kid: str | None = "rsa-1") -> str:
    return pyjwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"


def refused(token: str | bytes, words: str, keys: tokens.KeySet = KEYS, now: float = NOW) -> tokens.TokenError:
    with pytest.raises(tokens.TokenError) as info:
        tokens.verify(token, keys, now, POLICY)
    assert words in info.value.message, info.value.message
    return info.value


# -- the verifier -----------------------------------------------------------------------------


def test_rs256_and_es256_tokens_verify_with_their_keys() -> None:
    verified = tokens.verify(sign(claims()), KEYS, NOW, POLICY)
    assert (verified.identity, verified.subject, verified.role) == ("u-123", None, ADMIN)
    verified = tokens.verify(sign(claims(roles="Gateway.User"), EC_KEY, "ES256", "ec-1"), KEYS, NOW, POLICY)
    assert verified.role == USER
    assert tokens.verify(sign(claims(), EC384_KEY, "ES384", "ec-384"), KEYS, NOW, POLICY).role == ADMIN
    assert tokens.verify(sign(claims(), RSA_KEY, "RS256", None), KEYS, NOW, POLICY).role == ADMIN  # no kid: tried by alg
    assert tokens.verify(sign(claims()).encode(), KEYS, NOW, POLICY).role == ADMIN  # bytes as they come off the wire


def test_the_identity_prefers_a_readable_name_and_keeps_sub() -> None:
    verified = tokens.verify(sign(claims(preferred_username="ada", email="ada@example.com")), KEYS, NOW, POLICY)
    assert (verified.identity, verified.subject) == ("ada", "u-123")
    verified = tokens.verify(sign(claims(email="ada@example.com")), KEYS, NOW, POLICY)
    assert (verified.identity, verified.subject) == ("ada@example.com", "u-123")
    refused(sign(claims(sub=None)), "names nobody")


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"iss": "https://evil.example"}, "issuer (iss) is 'https://evil.example', not"),
        ({"iss": None}, "issuer (iss) is none"),
        ({"iss": ISSUER + "/"}, "not 'https://idp.example/realms/r'"),  # compared exactly
        ({"aud": "another-app"}, "not for audience 'smg'"),
        ({"aud": ["a", "b"]}, "not for audience 'smg'"),
        ({"aud": None}, "not for audience 'smg'"),
        ({"exp": NOW - 31}, "expired 31s ago"),
        ({"exp": None}, "no expiry (exp)"),
        ({"exp": "tomorrow"}, "exp claim is not a number"),
        ({"exp": True}, "exp claim is not a number"),
        ({"exp": float("nan")}, "exp claim is not a number"),  # NaN passes every comparison
        ({"exp": float("inf")}, "exp claim is not a number"),  # a token that never expires
        ({"nbf": float("nan")}, "nbf claim is not a number"),
        ({"nbf": NOW + 120}, "not valid for another 120s (nbf)"),
        ({"iat": NOW + 3600}, "issued in the future"),
    ],
)
def test_claims_that_do_not_fit_are_refused(changes: dict[str, Any], words: str) -> None:
    error = refused(sign(claims(**changes)), words)
    assert error.status == 401


def test_the_leeway_allows_small_clock_skew() -> None:
    assert tokens.verify(sign(claims(exp=NOW - 29)), KEYS, NOW, POLICY)
    assert tokens.verify(sign(claims(nbf=NOW + 29)), KEYS, NOW, POLICY)
    assert tokens.verify(sign(claims(aud=["other", AUDIENCE])), KEYS, NOW, POLICY)
    strict = tokens.JwtPolicy(ISSUER, AUDIENCE, POLICY.role_mapping, leeway=0)
    with pytest.raises(tokens.TokenError, match="expired 1s ago"):
        tokens.verify(sign(claims(exp=NOW - 1)), KEYS, NOW, strict)


def test_the_clock_is_the_one_passed_in() -> None:
    token = sign(claims())
    assert tokens.verify(token, KEYS, NOW + 299, POLICY)
    refused(token, "expired", now=NOW + 400)
    real = sign(claims(exp=time.time() + 60, iat=time.time()))
    refused(real, "expired", now=time.time() + 3600)


def test_an_unknown_kid_is_its_own_error_so_the_keys_can_be_fetched_again() -> None:
    error = refused(sign(claims(), OTHER_RSA, "RS256", "rsa-2"), "key id 'rsa-2', which is not among the issuer's keys")
    assert isinstance(error, tokens.UnknownKey) and error.kid == "rsa-2"
    assert isinstance(refused(sign(claims()), "not among", keys=tokens.KeySet()), tokens.UnknownKey)
    no_kid = sign(claims(), OTHER_RSA, "RS256", None)  # a key without kid that fits nothing cached: bad signature
    refused(no_kid, "signature does not verify")


def test_signatures_algorithms_and_keys_must_match() -> None:
    refused(sign(claims(), OTHER_RSA, "RS256", "rsa-1"), "signature does not verify")  # right kid, wrong key
    refused(sign(claims(), EC_KEY, "ES256", "rsa-1"), "alg ES256 does not fit its key 'rsa-1' (RSA key)")
    refused(sign(claims(), RSA_KEY, "RS512", "rsa-1"), "does not fit")  # the JWK declares RS256
    refused(sign(claims(), EC384_KEY, "ES384", "ec-1"), "does not fit")  # P-256 key, ES384 token
    token = sign(claims())
    header, _, signature = token.split(".")
    tampered = f"{header}.{b64(json.dumps(claims(roles=['Gateway.Admin', 'x'])).encode())}.{signature}"
    refused(tampered, "signature does not verify")


def test_alg_none_and_hmac_with_the_public_key_are_refused() -> None:
    refused(handmade({"alg": "none", "kid": "rsa-1"}, claims()), "alg none")
    refused(handmade({"alg": "None"}, claims()), "alg none")
    public_pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}".encode()
    forged = signing_input.decode() + "." + b64(hmac.new(public_pem, signing_input, hashlib.sha256).digest())
    refused(forged, "HS256 (a shared-secret HMAC) is refused")
    refused(handmade({"alg": "HS512"}, claims()), "refused")
    refused(handmade({"alg": "RS1"}, claims()), "unsupported alg RS1")
    refused(handmade({"kid": "rsa-1"}, claims()), "alg none")  # no alg at all


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "not-a-token",
        "a.b",
        "a.b.c.d",
        "!!!.@@@.###",
        "e30.e30.e30",  # {} header: no alg
        b64(b"[1]") + ".e30.sig",
        b64(b"{") + ".e30.sig",
        "x" * 20000,
        "\x00.\x01.\x02",
    ],
)
def test_garbage_tokens_get_a_clear_401(garbage: str) -> None:
    with pytest.raises(tokens.TokenError) as info:
        tokens.verify(garbage, KEYS, NOW, POLICY)
    assert info.value.status == 401 and info.value.message
    assert not isinstance(info.value, tokens.UnknownKey)


def test_a_payload_that_is_not_an_object_is_refused() -> None:
    token = pyjwt.api_jws.encode(b"[1, 2]", RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    refused(token, "payload is not a JSON object")


def test_roles_come_from_roles_groups_or_role_through_the_mapping() -> None:
    for changes in (
        {"roles": "Gateway.Admin"},
        {"roles": None, "groups": ["x", "Gateway.Admin"]},
        {"roles": None, "role": "Gateway.Admin"},
        {"roles": ["Gateway.User"], "groups": ["Gateway.Admin"]},  # the highest wins
    ):
        assert tokens.verify(sign(claims(**changes)), KEYS, NOW, POLICY).role == ADMIN, changes
    assert tokens.verify(sign(claims(roles=["Gateway.User", 7])), KEYS, NOW, POLICY).role == USER
    error = refused(sign(claims(roles=["Other"], preferred_username="bob")), "include none of Gateway.Admin, Gateway.User")
    assert isinstance(error, tokens.NoRole) and error.status == 403 and error.identity == "bob" and error.subject == "u-123"
    refused(sign(claims(roles=None)), "roles and groups (none)")
    unmapped = tokens.JwtPolicy(ISSUER, AUDIENCE)  # no mapping: the gateway's role names themselves
    assert tokens.verify(sign(claims(roles=["user"])), KEYS, NOW, unmapped).role == USER
    with pytest.raises(tokens.NoRole):
        tokens.verify(sign(claims(roles=["Gateway.Admin"])), KEYS, NOW, unmapped)


def test_no_audience_configured_accepts_any_aud() -> None:
    policy = tokens.JwtPolicy(ISSUER, None, POLICY.role_mapping)
    assert tokens.verify(sign(claims(aud="anything")), KEYS, NOW, policy).role == ADMIN
    assert tokens.verify(sign(claims(aud=None)), KEYS, NOW, policy).role == ADMIN


def test_a_jwks_keeps_usable_signing_keys_and_says_why_it_skipped_others() -> None:
    document = {
        "keys": [
            jwk(RSA_KEY, "ok"),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {**jwk(OTHER_RSA, "enc"), "use": "enc"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            {"kty": "XYZ", "kid": "odd"},
            {**jwk(EC_KEY, "bad-alg"), "alg": "HS256"},
            "not an object",
            {"kty": "RSA", "kid": 5, "n": "AQAB", "e": "AQAB"},
        ]
    }
    keys = tokens.KeySet.from_jwks(document)
    assert keys.kids == ["ok"]
    assert len(keys.skipped) == 7
    assert any("symmetric (oct)" in reason for reason in keys.skipped)
    assert any("encryption key" in reason for reason in keys.skipped)
    bad: Any
    for bad in ({}, {"keys": {}}, [], None):
        with pytest.raises(ValueError, match="not a JWKS"):
            tokens.KeySet.from_jwks(bad)
    private = {**jwk(RSA_KEY, "leaked"), "d": "AQAB"}
    assert "private key" in tokens.KeySet.from_jwks({"keys": [private]}).skipped[0]


# -- the JWKS cache, on trio's virtual clock ----------------------------------------------------


class FakeIssuer:
    """The discovery document and JWKS an issuer serves; `down` makes every fetch fail."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.down = False
        self.requests: list[str] = []

    async def fetch(self, url: str) -> Any:
        self.requests.append(url)
        await trio.sleep(0.01)
        if self.down:
            raise JwksError(f"{url}: ConnectError connection refused")
        if url.endswith("/.well-known/openid-configuration"):
            return {"issuer": ISSUER, "jwks_uri": ISSUER + "/certs"}
        if url == ISSUER + "/certs":
            return self.jwks
        raise JwksError(f"{url} answered HTTP 404")


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def run(clock: trio.testing.MockClock, scenario: Any) -> None:
    trio.run(scenario, clock=clock)


def test_the_cache_discovers_fetches_and_refreshes(clock: trio.testing.MockClock) -> None:
    issuer = FakeIssuer({"keys": [jwk(RSA_KEY, "rsa-1")]})

    async def scenario() -> None:
        cache = JwksCache(ISSUER, fetch=issuer.fetch, refresh_secs=300)
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            await trio.sleep(1)
            assert cache.keys is not None and cache.keys.kids == ["rsa-1"] and cache.last_error is None
            assert issuer.requests == [ISSUER + "/.well-known/openid-configuration", ISSUER + "/certs"]
            issuer.jwks = {"keys": [jwk(OTHER_RSA, "rsa-2")]}
            await trio.sleep(300)
            assert cache.keys.kids == ["rsa-2"]  # the periodic refresh; discovery is not repeated
            assert issuer.requests[2:] == [ISSUER + "/certs"]
            nursery.cancel_scope.cancel()

    run(clock, scenario)


def test_an_unknown_kid_refetches_at_once_but_at_most_once_per_interval(clock: trio.testing.MockClock) -> None:
    issuer = FakeIssuer({"keys": [jwk(RSA_KEY, "rsa-1")]})

    async def scenario() -> None:
        cache = JwksCache(ISSUER, ISSUER + "/certs", fetch=issuer.fetch, min_refetch_secs=10)
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            await trio.sleep(1)
            assert issuer.requests == [ISSUER + "/certs"]  # --jwt-jwks-uri: no discovery
            issuer.jwks = {"keys": [jwk(RSA_KEY, "rsa-1"), jwk(OTHER_RSA, "rsa-2")]}
            async with trio.open_nursery() as flood:  # many at once share one fetch
                for _ in range(50):
                    flood.start_soon(cache.refetch)
            assert cache.keys is not None and cache.keys.kids == ["rsa-1", "rsa-2"]
            assert len(issuer.requests) == 2
            for _ in range(50):  # then, within the interval: no fetch at all
                await cache.refetch()
            await trio.sleep(5)
            await cache.refetch()
            assert len(issuer.requests) == 2
            await trio.sleep(5)
            await cache.refetch()  # the interval is over
            assert len(issuer.requests) == 3
            nursery.cancel_scope.cancel()

    run(clock, scenario)


def test_while_the_issuer_is_down_cached_keys_stay_and_the_error_is_kept(clock: trio.testing.MockClock) -> None:
    issuer = FakeIssuer({"keys": [jwk(RSA_KEY, "rsa-1")]})

    async def scenario() -> None:
        cache = JwksCache(ISSUER, fetch=issuer.fetch, refresh_secs=300)
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            await trio.sleep(1)
            issuer.down = True
            await trio.sleep(300)
            assert cache.keys is not None and cache.keys.kids == ["rsa-1"]
            assert cache.last_error is not None and "connection refused" in cache.last_error
            count = len(issuer.requests)
            await trio.sleep(1.5)  # retried after 1 s, then 2, 4...: sooner than the refresh period
            assert len(issuer.requests) > count
            issuer.down = False
            await trio.sleep(120)
            assert cache.last_error is None
            nursery.cancel_scope.cancel()

    run(clock, scenario)


def test_bad_documents_are_errors_not_crashes(clock: trio.testing.MockClock) -> None:
    documents: dict[str, Any] = {ISSUER + "/.well-known/openid-configuration": {"issuer": ISSUER}}

    async def fetch(url: str) -> Any:
        return documents[url]

    async def scenario() -> None:
        cache = JwksCache(ISSUER, fetch=fetch)
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            await trio.sleep(0.1)
            assert cache.keys is None and "names no http(s) jwks_uri" in (cache.last_error or "")
            documents[ISSUER + "/.well-known/openid-configuration"] = {"issuer": ISSUER, "jwks_uri": ISSUER + "/k"}
            documents[ISSUER + "/k"] = {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}
            await trio.sleep(2)
            assert cache.keys is None and "no usable signing key" in (cache.last_error or "")
            documents[ISSUER + "/k"] = ["not", "a", "jwks"]
            await trio.sleep(4)
            assert "not a JWKS" in (cache.last_error or "")
            nursery.cancel_scope.cancel()

    run(clock, scenario)


# -- the guard with tokens -----------------------------------------------------------------------


def scope(token: str) -> dict[str, Any]:
    return {"type": "http", "headers": [(b"authorization", b"Bearer " + token.encode())]}


@pytest.fixture
def guarded(clock: trio.testing.MockClock) -> Iterator[tuple[FakeIssuer, list[str]]]:
    yield FakeIssuer({"keys": [jwk(RSA_KEY, "rsa-1")]}), []


def test_the_guard_accepts_mapped_tokens_and_refetches_for_rotated_keys(
    clock: trio.testing.MockClock, guarded: tuple[FakeIssuer, list[str]]
) -> None:
    issuer, results = guarded

    async def scenario() -> None:
        cache = JwksCache(ISSUER, fetch=issuer.fetch, min_refetch_secs=10)
        settings = JwtSettings(ISSUER, AUDIENCE, None, {"Gateway.Admin": ADMIN, "Gateway.User": USER})
        guard = ControlPlaneGuard([], jwt=settings, jwks=cache, on_result=results.append, clock=lambda: NOW)

        async def check(token: str, method: str = "POST") -> Any:
            return await guard.check(scope(token), method)

        async def refusal(token: str, method: str = "POST") -> ControlAuthError:
            with pytest.raises(ControlAuthError) as info:
                await check(token, method)
            return info.value

        early = await refusal(sign(claims()))  # before the first fetch: 503, not 401
        assert early.status == 503 and "not loaded" in early.message
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            await trio.sleep(1)
            caller = await check(sign(claims(preferred_username="ada")))
            assert (caller.who, caller.role, caller.via, caller.subject) == ("ada", ADMIN, VIA_JWT, "u-123")
            reader = sign(claims(roles=["Gateway.User"]))
            assert (await check(reader, "GET")).role == USER
            forbidden = await refusal(reader, "DELETE")
            assert forbidden.status == 403 and forbidden.caller.who == "u-123"
            norole = await refusal(sign(claims(roles=["Other"])), "GET")
            assert norole.status == 403 and norole.code == "FORBIDDEN" and "--jwt-role-mapping" in norole.message
            expired = await refusal(sign(claims(exp=NOW - 600)))
            assert expired.status == 401 and "expired" in expired.message
            assert dict(expired.headers)[b"www-authenticate"].endswith(b'error="invalid_token"')

            issuer.jwks = {"keys": [jwk(RSA_KEY, "rsa-1"), jwk(OTHER_RSA, "rsa-2")]}  # rotation
            assert (await check(sign(claims(), OTHER_RSA, "RS256", "rsa-2"))).role == ADMIN
            made_up = await refusal(sign(claims(), OTHER_RSA, "RS256", "nope"))  # within the interval: no fetch
            assert made_up.status == 401 and "'nope', which is not among" in made_up.message

            issuer.down = True
            await trio.sleep(11)
            assert (await check(sign(claims()))).role == ADMIN  # a cached key still works
            unknown = await refusal(sign(claims(), OTHER_RSA, "RS256", "rsa-3"))
            assert unknown.status == 503 and unknown.code == "AUTH_UNAVAILABLE"
            assert "connection refused" in unknown.message and (b"retry-after", b"5") in unknown.headers
            nursery.cancel_scope.cancel()

    run(clock, scenario)
    expected = ["unavailable", "allowed", "allowed", "forbidden", "forbidden", "invalid", "allowed", "invalid"]
    assert results == [*expected, "allowed", "unavailable"]


def test_risky_jwt_settings_are_warned_about_at_start(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="smg.auth")
    ControlPlaneGuard([], jwt=JwtSettings("http://idp.internal/realms/r", None, "http://idp.internal/certs"))
    lines = [r.getMessage() for r in caplog.records]
    assert any("without --jwt-audience" in line for line in lines)
    assert sum("is plain HTTP" in line for line in lines) == 2
    caplog.clear()
    ControlPlaneGuard([], jwt=JwtSettings("http://127.0.0.1:8080", AUDIENCE))  # a local issuer: nothing to say
    ControlPlaneGuard([], jwt=JwtSettings(ISSUER, AUDIENCE, "http://localhost:9/certs"))
    assert not caplog.records


def test_the_http_fetch_refuses_what_is_not_a_small_json_answer() -> None:
    pages: dict[str, httpx.Response] = {
        "/ok": httpx.Response(200, json={"keys": [jwk(RSA_KEY, "rsa-1")]}),
        "/missing": httpx.Response(404, text="no"),
        "/moved": httpx.Response(302, headers={"location": "https://elsewhere.example/keys"}),
        "/html": httpx.Response(200, text="<html>"),
        "/huge": httpx.Response(200, content=b"[" + b"1," * 600_000 + b"1]"),
    }

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/down":
            raise httpx.ConnectError("connection refused", request=request)
        return pages[request.url.path]

    async def scenario() -> None:
        cache = JwksCache(ISSUER, transport=httpx.MockTransport(answer))
        fetch = cache._http_fetch
        assert (await fetch("https://idp.example/ok"))["keys"][0]["kid"] == "rsa-1"
        for path, words in [
            ("/missing", "answered HTTP 404"),
            ("/moved", "answered HTTP 302 to https://elsewhere.example/keys"),
            ("/html", "did not answer JSON"),
            ("/huge", "sent more than 1048576 bytes"),
            ("/down", "ConnectError connection refused"),
        ]:
            with pytest.raises(JwksError, match=words):
                await fetch("https://idp.example" + path)

    trio.run(scenario)


def test_an_unexpected_failure_in_a_fetch_does_not_end_the_task(clock: trio.testing.MockClock) -> None:
    calls = 0

    async def fetch(url: str) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return {"keys": [jwk(RSA_KEY, "rsa-1")]}

    async def scenario() -> None:
        cache = JwksCache(ISSUER, ISSUER + "/certs", fetch=fetch)
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            await trio.sleep(0.1)
            assert cache.keys is None and "internal error" in (cache.last_error or "")
            await trio.sleep(2)
            assert cache.keys is not None and cache.last_error is None
            nursery.cancel_scope.cancel()

    run(clock, scenario)
