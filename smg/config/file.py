"""`--config smg.yaml`: the gateway's settings, workers, providers, aliases, fallbacks and tenant
limits in one file, for those who prefer it to many flags (as LiteLLM's users do).

    settings:            # any `smg launch` flag, by its long name (dashes or underscores)
      policy: cache_aware
      port: 30000
      api_key: env:SMG_API_KEY
    workers:             # self-hosted engines: a URL, or the settings POST /workers takes
      - http://llama-a:8000
      - {url: http://llama-b:8000, priority: 60}
    providers:           # hosted providers (`--backend openai|anthropic`'s, one by one)
      - {url: https://api.anthropic.com, api_key: env:ANTHROPIC_API_KEY}
      - {url: https://llm.example.com, provider: openai, api_key: env:EXAMPLE_KEY}
    aliases: {fast: llama-3.1-8b}                          # --model-alias
    fallbacks: {gpt-4o: [claude-sonnet-4-5, llama-3.1-8b]}  # --model-fallback
    tenant_keys: {acme: env:ACME_KEY}                     # --tenant-api-key
    tenant_limits: {default: {requests_per_minute: 600}}  # --tenant-rate-limit-config's content

A key is always a reference to an environment variable (`env:NAME`), never inline: the file
can then be kept with the code. Any other string setting may be one too. Flags given on the
command line (and `SMG_*` variables) override the file. Unknown keys and bad values are one
line naming the key path (`smg.yaml: providers[1].api_key: ...`).

No I/O but `load`'s read: `parse` takes the text and the environment, so it is tested (and
reloaded on SIGHUP) the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from smg.discovery.manifest import WorkerSpec
from smg.limits.tenants import TenantLimits
from smg.settings import ConfigError, Flag, Shape, check_setting, from_text, settings_of, shape_of
from smg.workers.registry import normalize_url
from smg.workers.spec import SpecError, provider_api, provider_key, worker_settings

ENV_PREFIX = "env:"
SECTIONS = ("settings", "workers", "providers", "aliases", "fallbacks", "tenant_keys", "tenant_limits")
# Settings whose values are keys: only by reference. URLs with a password in them too.
SECRETS = frozenset({"api_key", "tenant_api_keys", "control_plane_api_keys", "mesh_keys"})
URLS_WITH_SECRETS = frozenset({"postgres_db_url", "redis_url"})
WORKER_FIELDS = frozenset({"url", "labels", "priority", "cost", "api_key"})
# Set by their own sections: in `settings` they would say the same thing twice.
_GIVEN = object()  # no value a file gives equals it
BY_SECTION = {"model_alias": "aliases", "model_fallback": "fallbacks", "tenant_api_keys": "tenant_keys"}


@dataclass(frozen=True)
class FileConfig:
    """What a config file says: setting values by field name, the workers and providers it
    lists (as discovery entries: the gateway keeps the registry matching them across reloads),
    and its tenant limits."""

    values: dict[str, Any] = field(default_factory=dict)
    workers: list[WorkerSpec] = field(default_factory=list)
    limits: TenantLimits | None = None


def layered(values: dict[str, Any], environ: Mapping[str, str], settings_class: type) -> tuple[dict[str, Any], FileConfig | None]:
    """The settings of flags and `SMG_*` variables (`values`) over those of the file
    `config_file` names, if any; and what the file says."""
    path = values.get("config_file")
    if path is None:
        return values, None
    loaded = load(path, environ, settings_class)
    return {**loaded.values, "file_tenant_limits": loaded.limits, **values}, loaded


def load(path: str, environ: Mapping[str, str], settings_class: type) -> FileConfig:
    """Read and parse `path`; `ConfigError` (one line) for a file that cannot be read or used."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--config: {path} is not UTF-8 text (byte {exc.start})") from None
    return parse(text, path, environ, settings_class)


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: a pasted second
    `providers:` would otherwise replace the first without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"'{key}' is given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse(text: str, name: str, environ: Mapping[str, str], settings_class: type) -> FileConfig:
    try:
        doc = yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{name}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise ConfigError(f"{name}: nested too deeply") from None
    reader = _Reader(name, environ)
    if doc is None:
        return FileConfig()
    if not isinstance(doc, dict):
        raise reader.error("", f"expected a mapping of {', '.join(SECTIONS)}")
    unknown = sorted(str(key) for key in doc if key not in SECTIONS)
    if unknown:
        raise reader.error(unknown[0], f"unknown section (the sections are {', '.join(SECTIONS)})")
    values = reader.settings(doc.get("settings"), settings_class)
    flags = {f.name: flag for f, flag in settings_of(settings_class)}
    aliases = reader.mapping(doc.get("aliases"), "aliases")
    if aliases:
        values["model_alias"] = tuple(f"{alias}={reader.string(target, f'aliases.{alias}')}" for alias, target in aliases.items())
    fallbacks = reader.mapping(doc.get("fallbacks"), "fallbacks")
    if fallbacks:
        values["model_fallback"] = tuple(
            f"{model}={','.join(reader.strings(chain, f'fallbacks.{model}'))}" for model, chain in fallbacks.items()
        )
    tenant_keys = reader.mapping(doc.get("tenant_keys"), "tenant_keys")
    if tenant_keys:
        for tenant in tenant_keys:
            if ":" in tenant:
                raise reader.error(f"tenant_keys.{tenant}", "a tenant name has no ':'")
        values["tenant_api_keys"] = tuple(
            f"{tenant}:{reader.secret(key, f'tenant_keys.{tenant}')}" for tenant, key in tenant_keys.items()
        )
    for field_name, section in BY_SECTION.items():  # the flag's own checks, naming the section
        if field_name in values:
            check_setting(flags[field_name], values[field_name], _GIVEN, f"{name}: {section}")
    limits = None
    if doc.get("tenant_limits") is not None:
        try:
            limits = TenantLimits.parse(doc["tenant_limits"])
        except ValueError as exc:
            raise reader.error("tenant_limits", str(exc)) from None
    workers = reader.workers(doc.get("workers"), "workers", provider=False)
    workers += reader.workers(doc.get("providers"), "providers", provider=True)
    seen: set[str] = set()
    for spec in workers:
        if spec.url in seen:
            raise reader.error("workers", f"{spec.url} is listed twice")
        seen.add(spec.url)
    return FileConfig(values, workers, limits)


