"""Load-balancing policies: sans-IO classes that pick one of the available workers."""

from __future__ import annotations

from smg.router.policies.base import Policy, RequestInfo
from smg.router.policies.random import RandomPolicy
from smg.router.policies.round_robin import RoundRobinPolicy

_POLICIES: dict[str, type[Policy]] = {
    "random": RandomPolicy,
    "round_robin": RoundRobinPolicy,
}


def make_policy(name: str, *, seed: int | None = None) -> Policy:
    try:
        cls = _POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy '{name}'") from None
    return cls(seed=seed)


__all__ = ["Policy", "RequestInfo", "make_policy"]
