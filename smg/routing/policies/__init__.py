"""Load-balancing policies: sans-IO classes that pick one of the available workers."""

from __future__ import annotations

from smg.routing.policies.base import NoEligibleWorker, Policy, PolicyConfig, RequestInfo, load_of
from smg.routing.policies.bucket import BucketPolicy
from smg.routing.policies.cache_aware import CacheAwarePolicy
from smg.routing.policies.consistent_hashing import ConsistentHashingPolicy
from smg.routing.policies.least_load import LeastLoadPolicy
from smg.routing.policies.manual import ManualPolicy
from smg.routing.policies.power_of_two import PowerOfTwoPolicy
from smg.routing.policies.prefix_hash import PrefixHashPolicy
from smg.routing.policies.random import RandomPolicy
from smg.routing.policies.round_robin import RoundRobinPolicy

POLICIES: dict[str, type[Policy]] = {
    "cache_aware": CacheAwarePolicy,
    "random": RandomPolicy,
    "round_robin": RoundRobinPolicy,
    "power_of_two": PowerOfTwoPolicy,
    "consistent_hashing": ConsistentHashingPolicy,
    "prefix_hash": PrefixHashPolicy,
    "manual": ManualPolicy,
    "least_load": LeastLoadPolicy,
    "bucket": BucketPolicy,
}


def make_policy(name: str, config: PolicyConfig | None = None) -> Policy:
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy '{name}'") from None
    return cls(config or PolicyConfig())  # type: ignore[call-arg]


__all__ = ["POLICIES", "NoEligibleWorker", "Policy", "PolicyConfig", "RequestInfo", "load_of", "make_policy"]
