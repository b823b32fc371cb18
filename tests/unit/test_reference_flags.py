"""Every flag of the reference's `smg launch` parses: to a feature, or to one line naming what is
missing and the alternative. Never argparse's `unrecognized arguments`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from smg.cli import build_parser, gateway_config_from
from smg.config import GatewayConfig
from smg.config.switching import BEGIN, END, ReferenceFlag, declared, reference_flags, table
from smg.settings import ConfigError, shape_of
from tests.unit.test_settings import argv_for, examples, files, generic  # noqa: F401 (files is a fixture)

ROOT = Path(__file__).resolve().parents[2]
HELP = ROOT.parent / "shared" / "reference" / "smg-1.13-launch-help.txt"


def parse_help(text: str) -> list[tuple[str, str, str]]:
    """(group, spellings, arity) of each option in the reference's help, in order."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "options:")
    group, rows = "General", []
    for line in lines[start + 1 :]:
        if re.match(r"^[A-Z][^:]*:$", line):
            group = line[:-1]
            continue
        m = re.match(r"^  (--[a-zA-Z][^ ].*?)(?:\s{2,}|$)", line)
        if not m:
            continue
        names, arity = [], "0"
        for part in re.split(r", (?=--)", m.group(1)):
            name, _, rest = part.partition(" ")
            names.append(name)
            if rest.startswith("{"):
                arity = "choice:" + rest[1 : rest.index("}")]
            elif rest.startswith("["):
                arity = "*"
            elif rest.endswith("...]"):
                arity = "+"
            else:
                arity = "1" if rest else "0"
        rows.append((group, " ".join(names), arity))
    return rows


def test_the_fact_list_is_the_reference_help() -> None:
    if not HELP.exists():
        pytest.skip(f"{HELP} is not here (it sits in ../shared beside a checkout)")
    ours = [(r.group, " ".join(r.names), r.arity) for r in reference_flags()]
    assert ours == parse_help(HELP.read_text())
    assert len(ours) == 212


CHOICE_NEEDS: dict[str | tuple[str, str], list[str]] = {  # a choice refused alone: what it needs beside it
    "postgres": ["--postgres-db-url", "postgresql://u@127.0.0.1/db"],
    "redis": ["--redis-url", "redis://127.0.0.1:6379/0"],
    "file": ["--discovery-file", "/nonexistent/workers.json"],  # may appear after the start
    **{("--assignment-mode", mode): ["--routing-key-override"] for mode in ("random", "min_load", "min_group", "delegate")},
}


def reference_argv(row: ReferenceFlag, name: str) -> list[str]:
    if row.arity == "0":
        return [name]
    if row.choices:
        return [name, row.choices[0]]
    return [name, "x"] if row.arity == "1" else [name, "x", "y"]


def test_every_refused_flag_stops_the_start_with_one_line_naming_it() -> None:
    parser = build_parser("launch")
    flags = declared()
    refused = 0
    for row in reference_flags():
        _, flag = flags[row.names[0]]
        if flag.refuse is None:
            continue
        for name in row.names:
            with pytest.raises(ConfigError) as info:
                gateway_config_from(parser.parse_args(reference_argv(row, name)))
            message = str(info.value)
            assert message.startswith(f"{row.names[0]}: ") and "\n" not in message, message
            assert re.search(r"not supported|does not apply|has no|not offer", message), message
            refused += 1
    assert refused >= 80  # a floor: the test must have checked something


def test_every_implemented_flag_takes_a_value_of_the_reference_arity(
    files: dict[str, str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for env in ("POSTGRES_DB_URL", "REDIS_URL", "SMG_MESH_KEY"):
        monkeypatch.delenv(env, raising=False)
    parser = build_parser("launch")
    flags = declared()
    special = examples(files)
    implemented = 0
    for row in reference_flags():
        f, flag = flags[row.names[0]]
        if flag.refuse is not None:
            continue
        shape = shape_of(GatewayConfig, f.name)
        value: Any
        value, companions = special.get(f.name, (None, []))
        if value is None:
            value = True if shape.item is bool else generic(f.default, flag, shape.item)
        for name in row.names:
            if name in flag.negations:
                config = gateway_config_from(parser.parse_args([name]))
                assert getattr(config, f.name) is False, name
                continue
            config = gateway_config_from(parser.parse_args([*argv_for(name, value, flag.many), *companions]))
            assert getattr(config, f.name) == value, name
        for choice in row.choices:
            refusal = dict(flag.refused_choices).get(choice)
            if refusal is None:
                assert choice in (flag.choices or ()), f"{row.names[0]} {choice}: neither offered nor refused"
                argv = [row.names[0], choice, *CHOICE_NEEDS.get((row.names[0], choice), CHOICE_NEEDS.get(choice, []))]
                assert getattr(gateway_config_from(parser.parse_args(argv)), f.name) == choice
            else:
                with pytest.raises(ConfigError, match=f"^{re.escape(row.names[0])} {choice}: .*not supported"):
                    gateway_config_from(parser.parse_args([row.names[0], choice]))
        implemented += 1
    assert implemented >= 70


def test_the_readme_table_is_made_from_the_declarations() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    assert readme[start:end] == table(), "regenerate it: python -m smg.config.switching"


def test_a_refused_flag_exits_2_with_one_line_before_anything_starts() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "smg", "--pd-disaggregation", "--prefill", "http://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "smg: error: --pd-disaggregation: PD/EPD disaggregation is not supported by smg; route to whole workers "
        "with --worker-urls"
    ]
