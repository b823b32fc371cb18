"""Settings declared once: a dataclass field carries its flag spellings, help, group,
environment variable and checks, and the command line is generated from it.

A setting is declared with `setting(default, "--flag", "--alias", help=...)` on a
frozen dataclass whose `GROUP` class variable names its help group (`smg.config.GatewayConfig`, `smg.storage.settings.HistorySettings`,
`smg.simworker.engine.SimConfig`); `add_arguments` builds the argparse groups from
those fields, `values_from` reads a parsed namespace back into field values, and
`check_fields` runs each field's own checks. So a new flag is one field: nothing
else has to agree with it. The module sits below every other so that each concern
can declare its settings beside its code and refuse a bad value the same way.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from typing import Any

SETTING = "smg.setting"  # the key of a field's metadata that holds its `Flag`

Check = Callable[[str, Any], None]  # (flag spelling, value) -> None, or ConfigError


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line for the user (exit status 2)."""


@dataclass(frozen=True)
class Flag:
    """How one setting is spelled and checked on the command line."""

    names: tuple[str, ...]  # the first is the canonical spelling (used in messages)
    help: str
    group: str = ""
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    env: str | None = None  # read when no flag is given (a list: comma-separated)
    # tuple settings: "+" (`--flag a b`, at least one), "*" (`--flag` alone clears the
    # list), "append" (`--flag a --flag b`) or "csv" (`--flag a,b`, also repeatable and
    # space-separated)
    many: str = "+"
    checks: tuple[Check, ...] = ()
    hidden: bool = False
    # spellings that set a switch back to False (`--no-x`): a tri-state switch, None by default
    negations: tuple[str, ...] = ()
    # a reference flag smg does not offer: parsed, then refused at start with "FLAG: <refuse>"
    refuse: str | None = None
    # how smg's meaning differs from the reference's, for the README's switching table
    differs: str | None = None
    # values the reference accepts and smg refuses at start: value -> why (and the alternative)
    refused_choices: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return self.names[0]


def setting(
    default: Any,
    *names: str,
    help: str,
    group: str = "",
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
    env: str | None = None,
    many: str = "+",
    check: Check | Sequence[Check] = (),
    hidden: bool = False,
    negations: Sequence[str] = (),
    differs: str | None = None,
    refused_choices: dict[str, str] | None = None,
) -> Any:
    """A dataclass field that is also a command-line flag (see the module docstring)."""
    if not names or not all(name.startswith("--") for name in (*names, *negations)):
        raise ValueError(f"a setting needs --flag spellings, got {names!r}")
    if not help:
        raise ValueError(f"setting {names[0]}: say what it does in help")
    if many not in ("+", "*", "append", "csv"):
        raise ValueError(f"unknown list style '{many}'")
    checks = (check,) if callable(check) else tuple(check)
    flag = Flag(
        tuple(names),
        help,
        group,
        tuple(choices) if choices else None,
        metavar,
        env,
        many,
        checks,
        hidden,
        tuple(negations),
        None,
        differs,
        tuple((refused_choices or {}).items()),
    )
    return field(default=default, metadata={SETTING: flag})


def refused(*names: str, why: str, takes: str = "1", group: str = "") -> Any:
    """A reference flag smg does not offer. It parses as the reference's does (`takes`: "0" a
    switch, "1" one value, "*" or "+" a list), so a command line written for the reference is
    understood, and given any value it stops the gateway at start with one line,
    `FLAG: <why>`, which names what is missing and the alternative. Declare the field with the
    matching type: `bool` for "0", `str | None` for "1", `tuple[str, ...]` for a list."""
    if not names or not all(name.startswith("--") for name in names):
        raise ValueError(f"a setting needs --flag spellings, got {names!r}")
    if not why:
        raise ValueError(f"refused {names[0]}: say why, and what to use instead")
    default: Any = {"0": False, "1": None, "*": (), "+": ()}[takes]
    many = takes if takes in ("*", "+") else "+"
    flag = Flag(tuple(names), f"not supported: {why}", group, many=many, hidden=True, refuse=why)
    return field(default=default, metadata={SETTING: flag})


