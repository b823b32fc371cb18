"""`--sse-keepalive-secs` through a real gateway: the frames are on the wire, and the official
`openai` and `anthropic` clients still read such streams (they skip comments and `ping`).

The simulated workers decode slowly (`--tpot-ms 600`: the stream is silent that long between
tokens, after its head; `--ttft-ms` would delay the head itself, before which the gateway
sends nothing) and the gateway's keep-alive is 0.2 s, so each gap carries keep-alives with a
wide margin. Exact instants are the unit tests' business (tests/unit/test_sse_keepalive.py);
here only "at least one" is asserted.
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from tests.helpers import Proc, start_gateway, start_sim

SLOW = ("--tpot-ms", "600")
TOKENS = 2


@pytest.fixture(scope="module")
def gateway() -> Iterator[Proc]:
    openai_worker = start_sim(1, *SLOW)
    native_worker = start_sim(1, *SLOW, "--owned-by", "anthropic", "--model", "claude-sim")
    proc = start_gateway([*openai_worker.urls, *native_worker.urls], "--sse-keepalive-secs", "0.2")
    yield proc
    proc.stop()
    native_worker.stop()
    openai_worker.stop()


def raw_stream(gateway: Proc, path: str, body: dict[str, object]) -> bytes:
    with httpx.stream("POST", gateway.url + path, json=body, timeout=30) as response:
        assert response.status_code == 200
        return response.read()


def test_chat_streams_carry_comments_and_the_openai_client_reads_them(gateway: Proc) -> None:
    request = {"model": "sim-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": TOKENS}
    raw = raw_stream(gateway, "/v1/chat/completions", {**request, "stream": True})
    assert b"\n\n: keep-alive\n\n" in raw and raw.endswith(b"data: [DONE]\n\n")

    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=TOKENS, stream=True
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len("".join(pieces).split()) == TOKENS


@pytest.mark.parametrize("model", ["sim-model", "claude-sim"])  # translated; relayed to a worker that speaks it
def test_messages_streams_carry_pings_and_the_anthropic_client_reads_them(gateway: Proc, model: str) -> None:
    request = {"model": model, "max_tokens": TOKENS, "messages": [{"role": "user", "content": "Hi"}]}
    raw = raw_stream(gateway, "/v1/messages", {**request, "stream": True})
    kinds = [line[7:] for line in raw.decode().split("\n") if line.startswith("event: ")]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds.count("ping") >= 2 and b": keep-alive" not in raw  # message_start's own ping, and keep-alives

    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    with client.messages.stream(model=model, max_tokens=TOKENS, messages=[{"role": "user", "content": "Hi"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text and final.usage.output_tokens == TOKENS


def test_responses_streams_carry_comments_and_the_openai_client_reads_them(gateway: Proc) -> None:
    raw = raw_stream(gateway, "/v1/responses", {"model": "sim-model", "input": "Hi", "stream": True, "store": False})
    assert b"\n\n: keep-alive\n\n" in raw and b"response.completed" in raw

    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    events = list(client.responses.create(model="sim-model", input="Hi", stream=True, store=False))
    assert events[-1].type == "response.completed"
