"""Hosted providers as workers (`--backend openai`): which key a provider takes, and from where.

A provider is a worker the gateway does not run: an OpenAI-compatible API (OpenAI, xAI, or any
service that speaks it) reached over HTTPS with the operator's key. It has no `/health`,
`/v1/loads` or `/flush_cache`; it is ready once its model list answers, and its health is its
answers. Its key goes to it alone: never to another worker, never in `GET /workers`, a log
line or a repr; and a client's own Authorization is never forwarded to it. No I/O here.
"""

from __future__ import annotations

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
        keys[url] = value
    return keys


def auth_headers(key: str) -> list[tuple[bytes, bytes]]:
    """The headers that carry the gateway's key to an OpenAI-compatible provider."""
    return [(b"authorization", b"Bearer " + key.encode())]
