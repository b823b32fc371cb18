"""Fallback chains (issue 17 item 4): `--model-fallback gpt-sim=claude-sim,sim-engine` tries the
Anthropic provider, then the self-hosted engine, when the OpenAI provider cannot answer, and the
answer names the step. A provider's Retry-After keeps it out of the choice for that long, so the
requests after a 429 go straight to the fallback. No fallback starts once a stream has begun."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from tests.helpers import Proc, start_gateway, start_sim, wait_until

OPENAI_KEY, ANTHROPIC_KEY = "sk-fallback-openai", "sk-fallback-anthropic"
ENGINE, GPT, CLAUDE = "sim-engine", "gpt-sim", "claude-sim"
FAST = ("--ttft-ms", "0", "--tpot-ms", "0")
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, Proc]]:
    procs = {
        ENGINE: start_sim(1, "--model", ENGINE, *FAST),
        GPT: start_sim(1, "--model", GPT, "--hosted-key", OPENAI_KEY, *FAST),
        CLAUDE: start_sim(1, "--model", CLAUDE, "--hosted-key", ANTHROPIC_KEY, "--hosted-api", "anthropic", *FAST),
    }
    yield procs
    for proc in procs.values():
        proc.stop()


def start(sims: dict[str, Proc], *flags: str) -> Proc:
    gateway = start_gateway([sims[ENGINE].url], "--policy", "round_robin", "--retry-max-retries", "1", *flags)
    for model, key in ((GPT, OPENAI_KEY), (CLAUDE, ANTHROPIC_KEY)):
        body = {"url": sims[model].url, "runtime_type": "external", "api_key": key}
        body |= {"provider": "anthropic"} if model == CLAUDE else {}
        assert httpx.post(gateway.url + "/workers", json=body).status_code == 202
    wait_until(lambda: len(httpx.get(gateway.url + "/v1/models").json()["data"]) == 3, "three pools ready")
    return gateway


@pytest.fixture
def gateway(sims: dict[str, Proc]) -> Iterator[Proc]:
    proc = start(sims, "--model-fallback", f"{GPT}={CLAUDE},{ENGINE}")
    yield proc
    proc.stop()
    for sim in sims.values():
        httpx.post(sim.url + "/sim/config", json={"fail_rate": 0.0, "die_mid_stream_rate": 0.0, "fail_retry_after": 0})


def served(sim: Proc) -> int:
    return int(httpx.get(sim.url + "/sim/stats").json()["requests"])


def fail(sim: Proc, status: int, retry_after: int = 0) -> None:
    body = {"fail_rate": 1.0, "fail_status": status, "fail_retry_after": retry_after}
    assert httpx.post(sim.url + "/sim/config", json=body).status_code == 200


def test_the_primary_answers_while_it_can(gateway: Proc, sims: dict[str, Proc]) -> None:
    response = httpx.post(gateway.url + "/v1/chat/completions", json={"model": GPT, **CHAT})
    assert response.status_code == 200 and response.headers["x-smg-routed-worker-id"] == sims[GPT].url
    assert "x-smg-fallback-step" not in response.headers


def test_a_429_with_retry_after_falls_back_and_keeps_the_primary_out_that_long(gateway: Proc, sims: dict[str, Proc]) -> None:
    fail(sims[GPT], 429, retry_after=30)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model=GPT, **CHAT)  # type: ignore[call-overload]
    assert raw.headers["x-smg-fallback-step"] == "1" and raw.headers["x-smg-fallback-model"] == CLAUDE
    assert raw.headers["x-smg-routed-worker-id"] == sims[CLAUDE].url
    assert raw.parse().model == CLAUDE  # the answer names the model that ran
    asked = served(sims[GPT])
    for _ in range(3):
        again = httpx.post(gateway.url + "/v1/chat/completions", json={"model": GPT, **CHAT})
        assert again.status_code == 200 and again.headers["x-smg-fallback-model"] == CLAUDE
    assert served(sims[GPT]) == asked  # the primary asked for 30 s: it was not asked again
    metrics = httpx.get(gateway.metrics_url + "/metrics").text
    assert f'smg_router_fallbacks_total{{fallback="{CLAUDE}",model="{GPT}",reason="upstream_error"}} 1.0' in metrics
    assert f'smg_router_fallbacks_total{{fallback="{CLAUDE}",model="{GPT}",reason="rate_limit_exceeded"}} 3.0' in metrics


def test_the_chain_goes_on_to_the_next_step_and_the_last_error_keeps_its_retry_after(
    gateway: Proc, sims: dict[str, Proc]
) -> None:
    fail(sims[GPT], 503)
    fail(sims[CLAUDE], 503)  # Anthropic's 529, a 503 to OpenAI clients
    response = httpx.post(gateway.url + "/v1/chat/completions", json={"model": GPT, **CHAT})
    assert response.status_code == 200, response.text
    assert response.headers["x-smg-fallback-step"] == "2" and response.headers["x-smg-routed-worker-id"] == sims[ENGINE].url
    fail(sims[ENGINE], 429, retry_after=9)
    last = httpx.post(gateway.url + "/v1/chat/completions", json={"model": GPT, **CHAT})
    assert last.status_code == 429 and last.headers["retry-after"] == "9", last.text
    assert last.headers["x-smg-fallback-step"] == "2"


def test_a_stream_that_began_is_never_sent_to_a_fallback(gateway: Proc, sims: dict[str, Proc]) -> None:
    assert httpx.post(sims[GPT].url + "/sim/config", json={"die_mid_stream_rate": 1.0}).status_code == 200
    fallbacks = served(sims[CLAUDE]), served(sims[ENGINE])
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json={"model": GPT, "stream": True, **CHAT}) as stream:
        body = b"".join(stream.iter_bytes())
        assert stream.status_code == 200 and "x-smg-fallback-step" not in stream.headers
    assert b'"error"' in body and b"upstream_stream_error" in body
    assert (served(sims[CLAUDE]), served(sims[ENGINE])) == fallbacks  # neither fallback was asked


def test_a_messages_client_falls_back_through_the_translation(gateway: Proc, sims: dict[str, Proc]) -> None:
    fail(sims[GPT], 500)
    client = anthropic.Anthropic(base_url=gateway.url, api_key="k", max_retries=0)
    raw = client.messages.with_raw_response.create(model=GPT, max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-smg-fallback-model"] == CLAUDE and raw.parse().content[0].type == "text"


def test_fallback_timing_when_the_primary_goes_down(sims: dict[str, Proc]) -> None:
    """Primary down (its provider unreachable) -> the first fallback answer, then the steady
    state once its breaker opened: printed for the issue note, not asserted against a clock."""
    dead = start_sim(1, "--model", "gpt-doomed", "--hosted-key", OPENAI_KEY, *FAST)
    gateway = start(sims, "--model-fallback", f"gpt-doomed={CLAUDE}", "--cb-failure-threshold", "2")
    try:
        body = {"url": dead.url, "runtime_type": "external", "api_key": OPENAI_KEY}
        assert httpx.post(gateway.url + "/workers", json=body).status_code == 202
        wait_until(lambda: "gpt-doomed" in httpx.get(gateway.url + "/v1/models").text, "the primary ready")
        dead.stop()
        with httpx.Client(base_url=gateway.url) as client:
            direct = []
            for _ in range(3):
                began = time.perf_counter()
                assert client.post("/v1/chat/completions", json={"model": CLAUDE, **CHAT}).status_code == 200
                direct.append(time.perf_counter() - began)
            timings = []
            for _ in range(4):
                began = time.perf_counter()
                response = client.post("/v1/chat/completions", json={"model": "gpt-doomed", **CHAT})
                timings.append(time.perf_counter() - began)
                assert response.status_code == 200 and response.headers["x-smg-fallback-model"] == CLAUDE, response.text
        shown = ", ".join(f"{t * 1000:.1f} ms" for t in timings)
        print(f"\nprimary down -> fallback answer: {shown} (the fallback asked directly: {min(direct) * 1000:.1f} ms)")
    finally:
        gateway.stop()
