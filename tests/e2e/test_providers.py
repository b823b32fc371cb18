"""Hosted OpenAI-compatible providers as workers (`--backend openai`, issue 17 stage 1), against the
simulated worker impersonating one (`--hosted-key`: the key required, no /health), with the
official `openai` client. No test reaches the internet."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from smg.cluster.worker_store import record_of
from smg.workers.registry import Worker
from tests.helpers import Proc, start_gateway, start_sim, wait_until

KEY = "sk-provider-test-0123456789"


@pytest.fixture(scope="module")
def provider() -> Iterator[Proc]:
    sim = start_sim(1, "--hosted-key", KEY, "--owned-by", "openai", "--ttft-ms", "0", "--tpot-ms", "0")
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def gateway(provider: Proc) -> Iterator[Proc]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", KEY)
        proc = start_gateway(provider.urls, "--backend", "openai")
    yield proc
    proc.stop()


def test_a_provider_serves_every_openai_api_with_the_gateways_key(gateway: Proc, provider: Proc) -> None:
    # the provider answers /health with 404: the gateway became ready from its model list alone
    assert httpx.get(provider.url + "/health", headers={"authorization": f"Bearer {KEY}"}).status_code == 404
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="the-clients-own-key", max_retries=0)
    assert "sim-model" in [m.id for m in client.models.list()]
    chat = client.chat.completions.create(model="sim-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert chat.choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "stream"}], max_tokens=4, stream=True
        )
    )
    assert chunks and chunks[-1].choices[0].finish_reason is not None
    assert client.completions.create(model="sim-model", prompt="once upon", max_tokens=3).choices[0].text
    assert len(client.embeddings.create(model="sim-model", input="embed me").data[0].embedding) > 0
    # the provider got the gateway's key (it answers 401 to any other), never the client's


def test_the_key_is_never_shown_and_the_worker_is_external(gateway: Proc) -> None:
    workers = httpx.get(gateway.url + "/workers").json()["workers"]
    assert [w["runtime_type"] for w in workers] == ["external"]
    assert workers[0]["is_healthy"]
    assert KEY not in httpx.get(gateway.url + "/workers").text
    assert KEY not in httpx.get(gateway.metrics_url + "/metrics").text
    assert KEY not in gateway.log()
    # no engine endpoint is asked of a provider: loads and cache flushes leave it out
    assert httpx.get(gateway.url + "/get_loads").status_code == 200
    assert httpx.post(gateway.url + "/flush_cache").status_code == 200


def test_a_refused_key_is_a_502_about_the_gateways_key_not_the_clients(provider: Proc) -> None:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", KEY)
        gateway = start_gateway(provider.urls, "--backend", "openai", "--retry-max-retries", "1")
    try:
        assert httpx.post(provider.url + "/sim/config", json={"hosted_key": "sk-rotated"}).status_code == 200
        response = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        )
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["code"] == "upstream_auth_error" and "refused the gateway's API key" in error["message"]
    finally:
        httpx.post(provider.url + "/sim/config", json={"hosted_key": KEY})
        gateway.stop()


def test_a_provider_that_refuses_the_key_at_start_says_so(provider: Proc) -> None:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", "sk-wrong")
        gateway = start_gateway(provider.urls, "--backend", "openai", ready=False)
    try:
        wait_until(
            lambda: "refused the gateway's key" in (httpx.get(gateway.url + "/workers").json()["workers"][0]["last_error"] or ""),
            "the worker's error names the key",
        )
        assert httpx.get(gateway.url + "/readiness").status_code == 503
    finally:
        gateway.stop()


@pytest.mark.parametrize(
    ("urls", "environment", "said"),
    [
        (["https://api.openai.com"], {}, "OPENAI_API_KEY"),
        (["https://api.anthropic.com"], {}, "ANTHROPIC_API_KEY"),  # its host's API and key, as with the reference
        (["https://api.x.ai"], {}, "XAI_API_KEY"),
        (["https://api.openai.com"], {"OPENAI_API_KEY": "sk-a b"}, "characters an HTTP header cannot carry"),
        (["http://api.example.com"], {"OPENAI_API_KEY": KEY}, "is not https://"),
        (["api.example.com"], {"OPENAI_API_KEY": KEY}, "is not https://"),
        (["https://api.openai.com", "https://api.together.xyz"], {"OPENAI_API_KEY": KEY}, "would go to 2 hosts"),
    ],
)
def test_a_key_that_is_missing_or_would_leak_is_a_one_line_start_error(
    urls: list[str], environment: dict[str, str], said: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "XAI_API_KEY", "ANTHROPIC_API_KEY")} | environment
    done = subprocess.run(
        [sys.executable, "-m", "smg", "launch", "--backend", "openai", "--worker-urls", *urls],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0] and lines[0].startswith("smg: error:"), done.stderr
    assert KEY not in done.stderr


def test_a_providers_key_stays_on_its_node_and_survives_a_change_without_one(gateway: Proc) -> None:
    worker = Worker.from_url("https://api.openai.com", provider="openai", api_key=KEY)
    assert record_of(worker)["api_key"] is None and record_of(worker)["provider"] == "openai"  # not replicated
    assert KEY not in repr(worker)
    worker_id = httpx.get(gateway.url + "/workers").json()["workers"][0]["id"]
    patched = httpx.patch(f"{gateway.url}/workers/{worker_id}", json={"api_key": None, "priority": 10})
    assert patched.status_code == 200 and patched.json()["priority"] == 10
    chat = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "sim-model", "messages": [{"role": "user", "content": "still mine"}], "max_tokens": 2},
    )
    assert chat.status_code == 200, chat.text  # the provider still gets the key it was started with


ANTHROPIC_KEY = "sk-ant-test-89abcdef"


@pytest.fixture(scope="module")
def claude() -> Iterator[Proc]:
    sim = start_sim(1, "--hosted-key", ANTHROPIC_KEY, "--hosted-api", "anthropic", "--ttft-ms", "0", "--tpot-ms", "0")
    yield sim
    sim.stop()


def test_backend_anthropic_serves_messages_natively_and_chat_translated(claude: Proc) -> None:
    """`smg launch --backend anthropic`: the Anthropic client's requests go through as they are
    (its anthropic-version too); the OpenAI client's are translated; the key is Anthropic's header."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        gateway = start_gateway(claude.urls, "--backend", "anthropic")
    try:
        ant = anthropic.Anthropic(base_url=gateway.url, api_key="the-clients-own-key", max_retries=0)
        message = ant.messages.create(model="sim-model", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
        assert message.content[0].type == "text" and message.stop_reason == "max_tokens"
        sent = httpx.get(claude.url + "/sim/requests").json()["requests"][-1]
        assert sent["path"] == "/v1/messages" and sent["body"] == {
            "model": "sim-model",
            "max_tokens": 3,
            "messages": [{"role": "user", "content": "hi"}],
        }
        chat = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "hi"}]
        )
        assert chat.choices[0].finish_reason == "stop" and chat.object == "chat.completion"
        assert httpx.get(gateway.url + "/workers").json()["workers"][0]["runtime_type"] == "external"
        # a rotated key: the gateway's key was refused, in each client's shape
        assert httpx.post(claude.url + "/sim/config", json={"hosted_key": "sk-ant-rotated"}).status_code == 200
        with pytest.raises(anthropic.InternalServerError) as refused:
            ant.messages.create(model="sim-model", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
        assert refused.value.status_code == 502 and "refused the gateway's API key" in refused.value.message
        assert refused.value.body["error"]["type"] == "api_error"  # type: ignore[index]
        with pytest.raises(openai.InternalServerError) as translated:
            openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
                model="sim-model", messages=[{"role": "user", "content": "hi"}]
            )
        assert translated.value.code == "upstream_auth_error"
        assert ANTHROPIC_KEY not in gateway.log()
    finally:
        httpx.post(claude.url + "/sim/config", json={"hosted_key": ANTHROPIC_KEY})
        gateway.stop()
