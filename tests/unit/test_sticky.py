"""Sticky sessions (--routing-key-override / --sticky-sessions): pins on any policy, detours,
moves, expiry, and pins replicated between gateways (the Responses lineage as a key is in
tests/e2e/test_sticky_e2e.py)."""

from __future__ import annotations

import pytest

from smg.cluster import pin_store
from smg.cluster.pin_store import ReplicatedPins
from smg.cluster.replication import Replication
from smg.config import GatewayConfig
from smg.crdt import HybridClock, LWWMap
from smg.routing.policies import PolicyConfig, RequestInfo, StickyPolicy, base_policy, make_policy
from smg.routing.policies.cache_aware import CacheAwarePolicy
from smg.routing.policies.sticky import LocalPins, pin_key
from smg.workers.health import HealthState
from smg.workers.registry import Worker


def fleet(n: int) -> list[Worker]:
    workers = [Worker.from_url(f"http://w{i}:1") for i in range(n)]
    for worker in workers:
        worker.health.reset(HealthState.READY)
    return workers


def ask(policy: object, workers: list[Worker], key: str | None = None, now: float = 0.0, **more: object) -> Worker:
    info = RequestInfo(model="m", routing_key=key, now=now, pool=tuple(workers), **more)  # type: ignore[arg-type]
    return policy.select(workers, info)  # type: ignore[attr-defined,no-any-return]


def test_the_override_pins_keys_on_round_robin_and_leaves_keyless_requests_to_it() -> None:
    workers = fleet(3)
    policy = make_policy("round_robin", PolicyConfig(sticky=True))
    assert isinstance(policy, StickyPolicy) and policy.mode == "delegate" and policy.name == "round_robin"
    first = ask(policy, workers, "conv-1")
    assert {ask(policy, workers, "conv-1", now=t).id for t in range(1, 10)} == {first.id}
    keyless = [ask(policy, workers).id for _ in range(6)]
    assert len(set(keyless)) == 3  # round robin, untouched by the pins
    plain = make_policy("round_robin", PolicyConfig())
    assert len({ask(plain, workers, "conv-1").id for _ in range(3)}) == 3  # without the flag a key is nothing


def test_delegate_asks_the_wrapped_policy_for_a_new_key() -> None:
    workers = fleet(3)
    policy = make_policy("cache_aware", PolicyConfig(sticky=True, seed=1))
    assert isinstance(base_policy(policy), CacheAwarePolicy)
    long = "shared system prompt " * 20
    home = ask(policy, workers, None, text=long + "first")  # keyless: cache_aware records the prefix
    assert ask(policy, workers, "new-key", text=long + "second") is home  # delegated: the prefix decides
    assert len(policy) == 1  # type: ignore[arg-type]


def test_a_healthy_pinned_worker_that_cannot_take_one_request_gets_a_detour_and_keeps_its_pin() -> None:
    workers = fleet(3)
    policy = make_policy("round_robin", PolicyConfig(sticky=True))
    home = ask(policy, workers, "k")
    others = [w for w in workers if w is not home]  # its breaker is open, or this request failed there
    detour = policy.select(others, RequestInfo(model="m", routing_key="k", pool=tuple(workers)))
    assert detour is not home
    assert ask(policy, workers, "k", now=1) is home  # back once it can take requests


def test_a_pin_moves_when_its_worker_is_unhealthy_or_gone() -> None:
    workers = fleet(3)
    policy = make_policy("random", PolicyConfig(sticky=True, seed=3))
    home = ask(policy, workers, "k")
    home.health.state = HealthState.FAILED
    others = [w for w in workers if w is not home]
    moved = policy.select(others, RequestInfo(model="m", routing_key="k", pool=tuple(workers)))
    home.health.state = HealthState.READY
    assert ask(policy, workers, "k", now=1) is moved  # re-pinned: it stays where it moved
    gone = [w for w in workers if w is not moved]
    again = policy.select(gone, RequestInfo(model="m", routing_key="k", pool=tuple(gone)))
    assert again is not moved and ask(policy, workers, "k", now=2) is again


def test_local_pins_expire_when_idle_and_keep_at_most_max_keys() -> None:
    pins = LocalPins(max_idle=100, max_keys=3)
    for i, key in enumerate("abcd"):
        pins.put(key, f"w{i % 2}", float(i))
    assert len(pins) == 3 and pins.get("a", 3) is None  # the least recently used went first
    assert pins.held() == {"w1": 2, "w0": 1}
    pins.put("b", "w0", 50)  # used again: now the newest
    assert pins.get("c", 103) is None and pins.get("b", 103) == "w0"  # c idle for more than 100 s
    assert pins.held() == {"w0": 1, "w1": 1}


def test_long_keys_are_pinned_by_a_digest() -> None:
    assert pin_key("session-42") == "session-42"
    long = "x" * 10_000
    assert pin_key(long) == pin_key(long) != pin_key(long + "y") and len(pin_key(long)) == 33


def test_the_flags_make_the_policy() -> None:
    config = GatewayConfig(policy="round_robin", routing_key_override=True)
    assert config.policy_config().sticky
    assert isinstance(make_policy(config.policy, config.policy_config()), StickyPolicy)
    manual = make_policy("manual", GatewayConfig(policy="manual", routing_key_override=True).policy_config())
    assert isinstance(manual.inner, type(make_policy("least_load")))  # type: ignore[attr-defined]  # not wrapped twice
    delegate = GatewayConfig(policy="cache_aware", routing_key_override=True, assignment_mode="min_group")
    assert make_policy("cache_aware", delegate.policy_config()).mode == "min_group"  # type: ignore[attr-defined]


