"""Manual: sticky routing keys over least-load.

The key is the first of `--routing-key-headers` present (default `X-SMG-Routing-Key`), else
the conversation lineage (see `sticky`), else the caller's Authorization or X-Forwarded-For.
A new key goes to a worker chosen by `--assignment-mode` (`min_load`, our default: the least
loaded; `min_group`; `random`; `delegate`: least-load again); a key moves only when its worker
is gone or unhealthy. Keys unused for `--max-idle-secs` are forgotten, at most
`max_sticky_keys` are kept. Requests without any key go to the least-loaded worker.
"""

from __future__ import annotations

from smg.routing.policies.base import PolicyConfig, RequestInfo
from smg.routing.policies.least_load import LeastLoadPolicy
from smg.routing.policies.sticky import LocalPins, StickyPolicy


def key_or_client(request: RequestInfo) -> str | None:
    return request.routing_key or request.lineage_key or request.client_key


class ManualPolicy(StickyPolicy):
    def __init__(self, config: PolicyConfig) -> None:
        super().__init__(
            LeastLoadPolicy(config),
            LocalPins(config.max_idle_secs, config.max_sticky_keys),
            config.assignment_mode or "min_load",
            config.seed,
            key_or_client,
            keys_by_client=True,
        )
        self.name = "manual"
