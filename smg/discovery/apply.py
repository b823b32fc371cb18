"""Making the registry match what a discovery source wants, the same way for every source.

A source (a manifest file, the Kubernetes API) says which workers it wants; `Discovered` keeps
the ones it added, asks `manifest.diff` what changes, and makes them through the gateway's
`Callbacks` (the path `POST /workers`, `PUT` and `DELETE` take, so the cluster hears of them).
A worker the source wants is the source's, however it was first registered; other workers are
never touched. One removed behind the source's back (`DELETE /workers`,
`--remove-unhealthy-workers`) while still wanted is added again at the next apply: that is how
a worker removed for failing comes back once its engine does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from smg.discovery.manifest import WorkerSpec, diff

log = logging.getLogger("smg.workers")


@dataclass
class Callbacks:
    """What discovery asks of the gateway; `add` may raise ValueError for a worker it refuses."""

    add: Callable[[WorkerSpec], None]
    update: Callable[[WorkerSpec], None]
    remove: Callable[[str], None]
    # registered and not draining: a listed worker removed behind discovery's back (DELETE
    # /workers, --remove-unhealthy-workers) is added again at the next reread
    present: Callable[[str], bool] = lambda url: True


@dataclass
class Discovered:
    """The workers one source added (by URL), and the step that makes them what it wants now."""

    callbacks: Callbacks
    gone: str = "no longer listed"  # why a worker leaves, for the log
    by_url: dict[str, WorkerSpec] = field(default_factory=dict)

    def apply(self, wanted: list[WorkerSpec]) -> None:
        self.by_url = {url: spec for url, spec in self.by_url.items() if self.callbacks.present(url)}
        changes = diff(wanted, self.by_url)
        for spec in changes.add:
            try:
                self.callbacks.add(spec)
            except ValueError as exc:
                log.warning("discovery: worker %s%s not added: %s", spec.url, _from(spec), exc)
                continue
            self.by_url[spec.url] = spec
            log.info("discovery: added worker %s%s", spec.url, _from(spec))
        for spec in changes.update:
            self.callbacks.update(spec)
            self.by_url[spec.url] = spec
            log.info("discovery: updated worker %s%s", spec.url, _from(spec))
        for url in changes.remove:
            self.callbacks.remove(url)
            del self.by_url[url]
            log.info("discovery: removing worker %s (%s)", url, self.gone)


def _from(spec: WorkerSpec) -> str:
    return f" ({spec.origin})" if spec.origin else ""
