"""Control-plane API keys and roles (sans-IO): who a presented key is, and what its role may do.

Keys are kept only as SHA-256 digests, so the process holds no secret a heap dump
or a stray `repr` could leak, and every digest is compared with
`hmac.compare_digest` without stopping at the first match: how long a lookup
takes says nothing about which key (or which prefix of a key) was close.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ADMIN, USER = "admin", "user"
ROLES = (ADMIN, USER)
# `user` may look, not touch: the methods that change nothing on the control plane.
READ_METHODS = frozenset({"GET", "HEAD"})

# How a caller proved who it is (the audit line's `auth` field).
VIA_KEY, VIA_SHARED_KEY, VIA_JWT, VIA_NONE = "api_key", "shared_key", "jwt", "none"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a control-plane call, as the audit log names them; never a secret.

    `who`: a key's id, a token's user (`preferred_username`, `email`, else `sub`), `api-key`
    for the shared `--api-key`, or `anonymous`. `role`: `admin`, `user`, or None when no role
    was established (no credentials, or a token none of whose roles is mapped).
    """

    who: str
    role: str | None
    via: str
    name: str | None = None  # a key's display name
    subject: str | None = None  # a token's `sub`, when `who` is another claim


ANONYMOUS = Principal("anonymous", None, VIA_NONE)
SHARED_KEY = Principal("api-key", ADMIN, VIA_SHARED_KEY, name="--api-key")


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    name: str
    role: str
    digest: bytes  # SHA-256 of the key

    @property
    def principal(self) -> Principal:
        return Principal(self.key_id, self.role, VIA_KEY, name=self.name)


def digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def parse_api_key(entry: str) -> ApiKey:
    """One `ID:NAME:ROLE:KEY` entry (the key may itself contain colons); ValueError naming the
    part that is wrong, never echoing the key."""
    parts = entry.split(":", 3)
    if len(parts) != 4 or not all(parts):
        raise ValueError(f"'{masked(entry)}' is not ID:NAME:ROLE:KEY (every part non-empty)")
    key_id, name, role, key = parts
    if role not in ROLES:
        raise ValueError(f"key '{key_id}' has role '{role}'; roles are {' and '.join(ROLES)}")
    return ApiKey(key_id, name, role, digest(key.encode()))


def masked(entry: str) -> str:
    """An entry as an error may show it: what follows its last colon (the key) hidden."""
    head, sep, _ = entry.rpartition(":")
    return f"{head}{sep}***" if sep else "***"


def parse_api_keys(entries: Iterable[str]) -> tuple[ApiKey, ...]:
    keys = tuple(parse_api_key(entry) for entry in entries)
    ids = [key.key_id for key in keys]
    for key_id in ids:
        if ids.count(key_id) > 1:
            raise ValueError(f"key id '{key_id}' is given twice")
    digests = [key.digest for key in keys]
    for key in keys:
        if digests.count(key.digest) > 1:
            raise ValueError(f"key '{key.key_id}' has the same secret as another key (which role would it have?)")
    return keys


def parse_role_mapping(entries: Iterable[str]) -> dict[str, str]:
    """`IDP_ROLE=ROLE` entries as a dict (the IdP name may contain `=`: the last one splits)."""
    mapping: dict[str, str] = {}
    for entry in entries:
        idp_role, sep, role = entry.rpartition("=")
        if not sep or not idp_role:
            raise ValueError(f"'{entry}' is not IDP_ROLE=ROLE")
        if role not in ROLES:
            raise ValueError(f"'{entry}' maps to '{role}'; roles are {' and '.join(ROLES)}")
        if mapping.get(idp_role, role) != role:
            raise ValueError(f"'{idp_role}' is mapped to both {mapping[idp_role]} and {role}")
        mapping[idp_role] = role
    return mapping


def mapped_role(names: Iterable[str], mapping: Mapping[str, str]) -> str | None:
    """The gateway role a set of IdP role or group names grants: the highest any of them maps to.

    With no mapping configured the names `admin` and `user` stand for themselves, so an IdP
    can issue the gateway's roles directly; once a mapping is given only it counts (an IdP
    group that happens to be called `admin` then grants nothing by its name alone).
    """
    table = mapping or {role: role for role in ROLES}
    granted = {table[name] for name in names if name in table}
    for role in ROLES:  # highest first
        if role in granted:
            return role
    return None


def permits(role: str | None, method: str) -> bool:
    """`admin` may call every control-plane route; `user` only the ones that read (GET, HEAD)."""
    return role == ADMIN or (role == USER and method in READ_METHODS)


class KeyRing:
    """The keys that open the control plane, plus the ones that must be told they cannot.

    `shared`: the `--api-key` key, an admin (it opened the control plane before roles existed,
    and still does). `refused`: keys valid elsewhere (`--tenant-api-key`), recognised so their
    holder is told why the control plane refuses them.
    """

    def __init__(self, keys: Iterable[ApiKey], *, shared: str | None = None, refused: Iterable[str] = ()) -> None:
        self._entries: list[tuple[bytes, Principal | None]] = [(key.digest, key.principal) for key in keys]
        if shared:
            self._entries.append((digest(shared.encode()), SHARED_KEY))
        self._entries += [(digest(key.encode()), None) for key in refused]

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, presented: bytes) -> tuple[bool, Principal | None]:
        """(known, principal): whether `presented` is any key here, and the caller it stands for
        (None for a refused key). Every entry is compared, matched or not."""
        wanted = digest(presented)
        found: tuple[bool, Principal | None] = (False, None)
        for key_digest, principal in self._entries:
            if hmac.compare_digest(key_digest, wanted):
                found = (True, principal)
        return found
