"""Hosted providers as workers (`--backend openai|anthropic`): which API and key a provider takes.

A provider is a worker the gateway does not run: an OpenAI-compatible API (OpenAI, xAI, or any
service that speaks it) or Anthropic's Messages API, reached over HTTPS with the operator's
key. Which of the two a provider speaks (`Worker.provider`) comes from its host when the host
is a known one (api.anthropic.com speaks Anthropic's even under `--backend openai`, as with the
reference), else from `--backend`. It has no `/health`,
`/v1/loads` or `/flush_cache`; it is ready once its model list answers, and its health is its
answers. Its key goes to it alone: never to another worker, never in `GET /workers`, a log
line or a repr; and a client's own Authorization is never forwarded to it. No I/O here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

OPENAI = "openai"  # the OpenAI API: Bearer key, /v1/chat/completions and the rest
ANTHROPIC = "anthropic"  # Anthropic's Messages API: x-api-key, /v1/messages only (chat is translated)
PROVIDERS = (OPENAI, ANTHROPIC)
RUNTIME_TYPE = "external"  # GET /workers' runtime_type for a provider, as the reference's
ANTHROPIC_VERSION = "2023-06-01"  # the `anthropic-version` sent when the client named none

# Known hosts: the API each speaks and the variable its key is read from at launch. Any other
# host speaks the API `--backend` names, with that API's usual variable.
KNOWN_HOSTS = {
    "api.openai.com": (OPENAI, "OPENAI_API_KEY"),
    "api.anthropic.com": (ANTHROPIC, "ANTHROPIC_API_KEY"),
    "api.x.ai": (OPENAI, "XAI_API_KEY"),
}
DEFAULT_KEY_VARIABLE = {OPENAI: "OPENAI_API_KEY", ANTHROPIC: "ANTHROPIC_API_KEY"}


def _host(url: str) -> str:
    return (urlsplit(url if "://" in url else f"https://{url}").hostname or "").lower()


def api_of(backend: str, url: str) -> str:
    """The API the provider at `url` speaks: its host's when the host is known, else `backend`'s."""
    known = KNOWN_HOSTS.get(_host(url))
    return known[0] if known is not None else backend


def key_variable(backend: str, url: str) -> str:
    """The environment variable the key of the provider at `url` is read from."""
    known = KNOWN_HOSTS.get(_host(url))
    return known[1] if known is not None else DEFAULT_KEY_VARIABLE[backend]


def launch_keys(provider: str, urls: tuple[str, ...], environ: Mapping[str, str]) -> dict[str, str]:
    """Each start-up provider URL's key from the environment; `LookupError` naming the first
    variable that is missing or empty (the one-line start-up error)."""
    keys = {}
    for url in urls:
        name = key_variable(provider, url)
        value = environ.get(name, "").strip()
        if not value:
            raise LookupError(
                f"--backend {provider}: set {name} to the provider's API key for {url} (it is read from the environment, "
                "never from a flag)"
            )
        if not header_safe(value):
            raise LookupError(f"--backend {provider}: {name} holds characters an HTTP header cannot carry")
        keys[url] = value
    return keys


_KEY = re.compile(r"[\x21-\x7e]+")  # visible ASCII: a header value, nothing to split it


def header_safe(key: str) -> bool:
    """`key` can go in a header as it is (visible ASCII: nothing to split the header with)."""
    return bool(_KEY.fullmatch(key))


def environment_key(provider: str, url: str, environ: Mapping[str, str]) -> str | None:
    """The key this node's environment holds for the provider at `url`, if any: only for a
    known host, the variable's own (OPENAI_API_KEY for api.openai.com, ...). A provider added
    at run time (`POST /workers`, a peer's record) on any other host never gets a key the
    operator set for another: it brings its own, or the node was started with it."""
    if _host(url) not in KNOWN_HOSTS:
        return None
    return environ.get(key_variable(provider, url), "").strip() or None


def key_source(provider: str, url: str) -> str:
    """Where a node may take the key for the provider at `url` from, besides an `api_key`
    given with it, for error messages."""
    if _host(url) in KNOWN_HOSTS:
        return f"or {key_variable(provider, url)} in the gateway's environment"
    return f"environment keys go only to {', '.join(sorted(KNOWN_HOSTS))}"


def check_urls(provider: str, urls: tuple[str, ...]) -> None:
    """`ValueError` for provider URLs that would expose a key: plain http to anything but this
    host (the key would cross the network in the clear), or one key variable for several hosts
    (`OPENAI_API_KEY` would reach every OpenAI-compatible provider listed)."""
    hosts: dict[str, set[str]] = {}
    for url in urls:
        parts = urlsplit(url if "://" in url else f"http://{url}")  # as normalize_url reads a bare host
        host = (parts.hostname or "").lower()
        if parts.scheme != "https" and not _is_loopback(host):
            raise ValueError(
                f"--backend {provider}: {url} is not https://, and the provider's key would cross the network in the clear"
            )
        hosts.setdefault(key_variable(provider, url), set()).add(host)
    for name, named in hosts.items():
        if len(named) > 1:
            raise ValueError(
                f"--backend {provider}: {name} would go to {len(named)} hosts ({', '.join(sorted(named))}); "
                "a key goes to one provider: start a gateway per provider"
            )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def models_path(provider: str) -> str:
    """Where the provider lists its models (Anthropic's lists 20 a page unless asked for more)."""
    return "/v1/models?limit=1000" if provider == ANTHROPIC else "/v1/models"


def auth_headers(provider: str, key: str) -> list[tuple[bytes, bytes]]:
    """The headers that carry the gateway's key to a provider speaking `provider`'s API
    (Anthropic's also names the API version, which it requires on every request)."""
    if provider == ANTHROPIC:
        return [(b"x-api-key", key.encode()), (b"anthropic-version", ANTHROPIC_VERSION.encode())]
    return [(b"authorization", b"Bearer " + key.encode())]