class _Reader:
    """Reads one document, naming the key path in every error."""

    def __init__(self, name: str, environ: Mapping[str, str]) -> None:
        self.name = name
        self.environ = environ

    def error(self, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.name}: {path}: {message}" if path else f"{self.name}: {message}")

    def mapping(self, value: Any, path: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(key, str) and key for key in value):
            raise self.error(path, "expected a mapping with names as keys")
        return value

    def string(self, value: Any, path: str) -> str:
        if isinstance(value, str) and value.startswith(ENV_PREFIX):
            return self.reference(value, path)
        if not isinstance(value, str) or not value:
            raise self.error(path, "expected a non-empty string")
        return value

    def strings(self, value: Any, path: str) -> list[str]:
        items = value if isinstance(value, list) else [value]
        return [self.string(item, f"{path}[{i}]" if isinstance(value, list) else path) for i, item in enumerate(items)]

    def reference(self, value: str, path: str) -> str:
        variable = value[len(ENV_PREFIX) :]
        if not variable:
            raise self.error(path, "env: names no variable")
        resolved = self.environ.get(variable, "").strip()
        if not resolved:
            raise self.error(path, f"{variable} is not set (it is named by {value})")
        return resolved

    def secret(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value.startswith(ENV_PREFIX):
            raise self.error(path, f"a key is given by reference, {ENV_PREFIX}NAME, never inline")
        return self.reference(value, path)

    # -- settings ------------------------------------------------------------------------

    def settings(self, section: Any, settings_class: type) -> dict[str, Any]:
        section = self.mapping(section, "settings")
        spellings: dict[str, tuple[str, Flag]] = {}
        for f, flag in settings_of(settings_class):
            for name in (f.name, *(n[2:] for n in flag.names)):
                spellings[name.replace("-", "_")] = (f.name, flag)
        values: dict[str, Any] = {}
        for key, value in section.items():
            path = f"settings.{key}"
            found = spellings.get(key.replace("-", "_"))
            if found is None:
                raise self.error(path, "not a setting (any `smg launch` flag, by its long name)")
            name, flag = found
            if flag.hidden and flag.refuse is None:  # set by smg itself (a process's index, a pipe)
                raise self.error(path, "not a setting (any `smg launch` flag, by its long name)")
            if name in BY_SECTION:
                raise self.error(path, f"given in the {BY_SECTION[name]} section")
            if name in values:
                raise self.error(path, f"{flag.name} is given twice")
            shape = shape_of(settings_class, name)
            if flag.many == "csv" and shape.is_list and isinstance(value, str):  # as `--seeds a:1,b:2` reads
                value = [part.strip() for part in value.split(",") if part.strip()]
            values[name] = self.setting(value, path, name, shape)
            check_setting(flag, values[name], _GIVEN, f"{self.name}: {path}")  # a refused flag: refused whatever its value
        return values

    def setting(self, value: Any, path: str, name: str, shape: Shape) -> Any:
        if value is None:
            if shape.optional:
                return None
            raise self.error(path, "must have a value")
        if shape.is_list:
            items = value if isinstance(value, list) else [value]
            return tuple(self.item(item, f"{path}[{i}]", name, shape.item) for i, item in enumerate(items))
        return self.item(value, path, name, shape.item)

    def item(self, value: Any, path: str, name: str, kind: type) -> Any:
        if name in SECRETS:
            return self.secret(value, path)
        if isinstance(value, str) and value.startswith(ENV_PREFIX):
            value = self.reference(value, path)
            if kind is not str:  # a number or switch from the environment, as SMG_* variables are read
                try:
                    return from_text(kind, value)
                except ValueError:
                    raise self.error(path, f"'{value}' is not a {kind.__name__}") from None
        elif name in URLS_WITH_SECRETS and isinstance(value, str) and _has_password(value):
            raise self.error(path, f"a URL with a password is given by reference, {ENV_PREFIX}NAME, never inline")
        if kind is bool:
            if not isinstance(value, bool):
                raise self.error(path, "expected true or false")
        elif kind is int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise self.error(path, "expected an integer")
        elif kind is float:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise self.error(path, "expected a number")
            value = float(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # `processes: 4`, a string setting that is often a number
        elif not isinstance(value, str):
            raise self.error(path, "expected a string")
        return value

    # -- workers and providers -----------------------------------------------------------

    def workers(self, section: Any, where: str, *, provider: bool) -> list[WorkerSpec]:
        if section is None:
            return []
        if not isinstance(section, list):
            raise self.error(where, "expected a list")
        specs = []
        for i, entry in enumerate(section):
            path = f"{where}[{i}]"
            body = {"url": entry} if isinstance(entry, str) else entry
            if not isinstance(body, dict) or not isinstance(body.get("url"), str):
                raise self.error(path, "a URL, or a mapping with a 'url'")
            allowed = WORKER_FIELDS | {"provider"} if provider else WORKER_FIELDS
            unknown = sorted(set(body) - allowed)
            if unknown:
                raise self.error(f"{path}.{unknown[0]}", f"unknown field (the fields are {', '.join(sorted(allowed))})")
            settings = dict(body)
            if body.get("api_key") is not None:
                settings["api_key"] = self.secret(body["api_key"], f"{path}.api_key")
            try:
                url = normalize_url(body["url"])
                values = worker_settings(settings)
            except SpecError as exc:
                raise self.error(f"{path}.{exc.param}", str(exc)) from None
            except ValueError as exc:
                raise self.error(f"{path}.url", str(exc)) from None
            if provider:
                values |= self.provider(body, url, values.get("api_key"), path)
            specs.append(WorkerSpec(url, values, origin=f"{self.name} {path}"))
        return specs

    def provider(self, body: dict[str, Any], url: str, key: str | None, path: str) -> dict[str, Any]:
        """A provider entry's API and key, checked as `POST /workers` checks them."""
        try:
            api = provider_api(body, url)
            return {"provider": api, "api_key": provider_key(api, url, key, self.environ)}
        except SpecError as exc:
            raise self.error(f"{path}.{exc.param}", str(exc)) from None


def _has_password(url: str) -> bool:
    _, _, rest = url.partition("://")
    userinfo, at, _ = rest.partition("@")
    return bool(at) and ":" in userinfo