def flag_of(f: Field[Any]) -> Flag | None:
    flag = f.metadata.get(SETTING)
    return flag if isinstance(flag, Flag) else None


def settings_of(cls: type) -> list[tuple[Field[Any], Flag]]:
    """The fields of a settings dataclass that are flags, in declaration order, each with its
    help group resolved: the field's own `group`, else the `GROUP` of the class declaring it."""
    out = []
    for f in fields(cls):
        flag = flag_of(f)
        if flag is None:
            continue
        if not flag.group:
            owner = next((c for c in cls.__mro__ if f.name in inspect.get_annotations(c)), cls)
            flag = replace(flag, group=getattr(owner, "GROUP", ""))
        out.append((f, flag))
    return out


@dataclass(frozen=True)
class Shape:
    """What a field's annotation says about parsing it: the item type, a list or not."""

    item: type
    is_list: bool
    optional: bool


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A class's resolved annotations (resolving them compiles each one: do it once per class)."""
    return typing.get_type_hints(cls)


def shape_of(cls: type, name: str) -> Shape:
    hint = _hints(cls)[name]
    optional = False
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        if len(rest) != 1:
            raise TypeError(f"setting {name}: unsupported type {hint}")
        hint = rest[0]
        args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"setting {name}: lists are tuple[T, ...], got {hint}")
        return Shape(args[0], True, optional)
    if hint not in (bool, int, float, str):
        raise TypeError(f"setting {name}: unsupported type {hint}")
    return Shape(hint, False, optional)


def _default_text(f: Field[Any]) -> str | None:
    default = f.default if f.default is not MISSING else None
    if default is None or default is False or default == "" or default == ():
        return None
    if isinstance(default, tuple):
        return " ".join(str(v) for v in default)
    return str(default)


def help_text(f: Field[Any], flag: Flag) -> str:
    """The declared help plus the default (unless the help already speaks of it)."""
    text = flag.help
    default = _default_text(f)
    if default is not None and "default" not in text:
        text = f"{text} (default: {default})" if text else f"(default: {default})"
    if flag.env and "$" not in text:
        text += f" (environment: ${flag.env})"
    return text.replace("%", "%%")


def _csv(item: type) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        return [item(part.strip()) for part in text.split(",") if part.strip()]

    return parse


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    dest_prefix: str = "",
    flag_prefix: str = "",
    group_order: Sequence[str] = (),
) -> None:
    """One argparse argument per setting of `cls`, in its declared group.

    Defaults are left out of the namespace (`argparse.SUPPRESS`): `values_from`
    takes an absent flag from the environment variable, else from the field's
    default, so the dataclass stays the one place a default is written.
    """
    groups: dict[str, Any] = {title: parser.add_argument_group(title) for title in group_order}
    for f, flag in settings_of(cls):
        title = flag.group
        if title and title not in groups:
            groups[title] = parser.add_argument_group(title)
        target = groups[title] if title else parser
        shape = shape_of(cls, f.name)
        kwargs: dict[str, Any] = {
            "dest": dest_prefix + f.name,
            "default": argparse.SUPPRESS,
            "help": argparse.SUPPRESS if flag.hidden else help_text(f, flag),
        }
        if flag.metavar:
            kwargs["metavar"] = flag.metavar
        if shape.item is bool and not shape.is_list:
            if flag.negations:
                if f.default is not None:
                    raise TypeError(f"setting {f.name}: a switch with --no- spellings defaults to None")
                kwargs.update(action="store_const", const=True)
                names = [f"--{flag_prefix}{name[2:]}" for name in flag.negations]
                target.add_argument(
                    *names,
                    dest=kwargs["dest"],
                    action="store_const",
                    const=False,
                    default=argparse.SUPPRESS,
                    help=argparse.SUPPRESS,
                )
            elif f.default is not False:
                raise TypeError(f"setting {f.name}: a switch must default to False")
            else:
                kwargs["action"] = "store_true"
        elif shape.is_list:
            if flag.many == "append":
                kwargs.update(action="append", type=shape.item)
            elif flag.many == "csv":  # split in `values_from`, so `a,b c` is three items
                kwargs.update(action="extend", nargs="+")
            else:
                kwargs.update(action="extend", nargs=flag.many, type=shape.item)
            if flag.choices:
                kwargs["choices"] = list(flag.choices)
        else:
            kwargs["type"] = shape.item
            if flag.choices:
                kwargs["choices"] = [*flag.choices, *(value for value, _ in flag.refused_choices)]
        names = [f"--{flag_prefix}{name[2:]}" for name in flag.names]
        target.add_argument(*names, **kwargs)