class Pair:
    """Two gateways' replicated pin tables, exchanging every message at once."""

    def __init__(self, max_idle: float = 100.0, max_keys: int = 1000) -> None:
        self.nodes = [Replication(name, HybridClock(f"{name}#1")) for name in ("a", "b")]
        self.pins = [ReplicatedPins(node, max_idle, max_keys) for node in self.nodes]
        self.now = 0.0

    def sync(self) -> None:
        self.now += 0.1
        names = ["a", "b"]
        queue = [(n.node, *m) for n in self.nodes for m in n.outgoing(names, self.now, pin_store.wall_ms())]
        while queue:
            source, peer, channel, payload = queue.pop(0)
            target = self.nodes[names.index(peer)]
            queue += [(peer, *r) for r in target.receive(source, channel, payload, names, pin_store.wall_ms())]


def test_a_pin_made_on_one_gateway_holds_on_the_other() -> None:
    workers = fleet(4)
    pair = Pair()
    policies = [make_policy("round_robin", PolicyConfig(sticky=True)) for _ in range(2)]
    for policy, pins in zip(policies, pair.pins, strict=True):
        policy.pins = pins  # type: ignore[attr-defined]  # as the cluster node does
    homes = {f"k{i}": ask(policies[0], workers, f"k{i}").id for i in range(8)}
    pair.sync()
    ask(policies[1], workers)  # shift b's round robin: without the pins it would not repeat a's picks
    assert {key: ask(policies[1], workers, key).id for key in reversed(list(homes))} == homes
    assert len(pair.pins[1]) == 8 and pair.nodes[0].digests() == pair.nodes[1].digests()


def test_steady_use_is_shared_rarely_and_idle_pins_are_swept_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1_000_000_000]
    monkeypatch.setattr(pin_store, "wall_ms", lambda: clock[0])
    pair = Pair(max_idle=100.0, max_keys=2)
    a, b = pair.pins
    a.put("k", "w1", 0)
    before = pair.nodes[0].sequence(pin_store.STORE)
    clock[0] += 5_000
    a.put("k", "w1", 0)  # in use again within refresh_ms (12.5 s): nothing to send
    assert pair.nodes[0].sequence(pin_store.STORE) == before
    clock[0] += 10_000
    a.put("k", "w1", 0)  # older than refresh_ms: its last use goes out
    assert pair.nodes[0].sequence(pin_store.STORE) == before + 1
    pair.sync()
    clock[0] += 99_000
    assert b.get("k", 0) == "w1"
    clock[0] += 2_000
    assert b.get("k", 0) is None  # idle beyond --max-idle-secs on every node alike
    for key in ("x", "y", "z"):
        clock[0] += 1
        b.put(key, "w2", 0)
    assert b.sweep() == 2  # k idle, x the least recently used beyond max_keys
    pair.sync()
    assert sorted(k for k, _ in a.map.items()) == ["y", "z"]


def test_malformed_pins_from_a_peer_are_refused() -> None:
    pins = Pair().pins[0]
    stamp = HybridClock("x#1").now(1)
    with pytest.raises(ValueError, match="malformed pin"):
        pins._vet(LWWMap().set("k", {"worker": "w"}, stamp), 0)
    with pytest.raises(ValueError, match="pin key of 300"):
        pins._vet(LWWMap().set("k" * 300, ["w", 1], stamp), 0)
    pins._vet(LWWMap().set("k", ["w", 1], stamp), 0)


def test_a_callers_credential_is_never_a_routing_key() -> None:
    """manual pins callers without a routing key by their Authorization; the pin table (replicated
    with --ha-mesh) and consistent_hashing's ring get a digest, never the credential."""
    from smg.dataplane.attempts import request_info
    from tests.fakes import FakeClient, FakeUpstream, exchange, gateway, json_reply

    ctx = gateway(FakeUpstream(lambda call: json_reply(200, {})), 2, policy="manual")
    secret = b"Bearer sk-tenant-secret-123"
    info = request_info(ctx, exchange(FakeClient(b"{}"), headers=[(b"authorization", secret)]), {"model": "m"})
    assert info.client_key is not None and info.client_key.startswith("cred:") and b"secret" not in info.client_key.encode()
    again = request_info(ctx, exchange(FakeClient(b"{}"), headers=[(b"authorization", secret)]), {"model": "m"})
    assert again.client_key == info.client_key  # stable: the same caller keeps its worker


def test_replicated_pin_counts_follow_local_pins_and_merges() -> None:
    pair = Pair()
    a, b = pair.pins
    a.put("k1", "w1", 0)
    assert a.held() == {"w1": 1}
    a.put("k2", "w1", 0)
    a.put("k1", "w2", 0)  # moved
    assert a.held() == {"w1": 1, "w2": 1}
    assert b.held() == {}
    pair.sync()
    assert b.held() == {"w1": 1, "w2": 1}  # counted again after the merge


def test_only_policies_that_use_the_caller_pay_for_its_digest() -> None:
    from smg.dataplane.attempts import request_info
    from tests.fakes import FakeClient, FakeUpstream, exchange, gateway, json_reply

    ctx = gateway(FakeUpstream(lambda call: json_reply(200, {})), 2, policy="round_robin", routing_key_override=True)
    ex = exchange(FakeClient(b"{}"), headers=[(b"authorization", b"Bearer k")])
    assert request_info(ctx, ex, {"model": "m"}).client_key is None
