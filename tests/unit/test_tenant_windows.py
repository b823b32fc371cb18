"""Tenant windows in-process: exact boundaries, the minute edge, the sliding estimate, pending room, charges.

`TenantRateLimiter` takes wall-clock `now` values, so each test passes the instants it means,
to the millisecond, instead of waiting for them. What `tests/e2e/test_tenant_limits.py` already
checks (parsing, a basic refusal and its Retry-After, shares, replicas, escrow under replication
lag, the split for a limit smaller than the members) is not repeated here. The charges are checked
through `dispatch.dispatch` too, whose clock is replaced, since the order there (prompt estimate
at admission, completion tokens after the answer, in the window the answer ended) is the contract.
"""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace
from typing import Any

import pytest

from smg.dataplane import dispatch
from smg.dataplane.usage import Usage, usage_in
from smg.http.errors import GatewayError
from smg.http.exchange import Exchange
from smg.limits.admission import Admission
from smg.limits.tenants import Limit, TenantLimits, TenantRateLimiter
from smg.observability.metrics import GatewayMetrics

T0 = 1_800_000_000.0  # the start of a window (divisible by 60)
E = int(T0 // 60)  # its epoch
REQ, TOK = "t/requests_per_minute", "t/tokens_per_minute"


def limiter(rpm: int | None = None, tpm: int | None = None) -> TenantRateLimiter:
    return TenantRateLimiter(TenantLimits(Limit(requests_per_minute=rpm, tokens_per_minute=tpm)))


def member(limit: Limit, rank: int, members: int) -> tuple[TenantRateLimiter, list[int]]:
    """One of `members` nodes whose counts no peer has acknowledged until `confirmed[0]` moves."""
    node = TenantRateLimiter(TenantLimits(limit), f"n{rank}")
    confirmed = [-1]
    node.on_delta = lambda delta: None  # replicated (sequence() stays 0: acknowledged once confirmed >= 0)
    node.confirmed = lambda: confirmed[0]
    node.admitters = lambda: (members, rank)
    return node, confirmed


def fill(node: TenantRateLimiter, now: float, prompt: int = 0) -> int:
    """Admit at `now` until refused; how many got in."""
    admitted = 0
    while node.admit("t", prompt, now) is None:
        admitted += 1
        assert admitted < 1000
    return admitted


def test_a_token_limit_admits_a_prompt_that_fills_it_exactly_and_refuses_one_token_more() -> None:
    node = limiter(tpm=100)
    assert node.admit("t", 60, T0) is None
    refusal = node.admit("t", 41, T0 + 1)
    assert refusal is not None and (refusal.kind, refusal.limit, refusal.used) == ("tokens_per_minute", 100, 60)
    assert node.admit("t", 40, T0 + 1) is None  # 60 + 40 == 100: at the limit is within it
    assert node.used("t", "tokens_per_minute", T0 + 1) == 100
    assert node.admit("t", 1, T0 + 2) is not None


def test_a_refused_request_counts_nothing_against_either_limit() -> None:
    """Both limits are checked before either is counted: a request refused on tokens does not use
    up a request, nor one refused on requests any tokens."""
    node = limiter(rpm=3, tpm=100)
    assert node.admit("t", 90, T0) is None
    assert node.admit("t", 20, T0).kind == "tokens_per_minute"  # type: ignore[union-attr]
    assert node.counter.total(REQ, E) == 1 and node.counter.total(TOK, E) == 90
    assert node.admit("t", 5, T0) is None and node.admit("t", 5, T0) is None  # the refused one left room for two
    refusal = node.admit("t", 0, T0)
    assert refusal is not None and refusal.kind == "requests_per_minute"
    assert node.counter.total(REQ, E) == 3 and node.counter.total(TOK, E) == 100


def test_a_new_window_starts_at_the_minute_edge() -> None:
    node = limiter(rpm=10)
    assert node.admit("t", 0, T0 + 59.999) is None
    assert node.admit("t", 0, T0 + 60.0) is None
    assert node.counter.total(REQ, E) == 1 and node.counter.total(REQ, E + 1) == 1
    assert node.used("t", "requests_per_minute", T0 + 60.0) == 2  # at the edge the previous window weighs whole
    for _ in range(8):
        assert node.admit("t", 0, T0 + 60.0) is None
    assert node.admit("t", 0, T0 + 119.999) is not None  # 9 + 1 x (a millisecond's weight) > 10 - 1
    assert node.used("t", "requests_per_minute", T0 + 120.0) == 9  # window E is two windows old: it weighs nothing
    assert node.admit("t", 0, T0 + 120.0) is None and node.counter.total(REQ, E + 2) == 1
    assert node.counter.total(REQ, E) == 0  # and is no longer kept


def test_the_sliding_estimate_frees_a_request_at_the_exact_fraction() -> None:
    """4 requests in window E weigh 4 x (1 - f) in window E+1: one more of a limit of 4 fits from
    f = 0.25 on (T0 + 75 s), not a millisecond before."""
    node = limiter(rpm=4)
    for i in range(4):
        assert node.admit("t", 0, T0 + i) is None
    assert [node.used("t", "requests_per_minute", T0 + 60 + s) for s in (0, 15, 30, 45)] == [4, 3, 2, 1]
    assert node.admit("t", 0, T0 + 74.999) is not None
    assert node.admit("t", 0, T0 + 75) is None
    assert node.used("t", "requests_per_minute", T0 + 75) == 4
    assert node.admit("t", 0, T0 + 89.999) is not None  # the one admitted counts whole in its window
    assert node.admit("t", 0, T0 + 90) is None  # 1 + 4 x 0.5 + 1


@pytest.mark.parametrize(
    ("rpm", "tpm", "previous", "current", "at", "prompt"),
    [
        (10, None, {REQ: 10}, {REQ: 4}, 20.0, 0),  # room comes as the previous window slides out (10 s)
        (None, 100, {TOK: 80}, {TOK: 10}, 5.0, 40),  # tokens: the previous 80 must weigh 50 or less
        (None, 100, {}, {TOK: 90}, 5.0, 50),  # more than the room in this window: into the next one
        (5, 200, {REQ: 5}, {REQ: 1, TOK: 100}, 12.5, 10),  # both limits: the requests are the tighter
    ],
)
def test_retry_after_is_the_shortest_wait_that_admits(
    rpm: int | None, tpm: int | None, previous: dict[str, int], current: dict[str, int], at: float, prompt: int
) -> None:
    node = limiter(rpm, tpm)
    for epoch, counts in ((E, previous), (E + 1, current)):
        for key, count in counts.items():
            node.counter.increment(key, node.replica, epoch, count)
    now = T0 + 60 + at
    refusal = node.admit("t", prompt, now)
    assert refusal is not None
    assert copy.deepcopy(node).admit("t", prompt, now + refusal.retry_after) is None
    if refusal.retry_after > 1:
        assert copy.deepcopy(node).admit("t", prompt, now + refusal.retry_after - 1) is not None


def test_completion_tokens_are_charged_in_the_window_the_answer_ended() -> None:
    node = TenantRateLimiter(TenantLimits(Limit(tokens_per_minute=100), {"free": Limit(requests_per_minute=5)}))
    assert node.admit("t", 20, T0 + 59) is None
    node.charge_tokens("t", 50, T0 + 61)  # a long answer: it ended in the next window
    assert node.counter.total(TOK, E) == 20 and node.counter.total(TOK, E + 1) == 50
    assert node.used("t", "tokens_per_minute", T0 + 61) == pytest.approx(50 + 20 * (59 / 60))
    node.charge_tokens("t", 0, T0 + 61)
    node.charge_tokens("free", 500, T0 + 61)  # no token limit: nothing to count
    assert node.counter.total(TOK, E + 1) == 50 and "free/tokens_per_minute" not in node.counter.keys
    assert node.admit("t", 35, T0 + 61).kind == "tokens_per_minute"  # type: ignore[union-attr]


# -- the same through dispatch, with its clock replaced --------------------------------------


class Scenario:
    """A limiter behind `dispatch.dispatch`, a stub answer, and a wall clock the test moves."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, limit: Limit) -> None:
        self.now = T0
        self.limiter = TenantRateLimiter(TenantLimits(Limit(), {"acme": limit}))
        self.metrics = GatewayMetrics()
        self.ctx: Any = SimpleNamespace(
            limiter=self.limiter,
            metrics=self.metrics,
            admission=Admission(None, queue_size=0, queue_timeout=1.0),
            config=SimpleNamespace(model_alias=()),
            canonical_model=lambda model: None,  # no aliases
        )
        self.answers: list[dict[str, Any]] = []
        self.answer: Any = None  # what the stub answer does: (exchange, request, body) -> None
        monkeypatch.setattr(dispatch, "time", SimpleNamespace(time=lambda: self.now))

        async def proxy(ctx: Any, ex: Exchange, route: Any, request: dict[str, Any], body: bytes) -> None:
            self.answers.append(json.loads(body))
            self.answer(ex, request, body)

        monkeypatch.setattr(dispatch, "proxy", proxy)

    async def send(self, request: dict[str, Any], route: str = "/v1/completions") -> Exchange:
        ex = Exchange({"type": "http", "headers": []}, None, None, "req-1", route)  # type: ignore[arg-type]
        ex.tenant, ex.model = "acme", "m"
        await dispatch.dispatch(self.ctx, ex, SimpleNamespace(name="completions"), request, json.dumps(request).encode())  # type: ignore[arg-type]
        return ex


async def test_dispatch_counts_the_prompt_estimate_first_and_the_completion_after_the_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scenario = Scenario(monkeypatch, Limit(requests_per_minute=10, tokens_per_minute=1000))
    scenario.now = T0 + 59.5
    counted_during_the_answer = []

    def answer(ex: Exchange, request: dict[str, Any], body: bytes) -> None:
        counted_during_the_answer.append(scenario.limiter.counter.total("acme/tokens_per_minute", E))
        scenario.now = T0 + 61  # the answer ends in the next window
        ex.completion_tokens = 30

    scenario.answer = answer
    ex = await scenario.send({"model": "m", "prompt": "x" * 40, "stream": True})
    assert counted_during_the_answer == [11]  # 40 characters: 40 // 4 + 1 tokens, counted at admission
    assert scenario.limiter.counter.total("acme/tokens_per_minute", E + 1) == 30  # charged at the end, where it ended
    assert scenario.limiter.counter.total("acme/requests_per_minute", E) == 1
    assert ex.want_usage and scenario.answers[0]["stream_options"] == {"include_usage": True}  # so a stream reports them


async def test_a_stream_asking_for_no_usage_reports_it_anyway_but_a_messages_stream_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`include_usage: false` would let a stream's tokens go uncounted; a Messages stream always
    counts them (`message_delta`), and Anthropic refuses a field it does not know."""
    scenario = Scenario(monkeypatch, Limit(tokens_per_minute=1000))
    scenario.answer = lambda ex, request, body: None
    await scenario.send({"model": "m", "prompt": "x", "stream": True, "stream_options": {"include_usage": False}})
    assert scenario.answers[-1]["stream_options"] == {"include_usage": True}
    await scenario.send({"model": "m", "max_tokens": 3, "messages": [], "stream": True}, route="/v1/messages")
    assert "stream_options" not in scenario.answers[-1]


def test_usage_is_read_from_either_apis_answers_without_parsing_them() -> None:
    assert usage_in(b'{"usage": {"prompt_tokens": 3, "completion_tokens": 7}}') == Usage(3, 7, 0)
    # Anthropic counts cached prompt tokens apart; OpenAI's count includes them
    message = b'{"type": "message", "usage": {"input_tokens": 3, "cache_read_input_tokens": 10, "output_tokens": 9}}'
    assert usage_in(message) == Usage(13, 9, 10)
    delta = b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":5}}\n\n'
    assert usage_in(delta) == Usage(0, 5, 0)
    start = b'event: message_start\ndata: {"message":{"usage":{"input_tokens":4,"output_tokens":1}}}\n\n'
    assert usage_in(delta).merged(usage_in(start)) == Usage(4, 5, 0)  # type: ignore[union-attr]
    # the last usage object counts; a "usage" a model wrote, or a null one, does not
    chunk = b'data: {"choices":[{"delta":{"content":"the \\"usage\\": {} of it"}}],"usage":null}\n\n'
    tail = (
        b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":1}}}\n\n'
    )
    assert usage_in(tail + chunk) == Usage(2, 4, 1)
    assert usage_in(chunk) is None and usage_in(b"data: [DONE]\n\n") is None
    embedding = b'{"data":[{"embedding":[' + b"0.1," * 100_000 + b'0.1]}],"usage":{"prompt_tokens":8,"total_tokens":8}}'
    assert usage_in(embedding) == Usage(8, 0, 0)


async def test_dispatch_charges_a_failed_answer_and_nothing_for_a_refused_request(monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = Scenario(monkeypatch, Limit(tokens_per_minute=100))

    def fail_after_usage(ex: Exchange, request: dict[str, Any], body: bytes) -> None:
        ex.completion_tokens = 70  # the stream reported its usage, then broke
        raise RuntimeError("stream cut")

    scenario.answer = fail_after_usage
    with pytest.raises(RuntimeError):
        await scenario.send({"model": "m", "prompt": "y" * 20})  # 6 tokens estimated
    assert scenario.limiter.used("acme", "tokens_per_minute", T0) == 76
    with pytest.raises(GatewayError) as caught:
        await scenario.send({"model": "m", "prompt": "z" * 100})  # 26 more would be 102
    assert caught.value.status == 429 and caught.value.code == "rate_limit_exceeded"
    assert dict(caught.value.headers)[b"retry-after"] == b"62"  # in the next window, once 76 x (1 - g) <= 74
    assert len(scenario.answers) == 1 and scenario.limiter.used("acme", "tokens_per_minute", T0) == 76
    assert scenario.metrics.registry.get_sample_value("smg_http_rate_limit_total", {"result": "tenant_limited"}) == 1


# -- several members: pending and acknowledged room ------------------------------------------


def test_pending_counts_of_the_previous_window_weigh_by_what_is_left_of_it() -> None:
    """Unacknowledged counts of the previous window still take up this node's part, weighted like
    any count of that window; once acknowledged, only the split of the room remains."""
    node, confirmed = member(Limit(requests_per_minute=10), rank=0, members=2)
    assert fill(node, T0) == 5  # room 10, two members: 5 each
    assert node.pending("t") == 5
    # half into the next window: 5 pending weigh 2.5 of our part of 5, so 2 more (3.5, 4.5)
    assert fill(node, T0 + 90) == 2
    assert node.pending("t") == 7
    confirmed[0] = 0  # every peer has them now
    assert node.pending("t") == 0
    # the node sees 4.5 of 10 used: the room of 5.5 is split again as each unit goes (2, 1, 1; the last is the peer's)
    assert fill(node, T0 + 90) == 4
    assert node.used("t", "requests_per_minute", T0 + 90) == 8.5


def test_the_odd_units_turn_by_one_member_each_window() -> None:
    """A limit of 5 over 3 members who see none of each other's counts: 2, 2 and 1, the short part
    passing from rank to rank - 1 each window, so the cluster admits exactly the limit per window
    and each member the same over three windows."""
    parts = {}
    for epoch in range(E, E + 3):
        for rank in range(3):
            node, _ = member(Limit(requests_per_minute=5), rank, 3)
            parts[epoch, rank] = fill(node, epoch * 60.0 + 1)
    for epoch in range(E, E + 3):
        assert sum(parts[epoch, rank] for rank in range(3)) == 5
        short = [rank for rank in range(3) if parts[epoch, rank] == 1]
        assert short == [(2 - epoch) % 3]  # turn (rank + epoch) % 3 == 2: past the two odd units
    assert [sum(parts[epoch, rank] for epoch in range(E, E + 3)) for rank in range(3)] == [5, 5, 5]
