"""--routing-key-headers (which headers carry the routing key, in order) and --assignment-mode (how
the manual policy gives a new key its worker)."""

from __future__ import annotations

from collections import Counter

import pytest

from smg.config import GatewayConfig
from smg.dataplane.attempts import request_info
from smg.routing.policies import PolicyConfig, RequestInfo
from smg.routing.policies.manual import ManualPolicy
from smg.settings import ConfigError
from smg.workers.registry import Worker
from tests.fakes import FakeClient, FakeUpstream, exchange, gateway, json_reply


def key_of(ctx: object, *headers: tuple[bytes, bytes]) -> str | None:
    return request_info(ctx, exchange(FakeClient(b"{}"), headers=headers), {"model": "m"}).routing_key  # type: ignore[arg-type]


def test_the_first_configured_header_present_is_the_key() -> None:
    ctx = gateway(FakeUpstream(lambda call: json_reply(200, {})), 1, routing_key_headers=("X-Session-Id", "x-user-id"))
    assert key_of(ctx, (b"x-user-id", b"u1"), (b"x-session-id", b"s1")) == "s1"  # the list's order, not the request's
    assert key_of(ctx, (b"x-user-id", b"u1"), (b"x-session-id", b"  ")) == "u1"  # a blank value does not count
    assert key_of(ctx, (b"x-smg-routing-key", b"k")) is None  # replaced by the configured list
    default = gateway(FakeUpstream(lambda call: json_reply(200, {})), 1)
    assert key_of(default, (b"x-smg-routing-key", b"k1")) == "k1"


def workers(n: int) -> list[Worker]:
    return [Worker.from_url(f"http://w{i}:1") for i in range(n)]


def assign(mode: str, keys: int, pool: list[Worker]) -> Counter[str]:
    policy = ManualPolicy(PolicyConfig(assignment_mode=mode, seed=7))
    return Counter(policy.select(pool, RequestInfo(model="m", routing_key=f"k{i}", now=i)).url for i in range(keys))


def test_assignment_modes_for_new_keys() -> None:
    pool = workers(3)
    pool[0].in_flight = 5  # busy: min_load avoids it; min_group counts keys, not load
    assert assign("min_load", 6, pool)["http://w0:1"] == 0
    assert sorted(assign("min_group", 6, pool).values()) == [2, 2, 2]
    spread = assign("random", 60, pool)
    assert set(spread) == {w.url for w in pool} and max(spread.values()) < 40
    policy = ManualPolicy(PolicyConfig(assignment_mode="random", seed=7))
    first = policy.select(pool, RequestInfo(model="m", routing_key="sticky", now=0)).url
    assert {policy.select(pool, RequestInfo(model="m", routing_key="sticky", now=t)).url for t in range(1, 20)} == {first}


def test_the_flags_reach_the_policy() -> None:
    assert GatewayConfig(policy="manual", assignment_mode="min_group").policy_config().assignment_mode == "min_group"
    assert ManualPolicy(GatewayConfig(policy="manual").policy_config()).mode == "min_load"
    assert ManualPolicy(GatewayConfig(policy="manual", assignment_mode="delegate").policy_config()).mode == "delegate"
    with pytest.raises(
        ConfigError, match=r"^--assignment-mode must be one of random, min_load, min_group, delegate, got 'fewest'$"
    ):
        GatewayConfig(assignment_mode="fewest")
    with pytest.raises(ConfigError, match=r"^--routing-key-headers: invalid header name 'bad header'$"):
        GatewayConfig(routing_key_headers=("bad header",))
