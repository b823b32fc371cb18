"""The audit log of `--control-plane-audit-enabled`: one line per control-plane call, on logger `smg.audit`.

A line says who called (`who`: a key's id, with its `name`; a token's user, with
its `sub` when that differs; `api-key` for the shared `--api-key`; `anonymous`
when no credential was accepted), how they proved it (`auth`), their `role`, what
they called (`method`, `path`), the answer's `status` and the `request_id` that
ties it to the access line and the client. It goes through `logging`, so it has
the gateway's format (`--log-json`: one JSON object) and destinations
(`--log-dir`). Credentials never reach it; names taken from a token are the
caller's own claims, so in the text format they are quoted and escaped, and
bounded in length, to keep one call one parseable line.

    2025-01-15T10:30:00.000Z INFO  smg.audit: control-plane call who=ci name="CI pipeline" auth=api_key
        role=admin method=POST path=/workers status=202 outcome=ok request_id=9f2c...
"""

from __future__ import annotations

import json
import logging
from typing import Any

from smg.auth.keys import ANONYMOUS, Principal

LOGGER = "smg.audit"
MAX_VALUE_CHARS = 256
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/@+{}()[],*~%!$&';?#")


class AuditLog:
    def __init__(self, json_format: bool = False) -> None:
        self._logger = logging.getLogger(LOGGER)
        # asked for explicitly: written even when --log-level keeps other INFO lines out
        self._logger.setLevel(logging.INFO)
        self._json = json_format

    def record(
        self,
        caller: Principal | None,
        method: str,
        path: str,
        status: int,
        request_id: str,
        *,
        denied: bool = False,
        detail: str | None = None,
    ) -> None:
        """Log one control-plane call (at INFO; refusals too: they are what an audit is for).

        `outcome`: `denied` when the credentials were refused (`denied`; `detail` says why),
        else `ok` or `failed` by the status."""
        if not self._logger.isEnabledFor(logging.INFO):
            return
        caller = caller or ANONYMOUS
        fields: dict[str, Any] = {"who": caller.who}
        if caller.name is not None:
            fields["name"] = caller.name
        if caller.subject is not None:
            fields["sub"] = caller.subject
        fields.update(
            auth=caller.via,
            role=caller.role or "none",
            method=method,
            path=path,
            status=status,
            outcome="denied" if denied else "ok" if status < 400 else "failed",
        )
        if denied and detail:
            fields["detail"] = detail
        fields["request_id"] = request_id
        self._logger.info("control-plane call", extra={"fields": {key: self._safe(value) for key, value in fields.items()}})

    def _safe(self, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if len(value) > MAX_VALUE_CHARS:
            value = value[:MAX_VALUE_CHARS] + "…"
        if self._json or (value and all(char in _PLAIN for char in value)):
            return value  # JSON escapes what it must
        return json.dumps(value)  # quoted, control characters escaped: still one key=value pair
