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
from smg.routing.policies.sticky import StickyPolicy, sticky

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
    """The policy `name`; with `config.sticky` (--routing-key-override), wrapped so routing keys
    stick to their worker (`manual` always does: it is not wrapped twice)."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy '{name}'") from None
    config = config or PolicyConfig()
    policy: Policy = cls(config)  # type: ignore[call-arg]
    if config.sticky and not isinstance(policy, StickyPolicy):
        policy = sticky(policy, config, config.assignment_mode or "delegate")
    return policy


def base_policy(policy: Policy) -> Policy:
    """The policy under a sticky wrapper (where cache_aware's tree and hooks live)."""
    return getattr(policy, "inner", policy)


__all__ = [
    "POLICIES",
    "NoEligibleWorker",
    "Policy",
    "PolicyConfig",
    "RequestInfo",
    "StickyPolicy",
    "base_policy",
    "load_of",
    "make_policy",
]
