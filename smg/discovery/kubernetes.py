"""`--discovery-provider kubernetes` (or `--service-discovery`): the workers are the pods `--selector` matches.

The API server is found as Kubernetes' own clients find it from inside a pod:
`https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, with the service account's token
and CA certificate from /var/run/secrets/kubernetes.io/serviceaccount. The token is read again
every minute (and after a 401): projected tokens rotate, and a gateway outlives many of them.

For each selector (the workers', and with `--router-selector` the gateways') the shell LISTs the
pods (in `--service-discovery-namespace`, else in every namespace), then WATCHes from the list's
`resourceVersion` (bookmarks on, so a quiet watch still moves its version on; each watch bounded
by `timeoutSeconds`). It lists again every `--discovery-check-interval-secs`, which also brings
back a worker removed while its pod still stands (`--remove-unhealthy-workers`), and at once
when the server says the version expired (410 Gone). The pods go through the sans-IO `PodSet`,
and what it wants is applied as a manifest is (`apply.Discovered`).

While the API server is unreachable or refuses, the registry stays as it was: the shell retries
with backoff, logs the problem once (and again only when it changes), and says when the server
answers again. A pod it cannot read is skipped and logged once; the others still count.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import trio

from smg.discovery.apply import Callbacks, Discovered
from smg.discovery.manifest import WorkerSpec
from smg.discovery.pods import (
    PodSet,
    Selector,
    Step,
    WatchLines,
    WorkerRules,
    parse_list,
    router_of,
    selector_query,
    worker_of,
)
from smg.http.errors import parse_json
from smg.settings import ConfigError

log = logging.getLogger("smg.workers")

T = TypeVar("T")

TOKEN_REREAD_SECS = 60.0  # as client-go: a rotated projected token is picked up within a minute
WATCH_SECS = 300  # the longest watch asked for; then a new one from the version reached
MIN_WATCH_SECS = 1.0  # a watch (or list) ended sooner than this is retried after a backoff, not at once
WATCH_GRACE_SECS = 15.0  # past its timeoutSeconds, how long a silent watch is given before it is dropped
LIST_PAGE = 500  # pods per LIST page
REQUEST_SECS = 30.0  # one LIST page, or opening a watch
BACKOFF_FIRST_SECS = 0.5
BACKOFF_MAX_SECS = 30.0
MAX_EVENT_BYTES = 8 * 1024 * 1024  # one watch event (one pod), far above any real pod
MAX_ERROR_BYTES = 64 * 1024  # what is read of an error answer
MAX_SAID = 1000  # pod problems remembered (so each is logged once)


class KubernetesError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status


# -- reaching the API server ------------------------------------------------------------------


@dataclass(frozen=True)
class ApiAccess:
    """Where the API server is and how to be let in."""

    url: str  # without a trailing slash
    token_file: str | None  # the bearer token, read again as it rotates; None: none sent
    ca_file: str | None  # the CA the server's certificate is checked against; None: the system's


def _join(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def api_access(api_url: str | None, service_account_dir: str, environ: Mapping[str, str]) -> ApiAccess:
    """How Kubernetes clients configure themselves inside a pod (or `api_url`, for tests and runs
    outside a cluster, with the service account's files when the directory has them).

    Raises ConfigError with one line when there is no way in: not in a pod, or no token."""
    token = os.path.join(service_account_dir, "token")
    ca = os.path.join(service_account_dir, "ca.crt")
    if api_url is not None:
        https = api_url.startswith("https://")
        return ApiAccess(
            api_url.rstrip("/"),
            token if os.path.isfile(token) else None,
            ca if https and os.path.isfile(ca) else None,
        )
    host, port = environ.get("KUBERNETES_SERVICE_HOST", ""), environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise ConfigError(
            "Kubernetes discovery: not running in a Kubernetes pod ($KUBERNETES_SERVICE_HOST and "
            "$KUBERNETES_SERVICE_PORT are not set), so the API server is unknown"
        )
    if not os.path.isfile(token):
        raise ConfigError(
            f"Kubernetes discovery: no service account token at {token} (does the pod mount one? "
            "automountServiceAccountToken must not be false)"
        )
    return ApiAccess(f"https://{_join(host, port)}", token, ca if os.path.isfile(ca) else None)


def tls_context(access: ApiAccess) -> ssl.SSLContext | None:
    """The TLS context for an https:// API server: its CA file, else the system's CAs (None: http)."""
    if not access.url.startswith("https://"):
        return None
    try:
        return ssl.create_default_context(cafile=access.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"Kubernetes discovery: cannot use the CA certificate {access.ca_file}: {exc}") from None


class Token:
    """The service account token, read again every `reread` seconds and after a 401."""

    def __init__(self, path: str | None, reread: float = TOKEN_REREAD_SECS) -> None:
        self.path = path
        self.reread = reread
        self.value: str | None = None
        self._next = -float("inf")
        self._problem: str | None = None

    def headers(self, now: float) -> dict[str, str]:
        if self.path is None:
            return {}
        if now >= self._next:
            self._next = now + self.reread
            try:
                with open(self.path, encoding="utf-8") as f:
                    value = f.read().strip()
                self._problem = None
                self.value = value or self.value
            except (OSError, UnicodeError) as exc:
                problem = f"Kubernetes discovery: cannot read the token {self.path} ({exc}); keeping the last one"
                if problem != self._problem:
                    log.warning("%s", problem)
                    self._problem = problem
        return {"authorization": f"Bearer {self.value}"} if self.value else {}

    def refused(self) -> None:
        """The server said 401: read the file again before the next call (it may have rotated)."""
        self._next = -float("inf")


class KubernetesApi:
    """The two calls discovery makes: LIST pods (every page) and WATCH them."""

    def __init__(self, access: ApiAccess, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.access = access
        self.token = Token(access.token_file)
        self.client = httpx.AsyncClient(
            base_url=access.url,
            verify=tls_context(access) or True,
            timeout=httpx.Timeout(REQUEST_SECS),
            transport=transport,
            headers={"accept": "application/json"},
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    @staticmethod
    def pods_path(namespace: str | None) -> str:
        return f"/api/v1/namespaces/{quote(namespace, safe='')}/pods" if namespace else "/api/v1/pods"

    def _params(self, selector: Selector, **more: str) -> dict[str, str]:
        params = {"labelSelector": selector_query(selector)} if selector else {}
        return params | more

    async def list_pods(self, namespace: str | None, selector: Selector) -> tuple[list[Any], str]:
        """Every pod of the selector, and the list's resourceVersion (pages share one snapshot)."""
        items: list[Any] = []
        version: str | None = None
        next_page: str | None = None
        while True:
            params = self._params(selector, limit=str(LIST_PAGE))
            if next_page:
                params["continue"] = next_page
            response = await self.client.get(self.pods_path(namespace), params=params, headers=self._headers())
            await self._check(response)
            page = parse_list(response.content)
            items += page.items
            version = version or page.resource_version
            next_page = page.next_page
            if next_page is None:
                return items, version

    @asynccontextmanager
    async def watch(self, namespace: str | None, selector: Selector, version: str, seconds: int) -> AsyncIterator[httpx.Response]:
        """A WATCH from `version`, the server ending it after `seconds`; the response streams events."""
        params = self._params(
            selector, watch="1", resourceVersion=version, allowWatchBookmarks="true", timeoutSeconds=str(seconds)
        )
        timeout = httpx.Timeout(REQUEST_SECS, read=seconds + WATCH_GRACE_SECS)
        async with self.client.stream(
            "GET", self.pods_path(namespace), params=params, headers=self._headers(), timeout=timeout
        ) as response:
            if response.status_code != 410:
                await self._check(response)
            yield response

    def _headers(self) -> dict[str, str]:
        return self.token.headers(trio.current_time())

    async def _check(self, response: httpx.Response) -> None:
        if response.status_code == 200:
            return
        if response.status_code == 401:
            self.token.refused()
        body = b""
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= MAX_ERROR_BYTES:
                break
        raise KubernetesError(response.status_code, _status_message(body[:MAX_ERROR_BYTES]) or response.reason_phrase)


def _status_message(body: bytes) -> str:
    """The `message` of a Kubernetes Status answer, if that is what came."""
    try:
        doc = parse_json(body)  # depth-limited: an error body is the API server's (or a proxy's) to shape
    except ValueError:
        return ""
    message = doc.get("message") if isinstance(doc, dict) else None
    return str(message)[:300] if message else ""


# -- one selector's pods, listed and watched --------------------------------------------------


class Backoff:
    """Waits between failed calls: doubling from BACKOFF_FIRST_SECS to BACKOFF_MAX_SECS, jittered."""

    def __init__(self) -> None:
        self.delay = BACKOFF_FIRST_SECS

    def next(self) -> float:
        delay = self.delay
        self.delay = min(BACKOFF_MAX_SECS, self.delay * 2)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.delay = BACKOFF_FIRST_SECS


class PodWatch(Generic[T]):
    """LIST, then WATCH, one selector's pods into a `PodSet`, for ever; `on_change` gets what the
    pods are after every list (changed or not) and after every watch event that changed it."""

    def __init__(
        self,
        api: KubernetesApi,
        what: str,
        namespace: str | None,
        selector: Selector,
        pods: PodSet[T],
        on_change: Callable[[list[T]], None],
        resync: float,
    ) -> None:
        self.api = api
        self.what = what  # "worker pods", "gateway pods": for the log
        self.namespace = namespace
        self.selector = selector
        self.pods = pods
        self.on_change = on_change
        self.resync = resync
        self.lists = 0
        self._last: list[T] | None = None
        self._trouble: str | None = None
        self._said: set[str] = set()

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                items, version = await self.api.list_pods(self.namespace, self.selector)
            except Exception as exc:  # whatever the API server sends, discovery waits and tries again
                self._failed("cannot list", exc)
                await trio.sleep(backoff.next())
                continue
            self.pods.listed(items, version)
            self.lists += 1
            self._answered()
            self._publish(always=True)
            listed_at = trio.current_time()
            relist_at = listed_at + self.resync
            while relist_at - trio.current_time() >= MIN_WATCH_SECS:
                opened = trio.current_time()
                try:
                    step = await self._watch(relist_at)
                except Exception as exc:  # as for the list: never the gateway's end
                    self._failed("cannot watch", exc)
                    self._publish()  # what the events said before the failure stands
                    if trio.current_time() - opened > BACKOFF_MAX_SECS:
                        backoff.reset()  # it served a while before it broke: not a failing streak
                    await trio.sleep(backoff.next())
                    continue
                if step is Step.RELIST:
                    if trio.current_time() - listed_at < MIN_WATCH_SECS:  # expired at once: not again at once
                        await trio.sleep(backoff.next())
                    break
                if step is Step.REWATCH or trio.current_time() - opened < MIN_WATCH_SECS:
                    await trio.sleep(backoff.next())  # an error, or a server ending every watch at once
                else:
                    backoff.reset()

    async def _watch(self, relist_at: float) -> Step:
        version = self.pods.resource_version
        if version is None:
            return Step.RELIST
        seconds = max(1, min(WATCH_SECS, round(relist_at - trio.current_time())))
        with trio.move_on_after(seconds + WATCH_GRACE_SECS):
            async with self.api.watch(self.namespace, self.selector, version, seconds) as response:
                if response.status_code == 410:
                    self.pods.expired()
                    return Step.RELIST
                self._answered()
                lines = WatchLines(MAX_EVENT_BYTES)
                async for chunk in response.aiter_bytes():
                    for line in lines.feed(chunk):
                        step = self.pods.event(line)
                        if step is not Step.CONTINUE:
                            self._publish()
                            return step
                    self._publish()
        return Step.CONTINUE  # the server ended it (timeoutSeconds): watch again from the version reached

    def _publish(self, always: bool = False) -> None:
        for problem in self.pods.take_problems():
            if problem not in self._said:
                if len(self._said) >= MAX_SAID:
                    self._said.clear()
                self._said.add(problem)
                log.warning("Kubernetes discovery: %s", problem)
        wanted = self.pods.wanted()
        if always or wanted != self._last:
            self._last = wanted
            self.on_change(wanted)

    def _failed(self, doing: str, exc: BaseException) -> None:
        line = f"Kubernetes discovery: {doing} {self.what} at {self.api.access.url}: {_describe(exc, self.namespace)}"
        if line != self._trouble:
            log.warning("%s; retrying (the workers stay as they were)", line)
            self._trouble = line

    def _answered(self) -> None:
        if self._trouble is not None:
            log.info("Kubernetes discovery: the API server answers again (%s)", self.what)
            self._trouble = None


def _describe(exc: BaseException, namespace: str | None) -> str:
    if isinstance(exc, KubernetesError) and exc.status in (401, 403):
        where = f"a Role in namespace {namespace}" if namespace else "a ClusterRole (no --service-discovery-namespace)"
        return f"{exc} (the service account needs get, list and watch on pods: {where})"
    if isinstance(exc, httpx.HTTPError):
        cause = exc.__cause__ or exc.__context__
        detail = str(exc) or (str(cause) if cause is not None else "")
        return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return str(exc)


# -- the discovery source ---------------------------------------------------------------------


class KubernetesDiscovery:
    """Worker pods to the registry; with a router selector, gateway pods to `on_routers` (mesh seeds)."""

    def __init__(
        self,
        api: KubernetesApi,
        rules: WorkerRules,
        callbacks: Callbacks,
        *,
        namespace: str | None,
        resync: float,
        router_selector: Selector | None = None,
        on_routers: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.api = api
        self.rules = rules
        self.namespace = namespace
        self.discovered = Discovered(callbacks, gone="its pod is gone, not ready or no longer matches --selector")
        workers: PodSet[WorkerSpec] = PodSet(lambda pod, notes: worker_of(pod, rules, notes), identity=lambda spec: spec.url)
        self.workers = PodWatch(api, "worker pods", namespace, rules.selector, workers, self.discovered.apply, resync)
        self.routers: PodWatch[str] | None = None
        if router_selector is not None and on_routers is not None:
            selector = router_selector
            routers: PodSet[str] = PodSet(lambda pod, notes: router_of(pod, selector, notes))
            self.routers = PodWatch(api, "gateway pods", namespace, selector, routers, on_routers, resync)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        where = f"namespace {self.namespace}" if self.namespace else "every namespace"
        labels = selector_query(self.rules.selector) or "any labels (no --selector)"
        log.info(
            "Kubernetes discovery: worker pods with %s in %s, port %d, through %s",
            labels,
            where,
            self.rules.port,
            self.api.access.url,
        )
        if not self.rules.selector:
            log.warning("Kubernetes discovery without --selector: every running, ready pod in %s is taken as a worker", where)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.workers.run)
                if self.routers is not None:
                    nursery.start_soon(self.routers.run)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self.api.aclose()
