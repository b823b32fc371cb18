"""The official `openai` client through a real gateway to real simulated workers."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.helpers import Proc


@pytest.fixture(scope="module")
def client(gateway: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def test_chat(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model="sim-model", messages=[{"role": "user", "content": "Hello!"}], max_tokens=5)
    assert response.object == "chat.completion"
    assert len(response.choices[0].message.content.split()) == 5
    assert response.usage.completion_tokens == 5


def test_chat_streaming(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="sim-model",
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert len("".join(pieces).split()) == 12
    assert usage is not None and usage.completion_tokens == 12


def test_completions_and_streaming(client: openai.OpenAI) -> None:
    response = client.completions.create(model="sim-model", prompt="Once upon a time", max_tokens=4)
    assert response.object == "text_completion"
    assert len(response.choices[0].text.split()) == 4
    text = "".join(
        c.choices[0].text for c in client.completions.create(model="sim-model", prompt="Hi", max_tokens=6, stream=True)
    )
    assert len(text.split()) == 6


def test_embeddings(client: openai.OpenAI) -> None:
    response = client.embeddings.create(model="sim-model", input=["alpha", "beta"])
    assert [d.index for d in response.data] == [0, 1]
    assert len(response.data[0].embedding) == 16
    assert response.data[0].embedding != response.data[1].embedding


def test_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["sim-model"]


def test_same_prompt_hits_the_prefix_cache(client: openai.OpenAI) -> None:
    prompt = " ".join(f"word{i}" for i in range(200))
    cached = []
    for _ in range(4):  # round robin: each of the two workers sees the prompt twice
        r = client.completions.create(model="sim-model", prompt=prompt, max_tokens=1)
        cached.append(r.usage.prompt_tokens_details.cached_tokens)
    assert cached[:2] == [0, 0]
    assert cached[2:] == [192, 192]  # 12 full blocks of 16 tokens


def test_round_robin_alternates_and_headers(gateway: Proc, sim: Proc) -> None:
    seen = []
    for i in range(4):
        r = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "sim-model", "messages": [{"role": "user", "content": "x"}]},
            headers={"x-request-id": f"my-id-{i}"},
        )
        assert r.status_code == 200
        assert r.headers["x-request-id"] == f"my-id-{i}"
        seen.append(r.headers["x-smg-routed-worker-id"])
    assert seen[0] != seen[1] and seen[0] == seen[2] and seen[1] == seen[3]
    assert set(seen) == set(sim.urls)


def test_generated_request_ids(gateway: Proc) -> None:
    chat = httpx.post(gateway.url + "/v1/chat/completions", json={"model": "sim-model", "messages": []})
    assert chat.headers["x-request-id"].startswith("chatcmpl-") and len(chat.headers["x-request-id"]) == 33
    gen = httpx.post(gateway.url + "/generate", json={"text": "hello there"})
    assert gen.status_code == 200 and gen.headers["x-request-id"].startswith("req-")
    assert gen.json()["meta_info"]["completion_tokens"] == 16
    corr = httpx.get(gateway.url + "/v1/models", headers={"x-correlation-id": "corr-1"})
    assert corr.headers["x-request-id"] == "corr-1"


def test_rerank_is_wrapped_and_cut_to_top_k(gateway: Proc) -> None:
    r = httpx.post(
        gateway.url + "/v1/rerank",
        json={"model": "sim-model", "query": "red fox", "documents": ["blue sky", "red fox jumps", "fox"], "top_k": 2},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "rerank" and body["model"] == "sim-model" and body["id"] == r.headers["x-request-id"]
    assert [x["index"] for x in body["results"]] == [1, 2]


def test_worker_errors_pass_through(gateway: Proc) -> None:
    r = httpx.post(gateway.url + "/v1/chat/completions", json={"model": "sim-model"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages"
