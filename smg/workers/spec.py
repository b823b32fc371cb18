"""The settings of a worker as JSON gives them: `POST /workers` bodies and discovery manifests.

One place checks their types, so a worker described by an operator's request and one
listed in a discovery file mean the same thing. Errors name the field (`param`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from smg.workers.providers import OPENAI, PROVIDERS, RUNTIME_TYPE, api_of, check_urls, environment_key, header_safe, key_source

MAX_PRIORITY = 2**32 - 1  # a u32, as the reference's: the replicated record is msgpack, whose integers stop at 64 bits


class SpecError(ValueError):
    """A worker setting of the wrong type or range; `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


# what a worker's mutable settings are when nobody set them (a PUT or a manifest entry replaces them all)
DEFAULTS: dict[str, Any] = {"labels": {}, "priority": 50, "cost": 1.0, "api_key": None}


def replaced_settings(body: dict[str, Any]) -> dict[str, Any]:
    """Every mutable setting: those `body` gives, the defaults for the rest."""
    return {**DEFAULTS, "labels": {}, **worker_settings(body)}


def worker_settings(body: dict[str, Any]) -> dict[str, Any]:
    """The mutable worker settings in `body` (labels, priority, cost, api_key), type-checked."""
    out: dict[str, Any] = {}
    if "labels" in body:
        labels = body["labels"]
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise SpecError("labels", "'labels' must map strings to strings")
        out["labels"] = dict(labels)
    if "priority" in body:
        priority = body["priority"]
        if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= MAX_PRIORITY:
            raise SpecError("priority", f"'priority' must be an integer from 0 to {MAX_PRIORITY}")
        out["priority"] = priority
    if "cost" in body:
        cost = body["cost"]
        # bounded by the largest float: 1e999 parses as infinity, and 10**400 has no float
        if not isinstance(cost, (int, float)) or isinstance(cost, bool) or not 0 <= cost <= sys.float_info.max:
            raise SpecError("cost", "'cost' must be a finite non-negative number")
        out["cost"] = float(cost)
    if "api_key" in body:
        if body["api_key"] is not None and not isinstance(body["api_key"], str):
            raise SpecError("api_key", "'api_key' must be a string")
        out["api_key"] = body["api_key"] or None
    return out


def provider_of(body: dict[str, Any], url: str) -> str | None:
    """The API of the hosted provider `body` describes (`runtime_type: external`, or the
    reference's `runtime`, or `provider` naming the API), else None: an engine, whose type
    discovery reads (any other `runtime_type`, as `GET /workers` shows them, is not read)."""
    runtime = body.get("runtime_type", body.get("runtime"))
    if body.get("provider") is None:
        return provider_api(body, url) if runtime == RUNTIME_TYPE else None
    if runtime not in (None, RUNTIME_TYPE):
        raise SpecError("provider", f"'provider' names a hosted provider: 'runtime_type' must be {RUNTIME_TYPE}")
    return provider_api(body, url)


def provider_api(body: dict[str, Any], url: str) -> str:
    """The API a provider entry speaks: its `provider`, else a known host's (api.anthropic.com:
    Anthropic's), else OpenAI's."""
    provider = body.get("provider")
    if provider is None:
        return api_of(OPENAI, url)
    if provider not in PROVIDERS:
        raise SpecError("provider", f"'provider' must be one of {', '.join(PROVIDERS)}")
    return str(provider)


def provider_key(provider: str, url: str, key: str | None, environ: Mapping[str, str]) -> str:
    """The key a provider added at run time (`POST /workers`, a config file) is sent: the one
    given with it, else this node's environment's for a known host. `SpecError` naming `url`
    (not https://, so the key would cross the network in the clear) or `api_key` (none, or
    one a header cannot carry)."""
    try:
        check_urls(provider, (url,))
    except ValueError as exc:
        raise SpecError("url", str(exc).removeprefix(f"--backend {provider}: ")) from None
    key = key or environment_key(provider, url, environ)
    if key is None:
        raise SpecError("api_key", f"a hosted provider needs 'api_key' ({key_source(provider, url)})")
    if not header_safe(key):
        raise SpecError("api_key", "'api_key' holds characters an HTTP header cannot carry")
    return key
