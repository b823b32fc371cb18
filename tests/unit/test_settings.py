"""Settings declared once: every flag of every spelling round-trips to its field, and every
declared check refuses a bad value with one line naming the flag."""

from __future__ import annotations

import argparse
import base64
import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from smg.cli import build_parser, gateway_config_from, sim_config_from
from smg.config import GatewayConfig
from smg.settings import ConfigError, Flag, add_arguments, setting, settings_of, shape_of, values_from
from smg.simworker.engine import SimConfig


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # type: ignore[assignment]
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "cert.pem").write_text("cert")
    (tmp_path / "key.pem").write_text("key")
    (tmp_path / "limits.json").write_text(json.dumps({"default": {"requests_per_minute": 5}}))
    (tmp_path / "keyring").write_text(base64.b64encode(b"k" * 16).decode() + "\n")
    (tmp_path / "template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    (tmp_path / "smg.yaml").write_text("aliases: {fast: m}\n")
    _pem_pair(tmp_path / "real-cert.pem", tmp_path / "real-key.pem")
    return {k: str(tmp_path / v) for k, v in {"tok": "", "cert": "cert.pem", "key": "key.pem"}.items()} | {
        "limits": str(tmp_path / "limits.json"),
        "keyring": str(tmp_path / "keyring"),
        "template": str(tmp_path / "template.jinja"),
        "config": str(tmp_path / "smg.yaml"),
        "db": str(tmp_path / "history.db"),
        "real_cert": str(tmp_path / "real-cert.pem"),
        "real_key": str(tmp_path / "real-key.pem"),
    }


def _pem_pair(cert_path: Path, key_path: Path) -> None:
    """A self-signed certificate and its key, for the settings that load them at start."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def examples(files: dict[str, str]) -> dict[str, tuple[Any, list[str]]]:
    """A valid non-default value for the settings a generic value cannot show, and any flags it needs."""
    key = base64.b64encode(b"m" * 16).decode()
    return {
        "worker_urls": (("http://127.0.0.1:8000", "http://127.0.0.2:8001"), []),
        "request_id_headers": (("x-a", "x-b"), []),
        "tenant_api_keys": (("t1:k1", "t2:k2"), []),
        "cors_allowed_origins": (("https://a.example", "*"), []),
        "mesh_seeds": (("10.0.0.1:1", "10.0.0.2:2"), []),
        "mesh_keys": ((key,), []),
        "tls_cert_path": (files["cert"], ["--tls-key-path", files["key"]]),
        "tls_key_path": (files["key"], ["--tls-cert-path", files["cert"]]),
        "tenant_rate_limit_config": (files["limits"], []),
        "config_file": (files["config"], []),
        "mesh_keyring_file": (files["keyring"], []),
        "tokenizer_path": (files["tok"], []),
        "model_path": (files["tok"], []),
        "health_check_endpoint": ("/healthz", []),
        "history_db_path": (files["db"], []),
        "max_concurrent_requests": (8, []),
        "mesh_server_name": ("node-a", []),
        "postgres_db_url": ("postgresql://u@127.0.0.1/db", []),
        "redis_url": ("redis://127.0.0.1:6379/0", []),
        "model_alias": (("fast=sim-model", "big=other-model"), []),
        "model_fallback": (("gpt=claude,llama", "big=small"), []),
        "prometheus_duration_buckets": ((0.01, 0.5, 2.0), []),
        "tenant_rate_limit_enabled": (True, ["--tenant-rate-limit-config", files["limits"]]),
        "discovery_provider": ("file", ["--discovery-file", files["db"]]),
        "discovery_file": (files["db"], ["--discovery-provider", "file"]),
        "discovery_check_interval_secs": (5.0, ["--discovery-provider", "file", "--discovery-file", files["db"]]),
        "tenant_header_name": ("x-tenant", ["--trust-tenant-header"]),
        "trust_tenant_header": (True, []),
        "worker_overload_token_usage": (0.5, []),
        "routing_key_headers": (("x-session-id", "x-user-id"), []),
        "client_cert_path": (files["real_cert"], ["--client-key-path", files["real_key"]]),
        "client_key_path": (files["real_key"], ["--client-cert-path", files["real_cert"]]),
        "ca_cert_paths": ((files["real_cert"],), []),
        "service_discovery": (True, []),
        "selector": (("app=sglang", "tier=gpu"), ["--discovery-provider", "kubernetes"]),
        "router_selector": (("app=smg",), ["--discovery-provider", "kubernetes", "--ha-mesh"]),
        "assignment_mode": ("min_group", ["--routing-key-override"]),
        "routing_key_override": (True, []),
        "ha_mesh": (True, []),
        "model_id_from": ("label:model", ["--discovery-provider", "kubernetes"]),
        "service_discovery_port": (8000, ["--discovery-provider", "kubernetes"]),
        "service_discovery_namespace": ("inference", ["--discovery-provider", "kubernetes"]),
        "kubernetes_api_url": ("http://127.0.0.1:8001", ["--discovery-provider", "kubernetes"]),
        "kubernetes_service_account_dir": ("/tmp/sa", ["--discovery-provider", "kubernetes"]),
        "control_plane_api_keys": (("k1:Service Account:admin:s1", "k2:Read Only:user:s2"), []),
        "jwt_issuer": ("https://issuer.example", []),
        "jwt_audience": ("smg", ["--jwt-issuer", "https://issuer.example"]),
        "jwt_jwks_uri": ("https://issuer.example/jwks", ["--jwt-issuer", "https://issuer.example"]),
        "jwt_role_mapping": (("Gateway.Admin=admin", "Gateway.User=user"), ["--jwt-issuer", "https://issuer.example"]),
        "enable_trace": (True, []),
        "otlp_traces_endpoint": ("127.0.0.1:4318", ["--enable-trace"]),
        "chat_template": (files["template"], []),
        "tokenizer_cache_dir": ("/tmp/smg-tokenizers", []),
        "processes": ("auto", []),
        "parser": ("legacy", []),  # its only choice (symphony is refused)
    }


def generic(default: Any, flag: Flag, item: type) -> Any:
    if flag.choices:
        return next(c for c in flag.choices if c != default)
    if item is bool:
        return True
    if item is int:
        return (default or 0) + 1
    if item is float:
        return default * 2 if default else 0.5
    return "example-" + flag.name.strip("-")


def argv_for(flag: str, value: Any, spelling_style: str) -> list[str]:
    if value is True:
        return [flag]
    if isinstance(value, tuple):
        if spelling_style == "append":
            return [part for v in value for part in (flag, str(v))]
        if spelling_style == "csv":
            return [flag, ",".join(value)]
        return [flag, *map(str, value)]
    return [flag, str(value)]


def test_every_flag_of_every_spelling_round_trips(files: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for env in ("POSTGRES_DB_URL", "REDIS_URL", "SMG_MESH_KEY"):
        monkeypatch.delenv(env, raising=False)
    special = examples(files)
    parser = build_parser("launch")
    defaults = GatewayConfig()
    checked = 0
    for f, flag in settings_of(GatewayConfig):
        if flag.refuse is not None:
            continue  # the reference's flags smg refuses: tests/unit/test_reference_flags.py
        shape = shape_of(GatewayConfig, f.name)
        value, companions = special.get(f.name, (None, []))
        if value is None:
            assert not shape.is_list, f"{f.name}: add an example value to this test"
            value = generic(f.default, flag, shape.item)
        for spelling in flag.negations:
            assert getattr(gateway_config_from(parser.parse_args([spelling])), f.name) is False, spelling
        for spelling in flag.names:
            config = gateway_config_from(parser.parse_args([*argv_for(spelling, value, flag.many), *companions]))
            assert getattr(config, f.name) == value, (spelling, value)
            others = {g.name for g in fields(GatewayConfig)} - {f.name}
            differing = [g for g in others if getattr(config, g) != getattr(defaults, g)]
            assert set(differing) <= {name for name in special if name != f.name}, (spelling, differing)
            checked += 1
    assert checked >= len([f for f, flag in settings_of(GatewayConfig) if flag.refuse is None])


# Fields that are not flags: the parsed form of a --config file's section that has no flag of its own
FILE_SECTIONS = {"file_tenant_limits"}


def test_every_field_is_a_setting_and_no_spelling_is_used_twice() -> None:
    flags = {f.name for f, _ in settings_of(GatewayConfig)}
    assert {f.name for f in fields(GatewayConfig)} - flags == FILE_SECTIONS
    spellings = [name for _, flag in settings_of(GatewayConfig) for name in (*flag.names, *flag.negations)]
    assert len(spellings) == len(set(spellings))
    for _, flag in settings_of(GatewayConfig):
        assert flag.help and (flag.group or flag.refuse), flag.name


def test_no_flag_gives_the_dataclass_defaults() -> None:
    for command in ("launch", "serve"):
        assert gateway_config_from(build_parser(command).parse_args([])) == GatewayConfig()
    assert sim_config_from(build_parser("sim-worker").parse_args([])) == SimConfig()


def test_environment_variables_fill_absent_flags_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    key_a, key_b = (base64.b64encode(c * 16).decode() for c in (b"a", b"b"))
    monkeypatch.setenv("POSTGRES_DB_URL", "postgresql://env@127.0.0.1/db")
    monkeypatch.setenv("SMG_MESH_KEY", f"{key_a},{key_b}")
    parser = build_parser("launch")
    config = gateway_config_from(parser.parse_args([]))
    assert config.postgres_db_url == "postgresql://env@127.0.0.1/db"
    assert config.mesh_keys == (key_a, key_b)
    config = gateway_config_from(parser.parse_args(["--postgres-db-url", "postgresql://flag@h/db", "--mesh-key", key_b]))
    assert config.postgres_db_url == "postgresql://flag@h/db" and config.mesh_keys == (key_b,)


BAD = {  # a value each check must refuse, where the check's kind does not say it
    "api_key": "",
    "processes": "0",
    "request_id_headers": ("bad header",),
    "health_check_endpoint": "health",
    "max_concurrent_requests": 0,
    "tenant_api_keys": ("no-colon",),
    "cors_allowed_origins": ("example.com",),
    "worker_urls": ("ftp://w",),
    "mesh_seeds": ("no-port",),
    "mesh_server_name": "a#b",
    "mesh_keys": ("not base64!",),
    "redis_retention_days": 0,
    "model_alias": ("no-equals",),
    "model_fallback": ("gpt=gpt",),
    "model_path": "org/hub-model-id",
    "tenant_header_name": "bad header",
    "worker_overload_token_usage": 1.5,
    "routing_key_headers": ("bad header",),
    "prometheus_duration_buckets": (2.0, 1.0),
    "ca_cert_paths": ("/nonexistent/ca.pem",),
    "selector": ("no-value",),
    "router_selector": ("no-value",),
    "model_id_from": "pod",
    "service_discovery_namespace": "Bad_NS",
    "kubernetes_api_url": "ftp://k8s.example",
    "control_plane_api_keys": ("k1:name:root:secret",),
    "jwt_issuer": "issuer.example",
    "jwt_jwks_uri": "ftp://issuer.example/jwks",
    "jwt_role_mapping": ("Gateway.Admin=root",),
}


PAIRED = {  # settings that are refused alone: the other one is given, valid
    "tls_cert_path": {"tls_key_path": __file__},
    "tls_key_path": {"tls_cert_path": __file__},
    "client_cert_path": {"client_key_path": __file__},
    "client_key_path": {"client_cert_path": __file__},
}


def bad_value(name: str, flag: Flag) -> Any:
    if name in BAD:
        return BAD[name]
    kinds = {check.__qualname__.split(".")[0] for check in flag.checks}
    if kinds & {"positive"}:
        return 0
    if kinds & {"at_least"}:
        return 0
    if kinds & {"non_negative"}:
        return -1
    if kinds & {"port_number"}:
        return 70000
    if kinds & {"existing_file"}:
        return "/nonexistent/file"
    raise AssertionError(f"{name}: add a bad value for its check to BAD")


def test_every_declared_check_refuses_a_bad_value_naming_the_flag() -> None:
    refused = 0
    for f, flag in settings_of(GatewayConfig):
        if flag.choices:
            with pytest.raises(ConfigError, match=f"^{flag.name} must be one of"):
                replace(GatewayConfig(), **{f.name: "no-such-choice"})
        if not flag.checks:
            continue
        companion = PAIRED.get(f.name, {})
        with pytest.raises(ConfigError) as info:
            replace(GatewayConfig(), **{f.name: bad_value(f.name, flag)}, **companion)
        message = str(info.value)
        assert message.startswith(flag.name) and "\n" not in message, message
        refused += 1
    assert refused >= 40


def test_a_bad_flag_on_the_command_line_is_one_line_naming_it() -> None:
    parser = build_parser("launch")
    with pytest.raises(ConfigError, match=r"^--mesh-port must be between 0 and 65535, got 70000$"):
        gateway_config_from(parser.parse_args(["--mesh-port", "70000"]))


def test_sim_flags_round_trip_with_their_prefix() -> None:
    for command, prefix in (("sim-worker", ""), ("serve", "sim-")):
        parser = build_parser(command)
        for f, flag in settings_of(SimConfig):
            item = shape_of(SimConfig, f.name).item
            value = 0.25 if f.name.endswith("_rate") else generic(f.default, flag, item)
            spelling = f"--{prefix}{flag.name[2:]}"
            config = sim_config_from(parser.parse_args(argv_for(spelling, value, flag.many)))
            assert getattr(config, f.name) == value, spelling


def test_the_generator_refuses_what_it_cannot_spell() -> None:
    with pytest.raises(ValueError, match="--flag spellings"):
        setting(1, "port", help="x")
    with pytest.raises(ValueError, match="list style"):
        setting((), "--x", help="x", many="semicolons")

    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Switch:
        on: bool = setting(True, "--on", help="a switch that is on by default cannot be a flag")

    with pytest.raises(TypeError, match="default to False"):
        add_arguments(argparse.ArgumentParser(), Switch)
    assert values_from(Switch, argparse.Namespace()) == {}
