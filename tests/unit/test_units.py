"""Sans-IO pieces: prefix cache, engine model, URL normalisation, policies, request ids."""

from __future__ import annotations

import pytest

from smg.observability.request_id import request_id_for
from smg.routing.policies import PolicyConfig, RequestInfo, make_policy
from smg.simworker.engine import SimConfig, SimEngine
from smg.simworker.kvcache import PrefixKVCache, chain_hashes, tokenize
from smg.workers.health import HealthState
from smg.workers.registry import Worker, WorkerRegistry, normalize_url, worker_id_for


def words(n: int, prefix: str = "w") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_chain_hashes_depend_on_the_whole_prefix() -> None:
    a = chain_hashes(words(48))
    b = chain_hashes(["x", *words(48)[1:]])
    assert len(a) == 3 and len(chain_hashes(words(47))) == 2
    assert all(x != y for x, y in zip(a, b, strict=True))  # one changed token changes every later block
    assert chain_hashes(words(48)) == a  # stable across calls (and processes: no salted hash())


def test_prefix_cache_hits_and_lru_eviction() -> None:
    cache = PrefixKVCache(capacity_blocks=3)
    assert cache.admit(words(32)) == 0  # blocks w1 w2
    assert cache.admit(words(40)) == 32  # same two full blocks; the 8-token tail is not cached
    assert cache.admit(words(16, "z")) == 0  # w1 w2 z1
    assert cache.admit(words(32)) == 32  # touch: z1 is now least recently used
    assert cache.admit(words(16, "y")) == 0  # evicts z1
    assert cache.admit(words(16, "z")) == 0  # z1 was evicted; re-adding it evicts w1
    assert cache.stats.evictions == 2 and len(cache) == 3
    assert cache.admit(words(32)) == 0  # w1 gone, so the chain misses from the start
    cache.flush()
    assert len(cache) == 0


def test_engine_is_deterministic_under_a_seed() -> None:
    config = SimConfig(seed=7, fail_rate=0.5)
    a, b = SimEngine(config), SimEngine(SimConfig(seed=7, fail_rate=0.5))
    assert [a.decide(10).fail for _ in range(50)] == [b.decide(10).fail for _ in range(50)]
    assert a.output_words("same prompt", 8) == b.output_words("same prompt", 8)
    assert a.output_words("same prompt", 8) != SimEngine(SimConfig(seed=8)).output_words("same prompt", 8)


def test_engine_timing_model() -> None:
    engine = SimEngine(SimConfig(ttft_ms=10, prefill_tokens_per_sec=1000, tpot_ms=2, batch_slowdown=0.5))
    assert engine.ttft_secs(500) == pytest.approx(0.51)
    engine.running = 1
    assert engine.tpot_secs() == pytest.approx(0.002)
    engine.running = 3
    assert engine.tpot_secs() == pytest.approx(0.004)


def test_sim_config_update_is_all_or_nothing() -> None:
    config = SimConfig()
    config.update({"fail_rate": 0.25, "unhealthy": True})
    assert config.fail_rate == 0.25 and config.unhealthy
    with pytest.raises(ValueError):
        config.update({"fail_rate": 0.5, "hang_rate": 7})
    assert config.fail_rate == 0.25 and config.hang_rate == 0
    with pytest.raises(ValueError):
        config.update({"bogus": 1})


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("HTTP://Worker.Example:80/", "http://worker.example:80"),
        ("https://w", "https://w:443"),
        ("http://[::1]:9000/v1/", "http://[::1]:9000/v1"),
    ],
)
def test_normalize_url(raw: str, normal: str) -> None:
    assert normalize_url(raw) == normal


@pytest.mark.parametrize("bad", ["ftp://x", "http://", "http://h:99999", "http://h?x=1"])
def test_normalize_url_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize_url(bad)


def test_worker_ids_and_registry_index() -> None:
    assert worker_id_for(normalize_url("h:1")) == Worker.from_url("http://h:1/").id
    registry = WorkerRegistry()
    a, b = Worker.from_url("http://a:1", models=["m"]), Worker.from_url("http://b:1", models=["m", "n"])
    registry.add(a)
    registry.add(b)
    assert registry.available("m") == []
    a.health.reset(HealthState.READY)
    b.health.reset(HealthState.READY)
    registry.refresh()
    assert registry.available("m") == [a, b] and registry.available("n") == [b]
    assert sorted(registry.models()) == ["m", "n"]


def test_round_robin_alternates_per_model_and_random_stays_in_set() -> None:
    workers = [Worker.from_url(f"http://w{i}:1") for i in range(3)]
    rr = make_policy("round_robin")
    picks = [rr.select(workers, RequestInfo("m", "/")).url for _ in range(6)]
    assert picks == [w.url for w in workers] * 2
    rnd = make_policy("random", PolicyConfig(seed=1))
    assert {rnd.select(workers, RequestInfo("m", "/")).url for _ in range(60)} == {w.url for w in workers}


def test_request_id_header_validation() -> None:
    def scope(*headers: tuple[bytes, bytes]) -> dict:
        return {"headers": list(headers), "path": "/v1/completions"}

    names = (b"x-request-id", b"x-correlation-id")
    assert request_id_for(scope((b"x-request-id", b"abc")), names) == "abc"
    assert request_id_for(scope((b"x-correlation-id", b"c"), (b"x-request-id", b"r")), names) == "r"
    assert request_id_for(scope((b"x-request-id", b"has space")), names).startswith("cmpl-")
    assert request_id_for(scope((b"x-request-id", b"x" * 129)), names).startswith("cmpl-")


def test_tokenize_is_whitespace() -> None:
    assert tokenize(" a  b\nc ") == ["a", "b", "c"]
