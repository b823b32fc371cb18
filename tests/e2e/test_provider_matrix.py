"""Every API over every backend (issue 17 item 2), and a mixed fleet (item 3): one gateway serves
a self-hosted engine, an OpenAI-compatible provider and an Anthropic provider at once, the model
name picking the pool. Each provider is the simulated worker impersonating one (`--hosted-key`,
`--hosted-api`): its key required, its API only, its errors in its own shape. The clients are
the official `openai` and `anthropic` ones. No test reaches the internet."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.helpers import Proc, start_gateway, start_sim, wait_until

OPENAI_KEY = "sk-openai-provider-0123"
ANTHROPIC_KEY = "sk-ant-provider-4567"
ENGINE, GPT, CLAUDE = "sim-engine", "gpt-sim", "claude-sim"
BACKENDS = {ENGINE: "worker", GPT: "openai provider", CLAUDE: "anthropic provider"}
FAST = ("--ttft-ms", "0", "--tpot-ms", "0")


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, Proc]]:
    procs = {
        ENGINE: start_sim(1, "--model", ENGINE, *FAST),
        GPT: start_sim(1, "--model", GPT, "--hosted-key", OPENAI_KEY, "--owned-by", "openai", *FAST),
        CLAUDE: start_sim(1, "--model", CLAUDE, "--hosted-key", ANTHROPIC_KEY, "--hosted-api", "anthropic", *FAST),
    }
    yield procs
    for proc in procs.values():
        proc.stop()


@pytest.fixture(scope="module")
def gateway(sims: dict[str, Proc]) -> Iterator[Proc]:
    with pytest.MonkeyPatch.context() as env:  # a key meant for api.openai.com, never for another host
        env.setenv("OPENAI_API_KEY", "sk-meant-for-openai-only")
        env.delenv("ANTHROPIC_API_KEY", raising=False)
        proc = start_gateway([sims[ENGINE].url], "--policy", "round_robin", "--retry-max-retries", "2")
    try:
        for model, key, extra in ((GPT, OPENAI_KEY, {}), (CLAUDE, ANTHROPIC_KEY, {"provider": "anthropic"})):
            body = {"url": sims[model].url, "runtime_type": "external", "api_key": key, **extra}
            added = httpx.post(proc.url + "/workers", json=body)
            assert added.status_code == 202, added.text
        wait_until(
            lambda: {m["id"] for m in httpx.get(proc.url + "/v1/models").json()["data"]} == set(BACKENDS),
            "the three pools ready",
        )
    except BaseException:
        proc.stop()
        raise
    yield proc
    proc.stop()


def oai(gateway: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="client-key", max_retries=0)


def ant(gateway: Proc) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="client-key", max_retries=0)


def chat(client: openai.OpenAI, model: str) -> None:
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert answer.choices[0].message.content and answer.usage is not None and answer.usage.completion_tokens == 4


def chat_stream(client: openai.OpenAI, model: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "stream"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def completions(client: openai.OpenAI, model: str) -> None:
    assert client.completions.create(model=model, prompt="once upon", max_tokens=3).choices[0].text


def completions_stream(client: openai.OpenAI, model: str) -> None:
    chunks = list(client.completions.create(model=model, prompt="once upon", max_tokens=3, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices).strip()


def embeddings(client: openai.OpenAI, model: str) -> None:
    assert len(client.embeddings.create(model=model, input="embed me").data[0].embedding) > 0


def responses(client: openai.OpenAI, model: str) -> None:
    first = client.responses.create(model=model, input="remember the word kiwi")
    assert first.status == "completed" and first.output_text
    follow = client.responses.create(model=model, input="which word?", previous_response_id=first.id)
    assert follow.status == "completed" and follow.previous_response_id == first.id


def responses_stream(client: openai.OpenAI, model: str) -> None:
    events = list(client.responses.create(model=model, input="stream it", stream=True))
    assert events[-1].type == "response.completed"
    assert any(e.type == "response.output_text.delta" for e in events)


def conversations(client: openai.OpenAI, model: str) -> None:
    conversation = client.conversations.create(items=[{"type": "message", "role": "user", "content": "hello"}])
    for turn in ("first", "second"):
        answer = client.responses.create(model=model, input=turn, conversation=conversation.id)
        assert answer.status == "completed"
    items = client.conversations.items.list(conversation.id).data
    assert len(items) == 5  # the opening item, then each turn's input and answer


def messages(client: anthropic.Anthropic, model: str) -> None:
    message = client.messages.create(model=model, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].type == "text" and message.content[0].text and message.usage.output_tokens == 4


def messages_stream(client: anthropic.Anthropic, model: str) -> None:
    with client.messages.stream(
        model=model, max_tokens=4, system="be brief", messages=[{"role": "user", "content": "stream"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.usage.output_tokens == 4


OPENAI_APIS: dict[str, Callable[[openai.OpenAI, str], None]] = {
    f.__name__: f
    for f in (chat, chat_stream, completions, completions_stream, embeddings, responses, responses_stream, conversations)
}
ANTHROPIC_APIS: dict[str, Callable[[anthropic.Anthropic, str], None]] = {f.__name__: f for f in (messages, messages_stream)}
# what a backend cannot offer: a clear 400 in the client's shape, never a wrong answer
UNSUPPORTED = {("embeddings", CLAUDE)}


@pytest.mark.parametrize("model", list(BACKENDS))
@pytest.mark.parametrize("api", [*OPENAI_APIS, *ANTHROPIC_APIS])
def test_every_api_over_every_backend(gateway: Proc, api: str, model: str) -> None:
    run: Callable[[], Any]
    if api in OPENAI_APIS:
        run = lambda: OPENAI_APIS[api](oai(gateway), model)  # noqa: E731
    else:
        run = lambda: ANTHROPIC_APIS[api](ant(gateway), model)  # noqa: E731
    if (api, model) in UNSUPPORTED:
        with pytest.raises(openai.BadRequestError) as refused:
            run()
        assert refused.value.code == "unsupported_by_provider" and "Anthropic provider" in refused.value.message
        return
    run()


def test_the_model_picks_the_pool_and_each_provider_gets_its_own_key(gateway: Proc, sims: dict[str, Proc]) -> None:
    for model in BACKENDS:
        response = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "who"}], "max_tokens": 2},
            headers={"authorization": "Bearer client-key"},
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-smg-routed-worker-id"] == sims[model].url
    # the Anthropic provider got a Messages request (its API has no chat route)
    recent = httpx.get(sims[CLAUDE].url + "/sim/requests").json()["requests"]
    assert recent[-1]["path"] == "/v1/messages" and recent[-1]["body"]["max_tokens"] == 2
    workers = httpx.get(gateway.url + "/workers").text
    assert OPENAI_KEY not in workers and ANTHROPIC_KEY not in workers
    assert {w["runtime_type"] for w in httpx.get(gateway.url + "/workers").json()["workers"]} >= {"external"}


def test_cached_prompt_tokens_come_back_in_openai_usage(gateway: Proc) -> None:
    prompt = "the same long system prompt " * 40
    usages = [
        oai(gateway).chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": prompt}], max_tokens=2).usage
        for _ in range(2)
    ]
    first, second = usages
    assert first is not None and second is not None
    assert first.prompt_tokens == second.prompt_tokens  # Anthropic counts cached tokens apart: added back
    assert second.prompt_tokens_details is not None and second.prompt_tokens_details.cached_tokens
    assert second.prompt_tokens_details.cached_tokens > 0


def tokens(gateway: Proc) -> dict[tuple[str, str, str], float]:
    """smg_router_tokens_total by (model, backend, kind)."""
    out = {}
    for line in httpx.get(gateway.metrics_url + "/metrics").text.splitlines():
        if line.startswith("smg_router_tokens_total{"):
            labels, value = line[len("smg_router_tokens_total{") :].split("} ")
            named = dict(part.split("=") for part in labels.split(","))
            out[tuple(named[k].strip('"') for k in ("model", "backend", "kind"))] = float(value)
    return out


@pytest.mark.parametrize(("model", "backend"), [(ENGINE, "sglang"), (GPT, "openai"), (CLAUDE, "anthropic")])
def test_tokens_are_counted_per_model_and_backend_with_cached_ones(gateway: Proc, model: str, backend: str) -> None:
    """Item 6: every answer that reports usage, streamed (when usage is in the stream) or not."""
    prompt = f"count me for {model} " * 30
    before = tokens(gateway)
    client = oai(gateway)
    for _ in range(2):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], max_tokens=3)
    list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    after = tokens(gateway)

    def added(kind: str) -> float:
        return after.get((model, backend, kind), 0.0) - before.get((model, backend, kind), 0.0)

    assert added("completion") == 9
    assert added("prompt") >= 3 * 30  # the same prompt three times
    assert added("cached") > 0  # the second and third found it cached


def served(sim: Proc) -> int:
    return int(httpx.get(sim.url + "/sim/stats").json()["requests"])


def answers_again(gateway: Proc, model: str) -> None:
    """Wait (bounded) for the end of a provider's Retry-After."""
    body = {"model": model, "messages": [{"role": "user", "content": "back?"}], "max_tokens": 1}
    wait_until(lambda: httpx.post(gateway.url + "/v1/chat/completions", json=body).status_code == 200, f"{model} answers")


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_a_providers_429_reaches_the_client_with_its_retry_after(gateway: Proc, sims: dict[str, Proc], model: str) -> None:
    """A 429 with Retry-After is taken at its word: not retried, not a breaker failure, and the
    requests during the wait are answered 429 by the gateway without asking the provider."""
    sim = sims[model]
    httpx.post(sim.url + "/sim/config", json={"fail_rate": 1.0, "fail_status": 429, "fail_retry_after": 2})
    try:
        asked = served(sim)
        with pytest.raises(openai.RateLimitError) as limited:
            oai(gateway).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert limited.value.response.headers["retry-after"] == "2" and limited.value.status_code == 429
        assert served(sim) == asked + 1  # the provider said when: no retry before then
        for _ in range(3):
            with pytest.raises(openai.RateLimitError) as waiting:
                oai(gateway).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
            assert waiting.value.response.headers["retry-after"] in ("1", "2")
        assert served(sim) == asked + 1
        workers = httpx.get(gateway.url + "/workers").json()["workers"]
        assert {w["circuit_breaker"] for w in workers if w["url"] == sim.url} == {"closed"}
        if model == CLAUDE:  # the Messages client gets a 429 in Anthropic's shape
            with pytest.raises(anthropic.RateLimitError) as native:
                ant(gateway).messages.create(model=model, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
            assert native.value.response.headers["retry-after"] in ("1", "2")
    finally:
        httpx.post(sim.url + "/sim/config", json={"fail_rate": 0.0, "fail_retry_after": 0})
        answers_again(gateway, model)


def test_anthropics_overloaded_529_is_retried_and_a_503_to_openai_clients(gateway: Proc, sims: dict[str, Proc]) -> None:
    httpx.post(sims[CLAUDE].url + "/sim/config", json={"fail_rate": 1.0, "fail_status": 503, "fail_retry_after": 0})
    try:
        with pytest.raises(openai.InternalServerError) as overloaded:
            oai(gateway).chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert overloaded.value.status_code == 503
        assert overloaded.value.body["code"] == "overloaded_error"  # type: ignore[index]
        asked = served(sims[CLAUDE])
        with pytest.raises(anthropic.APIStatusError) as native:  # relayed as Anthropic said it, after a retry
            ant(gateway).messages.create(model=CLAUDE, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
        assert native.value.status_code == 529 and served(sims[CLAUDE]) == asked + 2
    finally:
        httpx.post(sims[CLAUDE].url + "/sim/config", json={"fail_rate": 0.0})


@pytest.mark.parametrize(
    ("body", "param", "said"),
    [
        # OPENAI_API_KEY is set, but for api.openai.com alone: another host brings its own
        ({"url": "https://api.example.com", "runtime_type": "external"}, "api_key", "environment keys go only to"),
        ({"url": "https://api.anthropic.com", "runtime": "external"}, "api_key", "ANTHROPIC_API_KEY"),
        ({"url": "http://api.example.com", "runtime_type": "external", "api_key": "k"}, "url", "not https://"),
        ({"url": "https://api.example.com", "provider": "gemini", "api_key": "k"}, "provider", "must be one of"),
        ({"url": "https://api.example.com", "provider": "openai", "runtime_type": "vllm"}, "provider", "external"),
        ({"url": "https://api.example.com", "runtime_type": "external", "api_key": "a b"}, "api_key", "header"),
    ],
)
def test_a_provider_added_without_a_usable_key_is_a_400_naming_the_field(
    gateway: Proc, body: dict[str, Any], param: str, said: str
) -> None:
    response = httpx.post(gateway.url + "/workers", json=body)
    assert response.status_code == 400, response.text
    assert said in response.json()["error"] and response.json()["code"] == "BAD_REQUEST"


def test_a_pool_of_an_engine_and_an_anthropic_provider_sends_what_only_the_engine_can_do_to_it() -> None:
    """One model served two ways: a request the Messages API cannot take (several choices,
    embeddings) goes to the engine every time, never refused for having drawn the provider."""
    engine = start_sim(1, "--model", "both", *FAST)
    claude = start_sim(1, "--model", "both", "--hosted-key", ANTHROPIC_KEY, "--hosted-api", "anthropic", *FAST)
    gateway = start_gateway([engine.url], "--policy", "round_robin")
    try:
        body = {"url": claude.url, "runtime_type": "external", "provider": "anthropic", "api_key": ANTHROPIC_KEY}
        assert httpx.post(gateway.url + "/workers", json=body).status_code == 202
        wait_until(lambda: all(w["is_healthy"] for w in httpx.get(gateway.url + "/workers").json()["workers"]), "both ready")
        for _ in range(4):
            several = httpx.post(
                gateway.url + "/v1/chat/completions",
                json={"model": "both", "n": 2, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            )
            assert several.status_code == 200 and several.headers["x-smg-routed-worker-id"] == engine.url
            embedded = httpx.post(gateway.url + "/v1/embeddings", json={"model": "both", "input": "x"})
            assert embedded.status_code == 200 and embedded.headers["x-smg-routed-worker-id"] == engine.url
        plain = {
            httpx.post(
                gateway.url + "/v1/chat/completions",
                json={"model": "both", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            ).headers["x-smg-routed-worker-id"]
            for _ in range(4)
        }
        assert plain == {engine.url, claude.url}  # the rest goes to both
    finally:
        gateway.stop()
        engine.stop()
        claude.stop()
