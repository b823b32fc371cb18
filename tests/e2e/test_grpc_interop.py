"""Interoperability, first direction (issue 16 item 8): the reference gateway, given only the
`grpc://` URL of `smg sim-worker --grpc`, serves chat completions through it, so the simulated
worker speaks the real protocol (registration, GetTokenizer, Generate streamed and not, tool
calls parsed by the reference's own qwen parser).

Runs when the reference is installed: `$SMG_REFERENCE`, else `.venv-reference/bin/smg` (`.ci/run`
installs it there when PyPI has it); skipped with a message otherwise. The reference would try
the Hugging Face hub for `--model-path` before asking the worker: its environment points HTTPS
at a closed local port, so nothing leaves the machine and it falls back to GetTokenizer.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import start_sim, wait_until

ROOT = Path(__file__).resolve().parents[2]


def reference_binary() -> str | None:
    given = os.environ.get("SMG_REFERENCE")
    default = ROOT / ".venv-reference" / "bin" / "smg"
    path = given or (str(default) if default.exists() else None)
    return path if path and os.access(path, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = reference_binary()
    if binary is None:
        pytest.skip("the reference gateway is not installed (set SMG_REFERENCE or create .venv-reference)")
    sim = start_sim(1, "--grpc", "--ttft-ms", "0", "--tpot-ms", "0")
    port, metrics = free_port(), free_port()
    log = tmp_path_factory.mktemp("reference") / "reference.log"
    env = {
        **os.environ,
        "HTTPS_PROXY": "http://127.0.0.1:9",  # the hub lookup fails here, on this machine
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    args = [
        binary, "launch", "--worker-urls", sim.urls[0], "--host", "127.0.0.1", "--port", str(port),
        "--prometheus-port", str(metrics), "--model-path", "/nonexistent/sim-model", "--tool-call-parser", "qwen",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(url + "/readiness").status_code == 200, "the reference ready over the gRPC sim", 60)
        yield url
    except TimeoutError:
        pytest.fail("the reference never became ready; its log:\n" + log.read_text(errors="replace")[-3000:])
    finally:
        proc.terminate()  # it may not exit on SIGTERM within a few seconds: then it is killed
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        sim.stop()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)


def test_the_reference_serves_a_chat_completion_through_the_grpc_sim(reference: str) -> None:
    answer = client(reference).chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": "hello there"}], max_tokens=8
    )
    assert answer.choices[0].message.content and answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 8


def test_the_reference_streams_through_the_grpc_sim(reference: str) -> None:
    stream = client(reference).chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": "stream please"}], max_tokens=12, stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.strip()


def test_the_reference_parses_the_grpc_sims_tool_call(reference: str) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    answer = client(reference).chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": "weather in Paris?"}], tools=tools, max_tokens=64
    )
    calls = answer.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert "city" in json.loads(calls[0].function.arguments)  # type: ignore[union-attr]
