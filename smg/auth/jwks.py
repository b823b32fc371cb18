"""The issuer's signing keys (JWKS), fetched, cached and kept fresh: the trio shell around `smg.auth.jwt`.

`JwksCache.run` lives in the gateway's nursery. It fetches the keys at start
(finding the JWKS through `<issuer>/.well-known/openid-configuration` unless
`--jwt-jwks-uri` names it), then every `refresh_secs`; a failed fetch is
retried with a backoff, and the keys fetched last keep verifying tokens
meanwhile: an issuer that is down stops nobody whose token's key is cached.

A token signed with a key the cache has never seen (the issuer rotated its
keys) asks for a fetch at once (`refetch`). Those fetches are rate-limited to
one per `min_refetch_secs`, and every request waiting for the keys joins the
same fetch, so a flood of tokens with made-up key ids costs the issuer one
request per interval, not one per token. The fetch itself runs in the cache's
task, never in the request's: a client that hangs up cannot cancel it halfway.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import trio

from smg.auth.jwt import KeySet
from smg.http.errors import parse_json

log = logging.getLogger("smg.auth")

DISCOVERY_PATH = "/.well-known/openid-configuration"
REFRESH_SECS = 300.0  # how often the keys are fetched again while all is well
MIN_REFETCH_SECS = 10.0  # the closest two fetches asked for by unknown key ids may be
RETRY_FIRST_SECS = 1.0  # after a failed fetch, then doubling...
RETRY_MAX_SECS = 60.0  # ...up to this
FETCH_TIMEOUT_SECS = 5.0  # one HTTP exchange with the issuer
MAX_DOCUMENT_BYTES = 1024 * 1024  # a discovery document or JWKS larger than this is refused

Fetch = Callable[[str], Awaitable[Any]]  # URL -> parsed JSON; raises JwksError


class JwksError(Exception):
    """The keys could not be fetched; the message says from where and why, for the operator."""


class JwksCache:
    """The last good `KeySet`, plus what went wrong since, for the requests that need to know.

    `keys` is None until a fetch succeeded. `last_error` is the last fetch's failure (None once
    one succeeds again). `fetch` replaces the HTTP exchange, `transport` httpx's, in tests.
    """

    def __init__(
        self,
        issuer: str,
        jwks_uri: str | None = None,
        *,
        refresh_secs: float = REFRESH_SECS,
        min_refetch_secs: float = MIN_REFETCH_SECS,
        fetch_timeout: float = FETCH_TIMEOUT_SECS,
        fetch: Fetch | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.issuer = issuer
        self.configured_uri = jwks_uri
        self.jwks_uri = jwks_uri  # discovered when not configured
        self.refresh_secs = refresh_secs
        self.min_refetch_secs = min_refetch_secs
        self.fetch_timeout = fetch_timeout
        self._fetch = fetch or self._http_fetch
        self._transport = transport
        self.keys: KeySet | None = None
        self.last_error: str | None = None
        self.fetched_at: float | None = None  # trio time of the last good fetch
        self.fetches = 0  # attempts, good or not (for tests and the log)
        self._wake = trio.Event()
        self._progress = trio.Event()  # set (and replaced) whenever a fetch ends
        self._started = 0
        self._completed = 0
        self._forced_target: int | None = None  # the fetch an unknown key id is waiting for
        self._last_forced: float = -math.inf

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fetch now, then every `refresh_secs` (sooner after a failure, or when `refetch` asks)."""
        task_status.started()
        delay = 0.0
        failures = 0
        while True:
            with trio.move_on_after(delay):
                await self._wake.wait()
            self._wake = trio.Event()
            self._started += 1
            try:
                ok = await self._fetch_keys()
            except Exception:  # a bug here must not take the node down: the keys fetched before stay
                log.exception("fetching the issuer's keys from %s failed", self.describe())
                self.last_error = f"cannot fetch the issuer's keys from {self.describe()}: internal error (see the log)"
                ok = False
            finally:
                self._completed += 1
                self._progress.set()
                self._progress = trio.Event()
            failures = 0 if ok else failures + 1
            delay = self.refresh_secs if ok else min(RETRY_FIRST_SECS * 2 ** (failures - 1), RETRY_MAX_SECS)

    async def refetch(self) -> None:
        """Called for a token whose key id is unknown: fetch the keys again, now, unless a fetch
        asked for this way happened within `min_refetch_secs`; then wait (up to the fetch
        timeout) for that fetch. Returns at once when rate-limited: the caller decides with the
        keys it has."""
        now = trio.current_time()
        if self._forced_target is not None and self._completed < self._forced_target:
            target = self._forced_target  # one is on its way: wait for it too
        elif now - self._last_forced >= self.min_refetch_secs:
            self._last_forced = now
            target = self._forced_target = self._started + 1  # a fetch that starts after this call
            self._wake.set()
        else:
            return
        with trio.move_on_after(self.fetch_timeout * 2 + 1.0):  # discovery, then the JWKS
            while self._completed < target:
                await self._progress.wait()

    def describe(self) -> str:
        """Where the keys come from, for messages: the JWKS URI, or the issuer's discovery document."""
        return self.jwks_uri or self.issuer.rstrip("/") + DISCOVERY_PATH

    async def _fetch_keys(self) -> bool:
        self.fetches += 1
        try:
            with trio.fail_after(self.fetch_timeout * 2 + 0.5):
                if self.jwks_uri is None:
                    self.jwks_uri = await self._discover()
                keys = KeySet.from_jwks(await self._fetch(self.jwks_uri))
        except (JwksError, ValueError, trio.TooSlowError) as exc:
            if isinstance(exc, trio.TooSlowError):
                reason = f"{self.describe()} did not answer in time"
            elif isinstance(exc, ValueError):
                reason = f"{self.describe()}: {exc}"
            else:
                reason = str(exc)  # names its URL
                if self.configured_uri is None:
                    self.jwks_uri = None  # discover again next time: the issuer may have moved its keys
            error = f"cannot fetch the issuer's keys: {reason}"
            if error != self.last_error:
                kept = "keeping the keys fetched before" if self.keys is not None else "no JWT can be verified yet"
                log.warning("%s (%s; retrying)", error, kept)
            self.last_error = error
            return False
        if not keys.keys:
            error = f"the JWKS at {self.jwks_uri} has no usable signing key ({'; '.join(keys.skipped) or 'it is empty'})"
            if error != self.last_error:
                kept = "keeping the keys fetched before" if self.keys is not None else "no JWT can be verified yet"
                log.warning("%s (%s; retrying)", error, kept)
            self.last_error = error
            return False
        if self.last_error is not None or self.keys is None or self.keys.kids != keys.kids:
            count = len(keys.keys)
            log.info(
                "JWKS from %s: %d signing key%s (kid %s)", self.jwks_uri, count, "s"[: count - 1], ", ".join(keys.kids) or "-"
            )
            for reason in keys.skipped:
                log.info("JWKS from %s: ignoring %s", self.jwks_uri, reason)
        self.keys = keys
        self.last_error = None
        self.fetched_at = trio.current_time()
        return True

    async def _discover(self) -> str:
        url = self.issuer.rstrip("/") + DISCOVERY_PATH
        document = await self._fetch(url)
        if not isinstance(document, dict):
            raise JwksError(f"{url} is not an OpenID configuration (not a JSON object)")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise JwksError(f"{url} names no http(s) jwks_uri; give it with --jwt-jwks-uri")
        named = document.get("issuer")
        if named != self.issuer:
            log.warning("the OpenID configuration at %s names issuer %r, not --jwt-issuer %r", url, named, self.issuer)
        return jwks_uri

    async def _http_fetch(self, url: str) -> Any:
        """GET `url` as JSON within the size bound; redirects are not followed (the keys must come
        from where the operator or the issuer's own document said)."""
        try:
            async with (
                httpx.AsyncClient(timeout=self.fetch_timeout, follow_redirects=False, transport=self._transport) as client,
                client.stream("GET", url, headers={"accept": "application/json"}) as response,
            ):
                if response.status_code != 200:
                    where = f" to {response.headers.get('location')}" if response.is_redirect else ""
                    raise JwksError(f"{url} answered HTTP {response.status_code}{where}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise JwksError(f"{url} sent more than {MAX_DOCUMENT_BYTES} bytes")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise JwksError(f"{url}: {type(exc).__name__} {exc}".rstrip()) from None
        try:
            return parse_json(bytes(body))
        except ValueError as exc:
            raise JwksError(f"{url} did not answer JSON: {exc}") from None
