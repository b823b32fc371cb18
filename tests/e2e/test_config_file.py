"""`smg launch --config smg.yaml` (issue 17 item 5): a gateway set up by one file, reread on
SIGHUP without dropping a request; a file that breaks changes nothing; a setting that needs a
restart says so. The provider is the simulated worker impersonating Anthropic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import Proc, start_gateway, start_sim, wait_until

KEY = "sk-config-file-anthropic"
FAST = ("--ttft-ms", "0", "--tpot-ms", "0")
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, Proc]]:
    procs = {
        "a": start_sim(1, "--model", "engine-a", *FAST),
        "b": start_sim(1, "--model", "engine-b", *FAST),
        "claude": start_sim(1, "--model", "claude-sim", "--hosted-key", KEY, "--hosted-api", "anthropic", *FAST),
    }
    yield procs
    for proc in procs.values():
        proc.stop()


def write(path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text))


def models(gateway: Proc) -> set[str]:
    return {m["id"] for m in httpx.get(gateway.url + "/v1/models").json()["data"]}


def config(sims: dict[str, Proc], policy: str, engine: str, aliases: str, fallbacks: str = "{}") -> str:
    """A config file: one engine, the Anthropic provider (its key by reference), aliases, fallbacks."""
    return f"""
        settings:
          policy: {policy}
          retry-max-retries: 1
        workers:
          - {sims[engine].url}
        providers:
          - {{url: {sims["claude"].url}, provider: anthropic, api_key: env:CLAUDE_KEY}}
        aliases: {aliases}
        fallbacks: {fallbacks}
    """


@pytest.fixture
def gateway(sims: dict[str, Proc], tmp_path: Path) -> Iterator[tuple[Proc, Path]]:
    path = tmp_path / "smg.yaml"
    write(path, config(sims, "round_robin", "a", "{fast: engine-a}", "{engine-a: [claude-sim]}"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CLAUDE_KEY", KEY)
        proc = start_gateway([], "--config", str(path), ready=False)
    try:
        wait_until(lambda: models(proc) == {"engine-a", "fast", "claude-sim"}, "the file's workers ready")
    except BaseException:
        proc.stop()
        raise
    yield proc, path
    proc.stop()


def test_one_file_sets_up_workers_providers_aliases_and_fallbacks(gateway: tuple[Proc, Path], sims: dict[str, Proc]) -> None:
    proc, _ = gateway
    assert "policy round_robin" in proc.log()
    fast = httpx.post(proc.url + "/v1/chat/completions", json={"model": "fast", **CHAT})
    assert fast.status_code == 200 and fast.headers["x-smg-routed-worker-id"] == sims["a"].url
    claude = httpx.post(proc.url + "/v1/chat/completions", json={"model": "claude-sim", **CHAT})
    assert claude.status_code == 200, claude.text  # the key came from the environment, by reference
    workers = httpx.get(proc.url + "/workers").text
    assert KEY not in workers and KEY not in proc.log()
    httpx.post(sims["a"].url + "/sim/config", json={"fail_rate": 1.0, "fail_status": 503})
    try:
        fell = httpx.post(proc.url + "/v1/chat/completions", json={"model": "engine-a", **CHAT})
        assert fell.status_code == 200 and fell.headers["x-smg-fallback-model"] == "claude-sim"
    finally:
        httpx.post(sims["a"].url + "/sim/config", json={"fail_rate": 0.0})


def test_sighup_rereads_the_file_without_dropping_a_request(gateway: tuple[Proc, Path], sims: dict[str, Proc]) -> None:
    proc, path = gateway
    failures: list[str] = []
    done = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=proc.url) as client:
            while not done.is_set():
                answer = client.post("/v1/chat/completions", json={"model": "claude-sim", **CHAT})
                if answer.status_code != 200:
                    failures.append(answer.text)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        write(path, config(sims, "random", "b", "{quick: engine-b}"))
        proc.popen.send_signal(signal.SIGHUP)
        wait_until(lambda: models(proc) == {"engine-b", "quick", "claude-sim"}, "the new file applied")
        wait_until(lambda: "SIGHUP:" in proc.log() and "reread" in proc.log(), "the reread logged")
    finally:
        done.set()
        thread.join(timeout=30)
    assert failures == []
    assert "SIGHUP: --policy changed; restart the gateway to apply" in proc.log()
    quick = httpx.post(proc.url + "/v1/chat/completions", json={"model": "quick", **CHAT})
    assert quick.status_code == 200 and quick.headers["x-smg-routed-worker-id"] == sims["b"].url
    gone = httpx.post(proc.url + "/v1/chat/completions", json={"model": "fast", **CHAT})
    assert gone.status_code == 404  # the alias left with the file's old version


def test_a_file_that_breaks_changes_nothing(gateway: tuple[Proc, Path]) -> None:
    proc, path = gateway
    path.write_bytes(b"# caf\xe9 (Latin-1)\nsettings: {policy: random}\n")
    proc.popen.send_signal(signal.SIGHUP)
    wait_until(lambda: "is not UTF-8 text" in proc.log(), "the error logged")
    path.write_text("settings: {polcy: random}\n")
    proc.popen.send_signal(signal.SIGHUP)
    wait_until(lambda: "settings.polcy: not a setting (any" in proc.log(), "the error logged")
    assert "nothing changed" in proc.log()
    assert models(proc) == {"engine-a", "fast", "claude-sim"}
    assert httpx.post(proc.url + "/v1/chat/completions", json={"model": "fast", **CHAT}).status_code == 200


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            "providers: [{url: https://api.anthropic.com, api_key: sk-ant-inline}]",
            "providers[0].api_key: a key is given by reference",
        ),
        ("settings: {polcy: random}", "settings.polcy: not a setting"),
    ],
)
def test_a_bad_file_is_a_one_line_start_error(tmp_path: Path, text: str, said: str) -> None:
    path = tmp_path / "smg.yaml"
    path.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "smg", "launch", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and said in lines[0], done.stderr
    assert "sk-ant-inline" not in done.stderr
