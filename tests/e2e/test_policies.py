"""Every policy as a pure class: same inputs, same picks."""

from __future__ import annotations

from collections import Counter

import pytest

from smg.routing.policies import NoEligibleWorker, PolicyConfig, RequestInfo, make_policy
from smg.routing.policies.hash_ring import HashRing
from smg.routing.text import routing_text, text_chain
from smg.workers.registry import Worker


def fleet(n: int) -> list[Worker]:
    return [Worker.from_url(f"http://w{i}:8000") for i in range(n)]


def test_power_of_two_prefers_the_less_loaded_of_two() -> None:
    workers = fleet(2)
    workers[0].in_flight = 10
    policy = make_policy("power_of_two", PolicyConfig(seed=3))
    assert {policy.select(workers, RequestInfo("m")).url for _ in range(20)} == {workers[1].url}
    workers[1].reported_load = 50  # the worker's own report counts when higher
    assert policy.select(workers, RequestInfo("m")) is workers[0]


def test_power_of_two_spreads_equal_loads() -> None:
    workers = fleet(4)
    policy = make_policy("power_of_two", PolicyConfig(seed=1))
    counts = Counter(policy.select(workers, RequestInfo("m")).url for _ in range(400))
    assert len(counts) == 4


def test_ring_is_stable_and_moves_only_the_removed_workers_keys() -> None:
    workers = fleet(5)
    ring = HashRing(workers, 160)
    keys = range(2000)
    before = {k: next(ring.walk(k * 7919 * 10**12)).id for k in keys}
    assert before == {k: next(HashRing(workers, 160).walk(k * 7919 * 10**12)).id for k in keys}  # deterministic
    shares = Counter(before.values())
    assert min(shares.values()) > 2000 / 5 * 0.6  # virtual nodes spread keys
    after_ring = HashRing(workers[:2] + workers[3:], 160)
    after = {k: next(after_ring.walk(k * 7919 * 10**12)).id for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == workers[2].id for k in moved)
    walk = list(ring.walk(12345))
    assert len(walk) == 5 and len({w.id for w in walk}) == 5


def test_consistent_hashing_keys_targets_and_walks_past_unavailable() -> None:
    workers = fleet(4)
    policy = make_policy("consistent_hashing")
    info = RequestInfo("m", routing_key="user-42", pool=workers)
    chosen = policy.select(workers, info)
    assert all(policy.select(workers, info) is chosen for _ in range(10))
    rest = [w for w in workers if w is not chosen]
    moved = policy.select(rest, info)
    assert moved is not chosen
    assert policy.select(workers, info) is chosen  # back when it returns
    assert policy.select(workers, RequestInfo("m", target_index=2, pool=workers)) is workers[2]
    with pytest.raises(NoEligibleWorker):
        policy.select(workers, RequestInfo("m", target_index=4, pool=workers))
    with pytest.raises(NoEligibleWorker):
        policy.select(workers[:2], RequestInfo("m", target_index=3, pool=workers))
    by_client = RequestInfo("m", client_key="Bearer abc", pool=workers)
    assert policy.select(workers, by_client) is policy.select(workers, by_client)


def test_prefix_hash_groups_shared_prefixes_and_bounds_load() -> None:
    workers = fleet(4)
    policy = make_policy("prefix_hash", PolicyConfig(prefix_token_count=8))
    shared = "S" * 32
    picks = {policy.select(workers, RequestInfo("m", text=shared + f" question {i}")).id for i in range(20)}
    assert len(picks) == 1
    spread = {policy.select(workers, RequestInfo("m", text=f"{i:032d}")).id for i in range(40)}
    assert len(spread) >= 3
    home = next(w for w in workers if w.id in picks)
    home.in_flight = 100  # far above its fair share: the walk moves on
    assert policy.select(workers, RequestInfo("m", text=shared)) is not home


def test_manual_pins_keys_remaps_on_loss_and_expires_idle_keys() -> None:
    workers = fleet(3)
    policy = make_policy("manual", PolicyConfig(max_idle_secs=100))
    a = policy.select(workers, RequestInfo("m", routing_key="a", now=0))
    a.in_flight = 5  # load no longer matters once pinned
    assert policy.select(workers, RequestInfo("m", routing_key="a", now=50)) is a
    b = policy.select(workers, RequestInfo("m", routing_key="b", now=50))
    assert b is not a  # new keys go to the least loaded
    others = [w for w in workers if w is not a]
    moved = policy.select(others, RequestInfo("m", routing_key="a", now=60))
    assert moved is not a
    assert policy.select(workers, RequestInfo("m", routing_key="a", now=61)) is moved  # re-pinned, stays
    assert len(policy) == 2
    policy.select(workers, RequestInfo("m", routing_key="c", now=300))
    assert len(policy) == 1  # a and b idle for more than 100 s


def test_routing_text_and_chain() -> None:
    chat = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert routing_text(chat) == "system\x1fS\x1euser\x1fhi\x1e"
    assert routing_text({"prompt": ["a", "b"]}) == "a\x1eb"
    assert routing_text({"prompt": [1, 2, 3]}) == "1 2 3"
    assert routing_text({"text": "t"}) == "t"
    long = "x" * 200
    chain = text_chain(long)
    assert len(chain) == 3 and text_chain(long + "y" * 10) == chain
    assert text_chain("z" + long[1:])[0] != chain[0]


def test_unknown_policy_and_bad_config() -> None:
    with pytest.raises(ValueError):
        make_policy("fastest")
    with pytest.raises(ValueError):
        PolicyConfig(prefix_hash_load_factor=0.5)


def test_least_load_takes_the_idlest_worker() -> None:
    workers = fleet(3)
    workers[0].in_flight, workers[1].in_flight, workers[2].reported_load = 3, 1, 2
    assert make_policy("least_load").select(workers, RequestInfo("m")) is workers[1]


def test_bucket_boundaries_split_work_evenly_and_route_by_length() -> None:
    from smg.routing.policies.bucket import equal_work_boundaries

    assert equal_work_boundaries([10] * 4 + [40], 2) == [10]
    workers = sorted(fleet(2), key=lambda w: w.id)
    policy = make_policy("bucket", PolicyConfig(bucket_adjust_interval_secs=10))
    for length in range(1, 101):  # learning: half the characters are in prompts longer than 71
        policy.select(workers, RequestInfo("m", text="x" * length, now=length * 0.05, pool=workers))
    policy.select(workers, RequestInfo("m", text="x", now=11, pool=workers))  # adjusts the boundaries
    short = policy.select(workers, RequestInfo("m", text="x" * 10, now=12, pool=workers))
    long = policy.select(workers, RequestInfo("m", text="x" * 100, now=12, pool=workers))
    assert short is workers[0] and long is workers[1]
    assert policy.select([workers[0]], RequestInfo("m", text="x" * 100, now=13, pool=workers)) is workers[0]