def values_from(cls: type, namespace: argparse.Namespace, *, dest_prefix: str = "") -> dict[str, Any]:
    """Field values for `cls(**values)`: flags given, else environment variables; absent ones keep the default."""
    values: dict[str, Any] = {}
    for f, flag in settings_of(cls):
        shape = shape_of(cls, f.name)
        dest = dest_prefix + f.name
        if hasattr(namespace, dest):
            value = getattr(namespace, dest)
            if flag.many == "csv" and shape.is_list:
                try:
                    value = [item for text in value for item in _csv(shape.item)(text)]
                except ValueError:
                    raise ConfigError(f"{flag.name}: '{' '.join(value)}' is not a comma-separated list") from None
            values[f.name] = tuple(value) if shape.is_list else value
        elif flag.env and os.environ.get(flag.env):
            text = os.environ[flag.env]
            try:
                values[f.name] = tuple(_csv(shape.item)(text)) if shape.is_list else from_text(shape.item, text)
            except ValueError:
                raise ConfigError(f"${flag.env}: '{text}' is not a valid {flag.name}") from None
    return values


def from_text(item: type, text: str) -> Any:
    """A setting's value from text (an environment variable's): switches as yes/no words, the rest by type."""
    if item is bool:
        lowered = text.strip().lower()
        if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(text)
        return lowered in ("1", "true", "yes", "on")
    return item(text)


def check_fields(settings: object) -> None:
    """Refused flags that were given, then each setting's choices and declared checks, in
    declaration order."""
    for f, flag in settings_of(type(settings)):
        check_setting(flag, getattr(settings, f.name), f.default, flag.name)


def check_setting(flag: Flag, value: Any, default: Any, said: str) -> None:
    """One setting's value: refused if the flag is (and `value` is not `default`), else its
    choices and declared checks; messages name it as `said` (the flag, or a config file's key)."""
    if flag.refuse is not None:
        if value != default:
            raise ConfigError(f"{said}: {flag.refuse}")
        return
    for refused_value, why in flag.refused_choices:
        if value == refused_value:
            raise ConfigError(f"{said} {value}: {why}")
    if flag.choices is not None and value is not None:
        for item in value if isinstance(value, tuple) else (value,):
            if item not in flag.choices:
                raise ConfigError(f"{said} must be one of {', '.join(flag.choices)}, got '{item}'")
    if value is None:
        return
    for check in flag.checks:
        check(said, value)


# Checks a setting can declare. Each is (flag, value) -> None, raising ConfigError with one line.


def positive(flag: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{flag} must be positive, got {value}")


def at_least(low: int) -> Check:
    def check(flag: str, value: int) -> None:
        if value < low:
            raise ConfigError(f"{flag} must be at least {low}, got {value}")

    return check


def non_negative(note: str = "") -> Check:
    """`note` says what 0 (or the edge) means, e.g. "0 disables it"."""

    def check(flag: str, value: float) -> None:
        if not value >= 0:  # NaN too
            detail = f" ({note})" if note else ""
            raise ConfigError(f"{flag} must not be negative{detail}, got {value}")

    return check


def port_number(flag: str, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ConfigError(f"{flag} must be between 0 and 65535, got {value}")


def header_names(flag: str, value: str | tuple[str, ...]) -> None:
    """HTTP header names (one, or a list): printable ASCII, no space or colon."""
    for name in (value,) if isinstance(value, str) else value:
        if not name or not name.isascii() or not name.isprintable() or any(c in name for c in " :"):
            raise ConfigError(f"{flag}: invalid header name '{name}'")


def existing_file(flag: str, value: str) -> None:
    if value and not os.path.isfile(value):
        raise ConfigError(f"{flag}: no such file: {value}")
