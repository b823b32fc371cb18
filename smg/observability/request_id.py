"""Request ids: honour a client's id, else mint one shaped like the reference's."""

from __future__ import annotations

import os
import string

from smg.http.asgi import Scope

_ALPHABET = (string.ascii_letters + string.digits).encode()
# byte -> alphanumeric, so one os.urandom call and one C-level translate mint an id
_TO_ALNUM = bytes(_ALPHABET[b % len(_ALPHABET)] for b in range(256))

# Route path -> prefix of generated ids, as the reference mints them.
PREFIX_BY_PATH = {
    "/v1/chat/completions": "chatcmpl-",
    "/v1/completions": "cmpl-",
}


def new_request_id(path: str) -> str:
    return PREFIX_BY_PATH.get(path, "req-") + os.urandom(24).translate(_TO_ALNUM).decode()


def _acceptable(value: bytes) -> bool:
    return 0 < len(value) <= 128 and all(0x21 <= b <= 0x7E for b in value)


def request_id_for(scope: Scope, header_names: tuple[bytes, ...]) -> str:
    """The first configured header carrying a valid id (1-128 visible ASCII), else a new id."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for wanted in header_names:
        for name, value in headers:
            if name == wanted and _acceptable(value):
                return value.decode("ascii")
    return new_request_id(scope["path"])
