"""smg as the full server for gRPC workers (issue 16): a gateway given only `grpc://` URLs of
`smg sim-worker --grpc` registers them (engine, model, labels), fetches the tokenizer with
GetTokenizer into its cache, waits for it in /readiness, and serves the OpenAI API through the
official client: chat (streamed and not, n=2, stop strings, tool calls, reasoning), completions,
/generate, embeddings, the Anthropic Messages API on top, and the control plane (flush, loads).
Failures: a worker that dies is retried elsewhere; a client that leaves mid-stream makes the
engine drop the request (Abort)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.helpers import Proc, start_gateway, start_mesh_cluster, start_sim, wait_until

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "the weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def workers() -> Iterator[Proc]:
    sim = start_sim(2, "--grpc", "--ttft-ms", "0", "--tpot-ms", "1", "--reasoning")
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def gateway(workers: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    cache = tmp_path_factory.mktemp("tokenizers")
    proc = start_gateway(
        workers.urls,
        "--tokenizer-cache-dir",
        str(cache),
        "--tool-call-parser",
        "qwen",
        "--reasoning-parser",
        "qwen3",
    )  # cache_aware: a prompt seen before goes back to its worker, so a seeded answer repeats
    proc.cache = cache  # type: ignore[attr-defined]
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(gateway: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def model_of(gateway: Proc) -> str:
    return str(httpx.get(gateway.url + "/v1/models").json()["data"][0]["id"])


def test_workers_register_as_grpc_engines_with_their_model_and_labels(gateway: Proc, workers: Proc) -> None:
    listed = httpx.get(gateway.url + "/workers").json()["workers"]
    assert sorted(w["url"] for w in listed) == sorted(workers.urls)
    for worker in listed:
        assert worker["connection_mode"] == "grpc"
        assert worker["runtime_type"] == "sglang"
        assert worker["is_healthy"] is True
        assert worker["models"] == [model_of(gateway)]
        assert worker["labels"].get("served_model_name") == worker["models"][0]  # from GetModelInfo
    cached = [p.name for p in Path(gateway.cache).iterdir()]  # type: ignore[attr-defined]
    assert len(cached) == 1 and (Path(gateway.cache) / cached[0] / "tokenizer.json").is_file()  # type: ignore[attr-defined]


def test_chat_is_templated_generated_detokenized_and_reasoning_split(client: openai.OpenAI, gateway: Proc) -> None:
    answer = client.chat.completions.create(model=model_of(gateway), messages=HELLO, max_tokens=200)  # type: ignore[arg-type]
    choice = answer.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content and "<think>" not in choice.message.content
    assert getattr(choice.message, "reasoning_content", None)  # the sim thinks first (--reasoning)
    assert answer.usage is not None and answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0


def test_a_stream_folds_to_the_same_text_as_the_answer(client: openai.OpenAI, gateway: Proc) -> None:
    model = model_of(gateway)
    whole = client.chat.completions.create(model=model, messages=HELLO, max_tokens=200, seed=1)  # type: ignore[arg-type]
    stream = client.chat.completions.create(
        model=model, messages=HELLO, max_tokens=200, seed=1, stream=True, stream_options={"include_usage": True}
    )  # type: ignore[call-overload]
    content, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(content) == whole.choices[0].message.content
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_tool_calls_are_parsed(client: openai.OpenAI, gateway: Proc) -> None:
    answer = client.chat.completions.create(
        model=model_of(gateway),
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[WEATHER],  # type: ignore[list-item]
        max_tokens=300,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city", "days"}


def test_n_choices_and_stop_strings(client: openai.OpenAI, gateway: Proc) -> None:
    model = model_of(gateway)
    answer = client.chat.completions.create(model=model, messages=HELLO, max_tokens=200, n=2)  # type: ignore[arg-type]
    assert sorted(c.index for c in answer.choices) == [0, 1]
    text = answer.choices[0].message.content or ""
    word = text.split()[1]
    stopped = client.chat.completions.create(model=model, messages=HELLO, max_tokens=200, stop=[word])  # type: ignore[arg-type]
    assert stopped.choices[0].finish_reason == "stop"
    assert word not in (stopped.choices[0].message.content or "")


def test_completions_generate_and_embeddings(client: openai.OpenAI, gateway: Proc) -> None:
    model = model_of(gateway)
    completion = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8)
    assert completion.choices[0].text and completion.usage.completion_tokens <= 8  # type: ignore[union-attr]
    generated = httpx.post(gateway.url + "/generate", json={"text": "Once upon a time", "sampling_params": {"max_new_tokens": 4}})
    assert generated.status_code == 200, generated.text
    assert generated.json()["meta_info"]["completion_tokens"] <= 4
    embedding = client.embeddings.create(model=model, input="a sentence")
    assert len(embedding.data[0].embedding) > 0


def test_messages_api_over_grpc_workers(gateway: Proc) -> None:
    claude = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    message = claude.messages.create(model=model_of(gateway), max_tokens=200, messages=[{"role": "user", "content": "hi"}])
    assert any(block.type == "text" and block.text for block in message.content)


def test_bad_requests_get_openai_errors(client: openai.OpenAI, gateway: Proc) -> None:
    model = model_of(gateway)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}],  # type: ignore[list-item]
        )
    assert caught.value.status_code == 400
    answer = httpx.post(gateway.url + "/v1/chat/completions", json={"model": model, "messages": HELLO, "temperature": "hot"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "temperature"
    assert httpx.get(gateway.url + "/health").status_code == 200


def test_control_plane_flush_and_loads(gateway: Proc) -> None:
    flushed = httpx.post(gateway.url + "/flush_cache")
    assert flushed.status_code == 200, flushed.text
    assert flushed.json()["total_grpc_workers"] == 2 and flushed.json()["workers_flushed"] == 2
    loads = httpx.get(gateway.url + "/get_loads").json()
    assert loads["successful"] == 2


def test_a_client_leaving_mid_stream_stops_the_engine(gateway: Proc) -> None:
    """20 s of generation at 1 ms a token; the engine must be idle again within the deadline
    once the client left (the RPC cancelled and Abort sent)."""
    model = model_of(gateway)
    body = {"model": model, "messages": HELLO, "max_tokens": 20000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=30) as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if line.startswith("data: {"):
                assert running(gateway) >= 1
                break  # leave after the first chunk

    wait_until(lambda: running(gateway) == 0, "the engine stopped generating", deadline=5.0)


def running(gateway: Proc) -> int:
    return int(httpx.get(gateway.url + "/get_loads").json()["aggregate"]["num_running_reqs"])


def test_a_failing_engine_is_retried_on_another_and_a_bad_status_is_answered(tmp_path: Path) -> None:
    """UNAVAILABLE (retryable, as the reference) moves the request to the healthy worker."""
    broken = start_sim(1, "--grpc", "--ttft-ms", "0", "--tpot-ms", "0", "--fail-rate", "1", "--fail-status", "503")
    healthy = start_sim(1, "--grpc", "--ttft-ms", "0", "--tpot-ms", "0")
    gateway = start_gateway(
        [broken.url, healthy.url],
        "--tokenizer-cache-dir",
        str(tmp_path),
        "--policy",
        "round_robin",
        "--cb-failure-threshold",
        "100",
    )
    try:
        model = model_of(gateway)
        for _ in range(4):
            answer = httpx.post(gateway.url + "/v1/chat/completions", json={"model": model, "messages": HELLO, "max_tokens": 4})
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-smg-routed-worker-id"] == healthy.url
    finally:
        gateway.stop()
        broken.stop()
        healthy.stop()


def test_vllm_engines_are_served_too(tmp_path: Path) -> None:
    sim = start_sim(1, "--grpc", "--grpc-engine", "vllm", "--ttft-ms", "0", "--tpot-ms", "0")
    gateway = start_gateway(sim.urls, "--tokenizer-cache-dir", str(tmp_path))
    try:
        worker = httpx.get(gateway.url + "/workers").json()["workers"][0]
        assert (worker["connection_mode"], worker["runtime_type"]) == ("grpc", "vllm")
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        model = model_of(gateway)
        answer = client.chat.completions.create(model=model, messages=HELLO, max_tokens=20)  # type: ignore[arg-type]
        assert answer.choices[0].message.content
        chunks = list(client.chat.completions.create(model=model, messages=HELLO, max_tokens=20, stream=True))  # type: ignore[call-overload]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finally:
        gateway.stop()
        sim.stop()


def test_a_non_retryable_status_is_the_clients_error_and_the_worker_stays_healthy(tmp_path: Path) -> None:
    sim = start_sim(1, "--grpc", "--ttft-ms", "0", "--tpot-ms", "0", "--fail-rate", "1", "--fail-status", "400")
    gateway = start_gateway(sim.urls, "--tokenizer-cache-dir", str(tmp_path), "--cb-failure-threshold", "2")
    try:
        model = model_of(gateway)
        for _ in range(3):
            answer = httpx.post(gateway.url + "/v1/chat/completions", json={"model": model, "messages": HELLO})
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["code"] == "upstream_invalid_argument"
        assert httpx.get(gateway.url + "/workers").json()["workers"][0]["circuit_breaker"] == "closed"
    finally:
        gateway.stop()
        sim.stop()


def test_a_stream_cut_by_the_engine_ends_with_a_stream_error_then_done(tmp_path: Path) -> None:
    """The reference's shape: `data: {"error": {..., "type": "stream_error"}}` then `[DONE]`."""
    sim = start_sim(1, "--grpc", "--ttft-ms", "0", "--tpot-ms", "1", "--die-mid-stream-rate", "1")
    gateway = start_gateway(sim.urls, "--tokenizer-cache-dir", str(tmp_path))
    try:
        body = {"model": model_of(gateway), "messages": HELLO, "max_tokens": 40, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=30) as answer:
            assert answer.status_code == 200
            events = [line[6:] for line in answer.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["type"] == "stream_error" and error["message"].startswith("Stream error:")
        assert httpx.get(gateway.url + "/health").status_code == 200
    finally:
        gateway.stop()
        sim.stop()


def test_out_of_range_values_and_base64_embeddings(gateway: Proc) -> None:
    model = model_of(gateway)
    for _ in range(3):  # a client's mistake: never the worker's breaker
        answer = httpx.post(
            gateway.url + "/v1/chat/completions", json={"model": model, "messages": HELLO, "max_tokens": 99999999999}
        )
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "max_tokens"
    assert all(w["circuit_breaker"] == "closed" for w in httpx.get(gateway.url + "/workers").json()["workers"])
    encoded = httpx.post(gateway.url + "/v1/embeddings", json={"model": model, "input": "x", "encoding_format": "base64"})
    assert encoded.status_code == 200 and isinstance(encoded.json()["data"][0]["embedding"], str)


def test_responses_api_over_grpc_workers_keeps_the_conversation(client: openai.OpenAI, gateway: Proc) -> None:
    model = model_of(gateway)
    first = client.responses.create(model=model, input="my name is Ada", max_output_tokens=200)
    assert first.output_text
    second = client.responses.create(model=model, input="what is my name?", previous_response_id=first.id, max_output_tokens=200)
    assert second.output_text and second.previous_response_id == first.id


def test_a_grpc_worker_added_on_one_gateway_serves_through_every_gateway_of_the_mesh(tmp_path: Path) -> None:
    """The replicated registry carries the URL; each gateway finds the engine, fetches the
    tokenizer into its own cache and serves."""
    sim = start_sim(1, "--grpc", "--ttft-ms", "0", "--tpot-ms", "0")
    nodes = start_mesh_cluster([sim.url], 2, "--tokenizer-cache-dir", str(tmp_path))
    try:
        for node in nodes:
            worker = httpx.get(node.url + "/workers").json()["workers"][0]
            assert worker["connection_mode"] == "grpc" and worker["is_healthy"]
            answer = httpx.post(
                node.url + "/v1/chat/completions", json={"model": model_of(node), "messages": HELLO, "max_tokens": 4}
            )
            assert answer.status_code == 200, answer.text
    finally:
        for node in nodes:
            node.stop()
        sim.stop()


def test_logprobs_come_back_in_openai_shapes(client: openai.OpenAI, gateway: Proc) -> None:
    model = model_of(gateway)
    answer = client.chat.completions.create(model=model, messages=HELLO, max_tokens=6, logprobs=True, top_logprobs=2)  # type: ignore[arg-type]
    content = answer.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and len(content) == answer.usage.completion_tokens  # type: ignore[union-attr]
    assert all(entry.logprob < 0 and len(entry.top_logprobs) == 2 for entry in content)
    assert "".join(entry.token for entry in content).startswith("<think>")  # the whole output: reasoning too
    streamed = []
    for chunk in client.chat.completions.create(
        model=model, messages=HELLO, max_tokens=6, logprobs=True, top_logprobs=1, stream=True
    ):  # type: ignore[call-overload]
        for choice in chunk.choices:
            if choice.logprobs and choice.logprobs.content:
                streamed += choice.logprobs.content
    assert len(streamed) == 6 and all(len(entry.top_logprobs) == 1 for entry in streamed)
    completion = client.completions.create(model=model, prompt="Once", max_tokens=4, logprobs=2)
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and len(logprobs.tokens) == 4 and len(logprobs.top_logprobs) == 4  # type: ignore[arg-type]


def test_cache_aware_routes_on_the_token_ids_the_engine_gets(client: openai.OpenAI, gateway: Proc) -> None:
    """The same prompt sent as text, then as its token ids plus more: the routing texts share
    nothing, the engine's ids share the whole first prompt, so cache_aware (on the engine's ids)
    sends the second where the first is cached, and the engine reports it cached."""
    from smg.simworker.grpc_model import load_shipped_tokenizer

    model = model_of(gateway)
    text = "the quick brown fox jumps over the lazy dog " * 40 + "and then"
    ids = load_shipped_tokenizer().encode(text)
    first = client.completions.with_raw_response.create(model=model, prompt=text, max_tokens=2)
    second = client.completions.with_raw_response.create(model=model, prompt=ids + ids[:10], max_tokens=2)
    assert second.headers["x-smg-routed-worker-id"] == first.headers["x-smg-routed-worker-id"]
    usage = second.parse().usage
    assert usage is not None and usage.prompt_tokens == len(ids) + 10
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens >= len(ids) - 16  # type: ignore[operator]
