"""The discovery manifest and the changes that make the registry match it (sans-IO).

A manifest is JSON: a list of workers, or `{"workers": [...]}`. A worker is its URL, or
an object with `url` and the settings `POST /workers` takes (`labels`, `priority`,
`cost`, `api_key`). A manifest that does not parse or check is refused whole (the
registry keeps what it had), with one line naming the entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from smg.http.errors import parse_json
from smg.workers.registry import normalize_url
from smg.workers.spec import SpecError, worker_settings


class ManifestError(ValueError):
    """The manifest cannot be used; the message says where."""


@dataclass(frozen=True)
class WorkerSpec:
    url: str  # normalized
    settings: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)
    # the model id the source gives it (Kubernetes --model-id-from): served under that name, the
    # names it reports kept as aliases; None: it serves what it reports
    model_id: str | None = None
    origin: str = field(default="", compare=False)  # where it was found, for the log ("pod ns/name")


def parse(data: bytes) -> list[WorkerSpec]:
    try:
        doc = parse_json(data)
    except ValueError as exc:
        raise ManifestError(f"not JSON: {exc}") from None
    if isinstance(doc, dict):
        doc = doc.get("workers")
    if not isinstance(doc, list):
        raise ManifestError('expected a list of workers, or {"workers": [...]}')
    specs: dict[str, WorkerSpec] = {}
    for i, entry in enumerate(doc):
        body = {"url": entry} if isinstance(entry, str) else entry
        if not isinstance(body, dict) or not isinstance(body.get("url"), str):
            raise ManifestError(f"workers[{i}]: a URL, or an object with a 'url'")
        unknown = set(body) - {"url", "labels", "priority", "cost", "api_key"}
        if unknown:
            raise ManifestError(f"workers[{i}]: unknown field {', '.join(sorted(unknown))}")
        try:
            url = normalize_url(body["url"])
            settings = worker_settings(body)
        except SpecError as exc:
            raise ManifestError(f"workers[{i}].{exc.param}: {exc}") from None
        except ValueError as exc:
            raise ManifestError(f"workers[{i}].url: {exc}") from None
        if url in specs:
            raise ManifestError(f"workers[{i}]: {url} is listed twice")
        specs[url] = WorkerSpec(url, settings)
    return list(specs.values())


@dataclass(frozen=True)
class Changes:
    add: list[WorkerSpec]
    update: list[WorkerSpec]  # listed before, with other settings now
    remove: list[str]  # URLs


def diff(wanted: list[WorkerSpec], discovered: dict[str, WorkerSpec]) -> Changes:
    """What makes the workers this source discovered (`discovered`, by URL) match `wanted`."""
    wanted_by_url = {spec.url: spec for spec in wanted}
    add = [spec for url, spec in wanted_by_url.items() if url not in discovered]
    update = [spec for url, spec in wanted_by_url.items() if url in discovered and discovered[url] != spec]
    remove = [url for url in discovered if url not in wanted_by_url]
    return Changes(add, update, remove)
