"""Hosted providers as workers (`--backend openai`): which key a provider takes, and from where.

A provider is a worker the gateway does not run: an OpenAI-compatible API (OpenAI, xAI, or any
service that speaks it) reached over HTTPS with the operator's key. It has no `/health`,
`/v1/loads` or `/flush_cache`; it is ready once its model list answers, and its health is its
answers. Its key goes to it alone: never to another worker, never in `GET /workers`, a log
line or a repr; and a client's own Authorization is never forwarded to it. No I/O here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

OPENAI = "openai"
PROVIDERS = (OPENAI,)
RUNTIME_TYPE = "external"  # GET /workers' runtime_type for a provider, as the reference's

# The variable a provider's key is read from at launch, by the host of its URL; the default for
# any other OpenAI-compatible host is OpenAI's.
KEY_VARIABLES = {"api.x.ai": "XAI_API_KEY"}
DEFAULT_KEY_VARIABLE = {OPENAI: "OPENAI_API_KEY"}


def key_variable(provider: str, url: str) -> str:
    """The environment variable `smg launch --backend <provider>` reads the key of `url` from."""
    host = (urlsplit(url if "://" in url else f"https://{url}").hostname or "").lower()
    return KEY_VARIABLES.get(host, DEFAULT_KEY_VARIABLE[provider])


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
        if not _KEY.fullmatch(value):
            raise LookupError(f"--backend {provider}: {name} holds characters an HTTP header cannot carry")
        keys[url] = value
    return keys


_KEY = re.compile(r"[\x21-\x7e]+")  # visible ASCII: a header value, nothing to split it


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


def auth_headers(key: str) -> list[tuple[bytes, bytes]]:
    """The headers that carry the gateway's key to an OpenAI-compatible provider."""
    return [(b"authorization", b"Bearer " + key.encode())]
