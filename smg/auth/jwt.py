"""OIDC bearer tokens (JWT) for the control plane, verified without I/O.

`verify(token, keys, now, policy)` takes the token, the issuer's keys (a `KeySet`
built once from the JWKS document) and the wall-clock time, and returns the
caller (`Verified`) or raises a `TokenError` saying what is wrong in words an
operator can act on. Fetching and refreshing the keys is `smg.auth.jwks`'s job;
the clock is passed in so tests can move it and every time check uses one value.

PyJWT checks the signature only (`PyJWS`); the claims are checked here against
`now`, so no check reads the system clock behind the caller's back. What is
refused, and why:

- `alg: none` and the HMAC algorithms (`HS*`): the keys come from a public JWKS, and
  an HMAC "verified" with a public key would accept tokens anyone can mint;
- a key whose type, curve or declared `alg` does not fit the token's `alg`, so a
  token cannot choose how its key is interpreted;
- an `iss` other than `--jwt-issuer` (compared exactly), an `aud` without
  `--jwt-audience` (when given), a token without `exp`, an expired or not yet valid
  one (`exp`, `nbf`, `iat` in the future, each with `leeway` seconds for clock skew);
- a valid token none of whose roles is mapped to a gateway role (403, not 401: the
  caller is known, only not allowed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jwt import PyJWK, PyJWS
from jwt.exceptions import InvalidKeyError, InvalidSignatureError, PyJWTError

from smg.auth.keys import mapped_role

MAX_TOKEN_BYTES = 16 * 1024  # far above any IdP's access token; bounds the work a garbage token causes
DEFAULT_LEEWAY_SECS = 30.0
ROLE_CLAIMS = ("roles", "groups", "role")  # where IdPs put role and group names (a list or one string)
IDENTITY_CLAIMS = ("preferred_username", "email", "sub")  # the audit log's name for the caller, first found

# The signing algorithms a JWKS key may verify, by key type (and curve for EC and OKP).
RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
OKP_CURVES = {"EdDSA": "Ed25519"}
ALLOWED_ALGS = RSA_ALGS | EC_CURVES.keys() | OKP_CURVES.keys()

_JWS = PyJWS(algorithms=sorted(ALLOWED_ALGS))


class TokenError(Exception):
    """A token that does not open the control plane. `status` is 401 (not a valid token for
    this gateway) or 403 (valid, but its roles grant nothing here); `message` never contains
    the token."""

    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownKey(TokenError):
    """The token names a key (`kid`) the cached JWKS does not have: the issuer may have rotated
    its keys since they were fetched, so fetching them again may help."""

    def __init__(self, kid: str | None) -> None:
        self.kid = kid
        named = f"key id '{_printable(kid)}'" if kid is not None else "no key id (kid), and no cached key fits its alg"
        super().__init__(f"the token is signed with {named}, which is not among the issuer's keys")


class NoRole(TokenError):
    """A valid token whose role and group claims map to no gateway role."""

    status = 403

    def __init__(self, message: str, identity: str, subject: str | None) -> None:
        super().__init__(message)
        self.identity = identity
        self.subject = subject


@dataclass(frozen=True, slots=True)
class JwtPolicy:
    """What a token must say: the settings of `--jwt-issuer`, `--jwt-audience`, `--jwt-role-mapping`."""

    issuer: str
    audience: str | None = None
    role_mapping: Mapping[str, str] = field(default_factory=dict)  # IdP role or group -> admin | user
    leeway: float = DEFAULT_LEEWAY_SECS


@dataclass(frozen=True, slots=True)
class Verified:
    identity: str  # who, for the audit log
    subject: str | None  # `sub`, when `identity` is another claim
    role: str
    claims: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None  # the JWK's own `alg`, when it declares one
    key: Any  # a `cryptography` public key

    def fits(self, alg: str) -> bool:
        """Whether this key may verify a signature made with `alg`."""
        if self.alg is not None and self.alg != alg:
            return False
        if self.kty == "RSA":
            return alg in RSA_ALGS
        if self.kty == "EC":
            return EC_CURVES.get(alg) == self.crv
        if self.kty == "OKP":
            return OKP_CURVES.get(alg) == self.crv
        return False


@dataclass(frozen=True, slots=True)
class KeySet:
    """The usable signing keys of one JWKS document, parsed once per fetch.

    `skipped` says, per key left out, why (a symmetric `oct` key, an encryption key, a
    private key published by mistake, one PyJWT cannot load), for the fetcher's log.
    """

    keys: tuple[SigningKey, ...] = ()
    skipped: tuple[str, ...] = ()

    @classmethod
    def from_jwks(cls, document: Any) -> KeySet:
        """Parse a JWKS (`{"keys": [...]}`); ValueError if it is not one."""
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError('not a JWKS: expected a JSON object with a "keys" list')
        keys: list[SigningKey] = []
        skipped: list[str] = []
        for index, jwk in enumerate(document["keys"]):
            try:
                keys.append(_signing_key(jwk))
            except ValueError as exc:
                kid = jwk.get("kid") if isinstance(jwk, dict) else None
                skipped.append(f"key {index}" + (f" (kid '{_printable(kid)}')" if isinstance(kid, str) else "") + f": {exc}")
        return cls(tuple(keys), tuple(skipped))

    @property
    def kids(self) -> list[str]:
        return [key.kid for key in self.keys if key.kid is not None]

    def candidates(self, kid: str | None, alg: str) -> list[SigningKey]:
        """The keys that may have signed a token: the one named by `kid`, or, for a token without
        one, every key that fits its `alg`. Raises `UnknownKey` when there is none."""
        if kid is not None:
            named = [key for key in self.keys if key.kid == kid]
            if not named:
                raise UnknownKey(kid)
            fitting = [key for key in named if key.fits(alg)]
            if not fitting:
                raise TokenError(f"the token's alg {alg} does not fit its key '{_printable(kid)}' ({named[0].kty} key)")
            return fitting
        fitting = [key for key in self.keys if key.fits(alg)]
        if not fitting:
            raise UnknownKey(None)
        return fitting


def _signing_key(jwk: Any) -> SigningKey:
    if not isinstance(jwk, dict):
        raise ValueError("not a JSON object")
    kty = jwk.get("kty")
    if kty == "oct":
        raise ValueError("a symmetric (oct) key; only public keys are used")
    if kty not in ("RSA", "EC", "OKP"):
        raise ValueError(f"unsupported key type {kty!r}")
    if jwk.get("use", "sig") != "sig":
        raise ValueError(f"an encryption key (use {jwk.get('use')!r})")
    if "d" in jwk:
        raise ValueError("a private key (it has 'd'); the issuer should publish public keys only")
    alg = jwk.get("alg")
    if alg is not None and alg not in ALLOWED_ALGS:
        raise ValueError(f"unsupported alg {alg!r}")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError("its kid is not a string")
    try:
        key = PyJWK(jwk).key
    except (PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"cannot be loaded ({type(exc).__name__})") from None
    crv = jwk.get("crv")
    return SigningKey(kid, kty, crv if isinstance(crv, str) else None, alg, key)


def verify(token: bytes | str, keys: KeySet, now: float, policy: JwtPolicy) -> Verified:
    """The caller a bearer token stands for; `TokenError` (or its `UnknownKey`, `NoRole`) if none.

    `now`: Unix time in seconds (the wall clock: `exp` and `nbf` are wall-clock times).
    """
    raw = token.encode() if isinstance(token, str) else token
    if len(raw) > MAX_TOKEN_BYTES:
        raise TokenError(f"the token is longer than {MAX_TOKEN_BYTES} bytes")
    if raw.count(b".") != 2:
        raise TokenError("not a JWT (expected three dot-separated parts)")
    try:
        header = _JWS.get_unverified_header(raw)
    except PyJWTError:
        raise TokenError("not a JWT: its header is not base64url-encoded JSON") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none":
        raise TokenError("unsigned tokens (alg none) are refused")
    if alg.upper().startswith("HS"):
        raise TokenError(f"{alg} (a shared-secret HMAC) is refused: tokens must be signed with one of the issuer's public keys")
    if alg not in ALLOWED_ALGS:
        raise TokenError(f"unsupported alg {_printable(alg)}; accepted: {', '.join(sorted(ALLOWED_ALGS))}")
    kid = header.get("kid")
    payload = _verified_payload(raw, keys.candidates(kid, alg), alg)
    return _check_claims(payload, now, policy)


def _verified_payload(raw: bytes, candidates: list[SigningKey], alg: str) -> dict[str, Any]:
    for candidate in candidates:
        try:
            decoded = _JWS.decode_complete(raw, key=candidate.key, algorithms=[alg])
        except InvalidSignatureError:
            continue
        except (InvalidKeyError, PyJWTError, ValueError, TypeError):
            raise TokenError("the token's signature cannot be checked with its key") from None
        try:
            payload = json.loads(decoded["payload"])
        except ValueError:
            raise TokenError("the token's payload is not JSON") from None
        if not isinstance(payload, dict):
            raise TokenError("the token's payload is not a JSON object")
        return payload
    raise TokenError("the token's signature does not verify")


def _check_claims(claims: dict[str, Any], now: float, policy: JwtPolicy) -> Verified:
    issuer = claims.get("iss")
    if issuer != policy.issuer:
        shown = f"'{_printable(issuer)}'" if isinstance(issuer, str) else "none"
        raise TokenError(f"the token's issuer (iss) is {shown}, not '{policy.issuer}'")
    if policy.audience is not None:
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
        if policy.audience not in audiences:
            raise TokenError(f"the token is not for audience '{policy.audience}' (its aud claim)")
    expires = _number(claims, "exp")
    if expires is None:
        raise TokenError("the token has no expiry (exp)")
    if now > expires + policy.leeway:
        raise TokenError(f"the token expired {now - expires:.0f}s ago")
    not_before = _number(claims, "nbf")
    if not_before is not None and now + policy.leeway < not_before:
        raise TokenError(f"the token is not valid for another {not_before - now:.0f}s (nbf)")
    issued = _number(claims, "iat")
    if issued is not None and now + policy.leeway < issued:
        raise TokenError("the token was issued in the future (iat): check the clocks")
    identity, subject = _identity(claims)
    names = list(role_names(claims))
    role = mapped_role(names, policy.role_mapping)
    if role is None:
        mapped = sorted(policy.role_mapping) or ["admin", "user"]
        raise NoRole(
            f"the token's roles and groups ({', '.join(map(_printable, names)) or 'none'}) include none of "
            f"{', '.join(mapped)} (--jwt-role-mapping)",
            identity,
            subject,
        )
    return Verified(identity, subject, role, claims)


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TokenError(f"the token's {name} claim is not a number")  # NaN would pass every comparison
    return float(value)


def _identity(claims: dict[str, Any]) -> tuple[str, str | None]:
    subject = claims.get("sub") if isinstance(claims.get("sub"), str) and claims["sub"] else None
    for name in IDENTITY_CLAIMS:
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value, subject if subject != value else None
    raise TokenError("the token names nobody (no sub, preferred_username or email)")


def role_names(claims: dict[str, Any]) -> Iterable[str]:
    """Every role and group name a token carries, from `ROLE_CLAIMS`, each a list or one string."""
    for claim in ROLE_CLAIMS:
        value = claims.get(claim)
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            yield from (item for item in value if isinstance(item, str))


def _printable(value: Any, limit: int = 64) -> str:
    """A value from an untrusted token, safe to put in a message or a log line: control
    characters escaped, bounded length."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return text if len(text) <= limit else text[:limit] + "…"
