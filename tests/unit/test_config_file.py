"""`--config smg.yaml` (issue 17 item 5): what a file says, the one-line errors naming the key
path, keys only by reference, and flags over the file."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import pytest

from smg.cli import build_parser, configured
from smg.config import GatewayConfig
from smg.config.file import parse
from smg.limits.tenants import Limit
from smg.settings import ConfigError

ENV = {"ANTHROPIC_API_KEY": "sk-ant-1", "LOCAL_KEY": "sk-local", "ACME_KEY": "acme-secret", "GW_KEY": "gw", "PORT": "31000"}

FULL = """
settings:
  policy: round_robin
  max-concurrent-requests: 64
  request_timeout_secs: 30
  port: env:PORT
  api_key: env:GW_KEY
  processes: 2
  routing-key-headers: x-user
workers:
  - http://127.0.0.1:8001
  - {url: http://127.0.0.1:8002, priority: 70, labels: {zone: a}}
providers:
  - {url: https://api.anthropic.com, api_key: env:ANTHROPIC_API_KEY}
  - {url: http://127.0.0.1:9000, provider: anthropic, api_key: env:LOCAL_KEY}
aliases: {fast: llama-3.1-8b}
fallbacks: {gpt-4o: [claude-sonnet-4-5, llama-3.1-8b], small: fast}
tenant_keys: {acme: env:ACME_KEY}
tenant_limits: {default: {requests_per_minute: 600}, tenants: {acme: {tokens_per_minute: 1000}}}
"""


def read(text: str, env: dict[str, str] = ENV) -> object:
    return parse(textwrap.dedent(text), "smg.yaml", env, GatewayConfig)


def test_a_file_says_settings_workers_providers_aliases_fallbacks_and_tenants() -> None:
    file = parse(FULL, "smg.yaml", ENV, GatewayConfig)
    values = file.values
    assert values["policy"] == "round_robin" and values["max_concurrent_requests"] == 64
    assert values["request_timeout_secs"] == 30.0 and values["port"] == 31000  # a number from the environment
    assert values["api_key"] == "gw" and values["processes"] == "2" and values["routing_key_headers"] == ("x-user",)
    assert values["model_alias"] == ("fast=llama-3.1-8b",)
    assert values["model_fallback"] == ("gpt-4o=claude-sonnet-4-5,llama-3.1-8b", "small=fast")
    assert values["tenant_api_keys"] == ("acme:acme-secret",)
    assert file.limits is not None and file.limits.tenants["acme"] == Limit(tokens_per_minute=1000)
    engines, providers = file.workers[:2], file.workers[2:]
    assert [w.url for w in engines] == ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
    assert engines[1].settings == {"priority": 70, "labels": {"zone": "a"}}
    assert providers[0].settings == {"provider": "anthropic", "api_key": "sk-ant-1"}  # the host's API
    assert providers[1].settings == {"provider": "anthropic", "api_key": "sk-local"}
    config = GatewayConfig(**values, file_tenant_limits=file.limits)  # and the gateway takes it
    assert config.tenant_limits() == file.limits


def test_an_empty_file_says_nothing() -> None:
    assert read("") == parse("# nothing yet\n", "smg.yaml", ENV, GatewayConfig)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("settings: {api_key: sk-inline}", "smg.yaml: settings.api_key: a key is given by reference, env:NAME, never inline"),
        (
            "providers: [{url: https://api.anthropic.com, api_key: sk-ant-inline}]",
            "providers[0].api_key: a key is given by reference",
        ),
        ("tenant_keys: {acme: plain}", "tenant_keys.acme: a key is given by reference"),
        ("settings: {postgres_db_url: 'postgresql://u:pw@db/smg'}", "settings.postgres_db_url: a URL with a password"),
        ("settings: {api_key: env:NOT_SET}", "settings.api_key: NOT_SET is not set (it is named by env:NOT_SET)"),
        ("providers: [{url: https://llm.example.com}]", "providers[0].api_key: a hosted provider needs 'api_key'"),
        (
            "providers: [{url: http://llm.example.com, api_key: env:LOCAL_KEY}]",
            "providers[0].url: http://llm.example.com:80 is not https://",
        ),
        (
            "providers: [{url: https://x.example, provider: gemini, api_key: env:LOCAL_KEY}]",
            "providers[0].provider: 'provider' must be one of",
        ),
        ("workers: [{url: http://w:1, provider: openai}]", "workers[0].provider: unknown field"),
        ("workers: [{url: http://w:1, priority: high}]", "workers[0].priority: 'priority' must be an integer"),
        ("workers: [http://w:1, http://w:1]", "workers: http://w:1 is listed twice"),
        ("workers: [ftp://w]", "workers[0].url:"),
        ("modles: {}", "smg.yaml: modles: unknown section"),
        ("settings: {polcy: random}", "settings.polcy: not a setting"),
        ("settings: {policy: fastest}", "smg.yaml: settings.policy must be one of"),
        ("settings: {max_concurrent_requests: many}", "settings.max_concurrent_requests: expected an integer"),
        ("settings: {request_timeout_secs: -1}", "smg.yaml: settings.request_timeout_secs must be positive"),
        ("settings: {enable_igw: 'yes'}", "settings.enable_igw: expected true or false"),
        ("settings: {model_alias: [a=b]}", "settings.model_alias: given in the aliases section"),
        ("settings: {policy: random, policy_name: x}", "settings.policy_name: not a setting"),
        ("settings: {dp-aware: true}", "settings.dp-aware: DP-aware and ZMQ engine routing are not supported"),
        ("aliases: [fast]", "aliases: expected a mapping"),
        ("fallbacks: {gpt: [gpt]}", "smg.yaml: fallbacks: 'gpt=gpt' names a model twice"),
        ("tenant_limits: {default: {requests_per_minute: -3}}", "tenant_limits: default.requests_per_minute must be"),
        ("settings: {port: 1\n  policy: x", "smg.yaml: not valid YAML (line"),
        ("[1, 2]", "smg.yaml: expected a mapping of settings"),
        ("settings: {port: 1, port: 2}", "smg.yaml: not valid YAML (line 1): 'port' is given twice in one mapping"),
        ("aliases: {a: b}\naliases: {c: d}", "'aliases' is given twice"),
        ("tenant_keys: {'ac:me': env:ACME_KEY}", "tenant_keys.ac:me: a tenant name has no ':'"),
        ("settings: {process_index: 1}", "settings.process_index: not a setting"),
        ("settings: {process-parent-fd: 0}", "settings.process-parent-fd: not a setting"),
    ],
)
def test_what_a_file_gets_wrong_is_one_line_naming_the_key(text: str, said: str) -> None:
    with pytest.raises(ConfigError) as refused:
        read(text)
    message = str(refused.value)
    assert said in message and "\n" not in message, message
    assert "sk-inline" not in message and "sk-ant-inline" not in message and "pw@" not in message


def args_for(tmp_path: Path, text: str, *flags: str) -> argparse.Namespace:
    path = tmp_path / "smg.yaml"
    path.write_text(textwrap.dedent(text))
    return build_parser("launch").parse_args(["--config", str(path), *flags])


def test_flags_and_smg_variables_override_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = """
        settings: {policy: round_robin, max_concurrent_requests: 64, request_timeout_secs: 30, redis_url: redis://file:6379/1}
        aliases: {fast: m}
    """
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    config, file = configured(args_for(tmp_path, text, "--policy", "random", "--model-alias", "quick=m"))
    assert config.policy == "random" and config.max_concurrent_requests == 64 and config.request_timeout_secs == 30
    assert config.model_alias == ("quick=m",)  # the flag's list replaces the file's
    assert config.redis_url == "redis://127.0.0.1:6379/0" and file is not None and file.workers == []


def test_a_missing_file_or_limits_given_twice_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        build_parser("launch").parse_args(["--config"])
    limits = tmp_path / "limits.json"
    limits.write_text('{"default": {"requests_per_minute": 5}}')
    with pytest.raises(ConfigError, match="give one of them"):
        configured(
            args_for(tmp_path, "tenant_limits: {default: {requests_per_minute: 1}}", "--tenant-rate-limit-config", str(limits))
        )
    with pytest.raises(ConfigError, match=r"^--config: cannot read .*absent\.yaml: No such file or directory$"):
        configured(build_parser("launch").parse_args(["--config", str(tmp_path / "absent.yaml")]))


def test_a_comma_separated_flag_is_split_as_on_the_command_line() -> None:
    file = parse("settings: {mesh_seeds: 'a:1, b:2'}", "smg.yaml", ENV, GatewayConfig)
    assert file.values["mesh_seeds"] == ("a:1", "b:2")


def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "smg.yaml"
    path.write_bytes(b"# caf\xe9\nsettings: {policy: random}\n")
    with pytest.raises(ConfigError, match=r"^--config: .*smg\.yaml is not UTF-8 text \(byte 5\)$"):
        configured(build_parser("launch").parse_args(["--config", str(path)]))


def test_a_fallback_chain_is_given_to_a_model_not_an_alias() -> None:
    with pytest.raises(ConfigError, match="'fast' is a --model-alias; give the chain to the model it names, 'm'"):
        GatewayConfig(model_alias=("fast=m",), model_fallback=("fast=other",))
