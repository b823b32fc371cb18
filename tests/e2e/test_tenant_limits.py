"""Per-tenant rate limits: the sans-IO limiter, then one real gateway with the `openai` client."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from smg.crdt.windowed import WindowedCounter
from smg.limits.tenants import Limit, TenantLimits, TenantRateLimiter, retry_after
from tests.helpers import Proc, start_gateway

T0 = 1_800_000_000.0  # the start of a window (divisible by 60)


def test_config_parsing_names_what_is_wrong(tmp_path: Path) -> None:
    limits = TenantLimits.parse(
        {"default": {"requests_per_minute": 10}, "tenants": {"acme": {"requests_per_minute": 2, "tokens_per_minute": 100}}}
    )
    assert limits.for_tenant("acme") == Limit(2, 100) and limits.for_tenant("other") == Limit(10, None)
    assert limits.counts_tokens
    for bad, message in [
        ([], "expected an object"),
        ({"defaults": {}}, "expected an object"),
        ({"default": {"requests_per_minute": -1}}, "default.requests_per_minute must be a non-negative integer"),
        ({"tenants": {"a": {"rpm": 1}}}, "tenants.a: expected an object"),
        ({"tenants": []}, '"tenants" must map'),
    ]:
        with pytest.raises(ValueError, match=message):
            TenantLimits.parse(bad)
    yaml_file = tmp_path / "limits.yaml"
    yaml_file.write_text("default:\n  requests_per_minute: 7\n")
    assert TenantLimits.load(str(yaml_file)).default == Limit(7, None)
    broken = tmp_path / "limits.json"
    broken.write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        TenantLimits.load(str(broken))


def test_requests_are_refused_at_the_limit_and_the_window_slides() -> None:
    limiter = TenantRateLimiter(TenantLimits(Limit(requests_per_minute=4)))
    assert all(limiter.admit("t", 0, T0 + i) is None for i in range(4))
    refusal = limiter.admit("t", 0, T0 + 10)
    assert refusal is not None and refusal.kind == "requests_per_minute" and refusal.used == 4
    assert refusal.retry_after == 65  # 50 s to the next window, where the 4 weigh 4 x (1 - g) <= 3 from g = 0.25
    assert limiter.admit("other", 0, T0 + 10) is None  # every tenant has its own count
    # next window, a quarter in: the previous 4 still weigh 3, so one more fits
    assert limiter.admit("t", 0, T0 + 75) is None
    assert limiter.admit("t", 0, T0 + 75) is not None
    assert limiter.admit("t", 0, T0 + 120 + 59) is None  # two windows on, nothing weighs


def test_tokens_shares_and_replicas() -> None:
    limiter = TenantRateLimiter(TenantLimits(Limit(tokens_per_minute=100)))
    assert limiter.admit("t", 40, T0) is None
    limiter.charge_tokens("t", 50, T0 + 1)
    refusal = limiter.admit("t", 20, T0 + 2)
    assert refusal is not None and refusal.kind == "tokens_per_minute"
    assert limiter.admit("t", 10, T0 + 2) is None
    limiter.share = lambda: 0.5  # half the members unreachable: half the limit here
    small = TenantRateLimiter(TenantLimits(Limit(requests_per_minute=10)))
    small.share = lambda: 0.5
    assert [small.admit("t", 0, T0) is None for _ in range(6)] == [True] * 5 + [False]
    small.adopt_replica("node-a#1")
    assert small.counter.share("t/requests_per_minute", int(T0 // 60), "node-a#1") == 5
    deltas: list[WindowedCounter] = []
    small.on_delta = deltas.append
    small.share = lambda: 1.0
    assert small.admit("t", 0, T0) is None and len(deltas) == 1
    with pytest.raises(ValueError, match="clock far ahead"):
        ahead = WindowedCounter()
        ahead.increment("t/requests_per_minute", "evil#1", int(T0 // 60) + 5, 1)
        small.vet(ahead, int(T0 * 1000))
    assert retry_after(0, 10, 0.5, -1) == 90  # a request bigger than the whole limit


@pytest.fixture(scope="module")
def limited(sim: Proc, tmp_path_factory: pytest.TempPathFactory) -> Proc:
    config = tmp_path_factory.mktemp("limits") / "limits.json"
    config.write_text(
        json.dumps(
            {
                "default": {"requests_per_minute": 1000},
                "tenants": {"acme": {"requests_per_minute": 3}, "tok": {"tokens_per_minute": 120}},
            }
        )
    )
    gateway = start_gateway(
        sim.urls,
        "--tenant-api-key",
        "acme:acme-key",
        "--tenant-api-key",
        "tok:tok-key",
        "--tenant-rate-limit-config",
        str(config),
    )
    yield gateway
    gateway.stop()


def test_a_tenant_over_its_limit_gets_429_with_retry_after(limited: Proc) -> None:
    client = openai.OpenAI(base_url=limited.url + "/v1", api_key="acme-key", max_retries=0)
    for _ in range(3):
        client.chat.completions.create(model="sim-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="sim-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    response = caught.value.response
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(response.headers["retry-after"]) <= 120
    assert "acme" in response.json()["error"]["message"]


def test_completion_tokens_count_against_the_token_limit_streams_included(limited: Proc) -> None:
    client = openai.OpenAI(base_url=limited.url + "/v1", api_key="tok-key", max_retries=0)
    sent = 0
    with pytest.raises(openai.RateLimitError):
        for _ in range(20):
            stream = client.chat.completions.create(
                model="sim-model", messages=[{"role": "user", "content": "count me"}], max_tokens=30, stream=True
            )
            chunks = list(stream)
            assert chunks and chunks[-1].usage is not None  # asked for on the tenant's behalf
            sent += 1
    # each request costs ~4 prompt tokens estimated plus 30 completion tokens: 120 allow 3, not 20
    assert 2 <= sent <= 4
    assert httpx.get(limited.metrics_url + "/metrics").text.count('smg_http_rate_limit_total{result="tenant_limited"}') == 1


def test_bad_limit_configs_are_one_line_errors(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.json"
    bad.write_text('{"default": {"requests_per_minute": "ten"}}')
    for path, message in [(bad, "must be a non-negative integer"), (tmp_path / "missing.json", "cannot read")]:
        result = subprocess.run(
            [sys.executable, "-m", "smg", "--tenant-rate-limit-config", str(path)], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


def _cluster_run(lag: float, escrow: bool, nodes: int = 3, limit: int = 30, rate: float = 6.0, seconds: float = 60.0) -> int:
    """Three limiters whose counts reach each other `lag` seconds late (acks another `lag` later);
    requests at `rate` per second to the nodes in turn through one aligned minute. Returns admissions."""
    limiters = [TenantRateLimiter(TenantLimits(Limit(requests_per_minute=limit)), f"n{i}") for i in range(nodes)]
    in_flight: list[tuple[float, int, int, WindowedCounter]] = []  # (arrival, sender, seq, delta)
    acks: list[tuple[float, int, int, int]] = []  # (arrival, sender, peer, seq)
    seqs = [0] * nodes
    acked = [[0] * nodes for _ in range(nodes)]
    clock = [T0]

    for i, limiter in enumerate(limiters):

        def on_delta(delta: WindowedCounter, i: int = i) -> None:
            seqs[i] += 1
            in_flight.append((clock[0] + lag, i, seqs[i], delta.copy()))

        limiter.on_delta = on_delta
        if escrow:
            limiter.sequence = lambda i=i: seqs[i]
            limiter.confirmed = lambda i=i: min(acked[i][j] for j in range(nodes) if j != i)
            limiter.admitters = lambda i=i: (nodes, i)
    admitted = 0
    for n in range(int(seconds * rate)):
        clock[0] = T0 + n / rate
        for message in [m for m in in_flight if m[0] <= clock[0]]:
            in_flight.remove(message)
            _, sender, seq, delta = message
            for j, limiter in enumerate(limiters):
                if j != sender:
                    limiter.counter.merge(delta)
                    acks.append((clock[0] + lag, sender, j, seq))
        for ack in [a for a in acks if a[0] <= clock[0]]:
            acks.remove(ack)
            acked[ack[1]][ack[2]] = max(acked[ack[1]][ack[2]], ack[3])
        if limiters[n % nodes].admit("t", 0, clock[0]) is None:
            admitted += 1
    return admitted


def test_slow_replication_cannot_push_the_cluster_over_the_limit() -> None:
    """Counts that reach peers seconds late (TCP backing off under loss): each node keeps its
    unacknowledged admissions within an equal split of the room it sees, so the cluster stays exact."""
    assert _cluster_run(lag=2.0, escrow=False) > 30  # the defect: each node admits what the others just did
    for lag in (0.01, 0.5, 2.0, 5.0):
        assert _cluster_run(lag=lag, escrow=True) <= 30, lag
    assert _cluster_run(lag=0.01, escrow=True) == 30  # prompt acknowledgements: the whole limit is usable


def test_pending_counts_settle_when_peers_acknowledge() -> None:
    limiter = TenantRateLimiter(TenantLimits(Limit(requests_per_minute=100)), "a")
    seq = [0]
    confirmed = [0]

    def on_delta(delta: WindowedCounter) -> None:
        seq[0] += 1

    limiter.on_delta = on_delta
    limiter.sequence = lambda: seq[0]
    limiter.confirmed = lambda: confirmed[0]
    limiter.admitters = lambda: (2, 1)  # two alive members, this one second by name
    for i in range(5):
        assert limiter.admit("t", 0, T0 + i) is None
    assert limiter.pending("t") == 5
    confirmed[0] = 3
    assert limiter.pending("t") == 2
    limiter.counter.increment("t/requests_per_minute", "b", int(T0 // 60), 92)
    # seen 97 of 100, 2 of them ours and pending: room 100 - 95 = 5, our part 5 // 2 = 2: full
    refusal = limiter.admit("t", 0, T0 + 6)
    assert refusal is not None and refusal.retry_after == 1
    confirmed[0] = 5
    assert limiter.admit("t", 0, T0 + 7) is None  # acknowledged: room 3, our part 1 (the other node's 2)
    confirmed[0] = 6
    assert limiter.admit("t", 0, T0 + 8) is None  # room 2: one each
    confirmed[0] = 7
    refusal = limiter.admit("t", 0, T0 + 9)  # room 1: the other node's, first by name
    assert refusal is not None and limiter.pending("t") == 0


def test_the_split_starves_nobody() -> None:
    """A limit smaller than the members: the odd units turn round the members window by window;
    a prompt larger than a node's part of a token limit goes through when nothing of it is pending."""

    def node(limit: Limit, rank: int, members: int) -> TenantRateLimiter:
        limiter = TenantRateLimiter(TenantLimits(limit), f"n{rank}")
        limiter.on_delta = lambda delta: None  # replicated, and acknowledged at once
        limiter.admitters = lambda: (members, rank)
        return limiter

    admitted_in = {rank: [] for rank in range(3)}
    for rank in range(3):
        limiter = node(Limit(requests_per_minute=2), rank, 3)
        for window in range(3):
            now = T0 + 120 * window  # two windows apart: the previous one no longer weighs
            admitted_in[rank].append(limiter.admit("t", 0, now) is None)
    assert all(any(windows) for windows in admitted_in.values())  # every member gets a turn
    assert [sum(admitted_in[r][w] for r in range(3)) for w in range(3)] == [2, 2, 2]  # the limit, exactly
    tokens = node(Limit(tokens_per_minute=1000), 1, 2)
    tokens.confirmed = lambda: -1  # the peer acknowledges nothing for now
    assert tokens.admit("t", 600, T0) is None  # its part is 500, but nothing of it is pending
    assert tokens.pending("t", "tokens_per_minute") == 600
    assert tokens.admit("t", 300, T0 + 1) is not None  # now some is: the part holds
