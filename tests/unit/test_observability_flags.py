"""`--prometheus-duration-buckets` reaches every duration histogram; `--log-dir` writes the
console's lines (access lines included) to a rotating file, or stops the start with one line."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smg.cli import build_parser, gateway_config_from, main
from smg.context import GatewayContext
from smg.observability.logs import AccessLog, LogFile, setup_logging
from smg.observability.metrics import LATENCY_BUCKETS, GatewayMetrics
from smg.settings import ConfigError

DAY = 86400


# --prometheus-duration-buckets


def _bounds_by_histogram(scrape: str) -> dict[str, set[str]]:
    """`le` values of each `*_bucket` series in a scrape, by histogram name."""
    out: dict[str, set[str]] = {}
    for name, le in re.findall(r'^(\w+)_bucket\{[^}]*le="([^"]+)"', scrape, re.MULTILINE):
        out.setdefault(name, set()).add(le)
    return out


def _observe_every_duration(metrics: GatewayMetrics) -> None:
    metrics.http_duration("POST", "/v1/chat/completions").observe(0.2)
    metrics.ttft("m").observe(0.2)
    metrics.storage_duration("sqlite", "get_response").observe(0.2)
    metrics.cache_match_ratio.observe(0.5)


def _duration_histograms(scrape: str) -> set[str]:
    return {name for name in re.findall(r"^# TYPE (\w+) histogram$", scrape, re.MULTILINE) if name.endswith("_seconds")}


def test_given_buckets_replace_the_built_in_ones_in_every_duration_histogram() -> None:
    config = gateway_config_from(build_parser("launch").parse_args(["--prometheus-duration-buckets", "0.05", "0.5", "5"]))
    metrics = GatewayContext.create(config).metrics
    _observe_every_duration(metrics)
    scrape = metrics.render().decode()
    bounds = _bounds_by_histogram(scrape)
    durations = _duration_histograms(scrape)
    # a duration histogram added later without being observed here fails this line, not silently
    assert durations == {
        "smg_http_request_duration_seconds",
        "smg_router_ttft_seconds",
        "smg_storage_operation_duration_seconds",
    }
    for name in durations:
        assert bounds[name] == {"0.05", "0.5", "5.0", "+Inf"}, name
    assert len(bounds["smg_router_cache_match_ratio"]) == 13  # a ratio, not a duration: its own buckets


def test_without_the_flag_the_built_in_buckets_stay() -> None:
    metrics = GatewayContext.create(gateway_config_from(build_parser("launch").parse_args([]))).metrics
    _observe_every_duration(metrics)
    bounds = _bounds_by_histogram(metrics.render().decode())
    assert bounds["smg_router_ttft_seconds"] == {str(float(b)) for b in LATENCY_BUCKETS} | {"+Inf"}


@pytest.mark.parametrize("values", [["1", "0.5"], ["0", "1"], ["1", "1"], ["abc"]])
def test_bad_buckets_are_one_line(values: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--prometheus-duration-buckets", *values])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smg: error:") and "--prometheus-duration-buckets" in lines[0]


# --log-dir


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """`setup_logging` replaces the root handlers: give the next test the ones it had."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if isinstance(handler, LogFile):
            handler.close()
    root.handlers[:], root.level = handlers, level


@pytest.mark.parametrize("json_format", [False, True])
@pytest.mark.usefixtures("restore_logging")
def test_the_file_gets_the_console_lines_and_the_access_lines(tmp_path: Path, json_format: bool) -> None:
    log_dir = tmp_path / "a" / "b"  # missing: created, parents included
    setup_logging("info", json_format, str(log_dir))
    logging.getLogger("smg.gateway").info("smg gateway listening on http://x", extra={"fields": {"workers": 2}})
    logging.getLogger("smg.gateway").debug("below the level")
    access = AccessLog(io.StringIO())
    access.configure(json_format)
    access.write(logging.INFO, "POST /v1/chat/completions", {"request_id": "r-1", "status": 200})
    access.flush()
    lines = (log_dir / "smg.log").read_text().splitlines()
    assert len(lines) == 2
    if json_format:
        first, second = map(json.loads, lines)
        assert (first["logger"], first["msg"], first["workers"]) == ("smg.gateway", "smg gateway listening on http://x", 2)
        assert (second["logger"], second["request_id"], second["status"]) == ("smg.access", "r-1", 200)
    else:
        assert lines[0].endswith(" INFO  smg.gateway: smg gateway listening on http://x workers=2")
        assert lines[1].endswith(" INFO  smg.access: POST /v1/chat/completions request_id=r-1 status=200")


@pytest.mark.parametrize("json_format", [False, True])
@pytest.mark.usefixtures("restore_logging")
def test_a_process_of_several_names_itself_and_has_its_own_file(tmp_path: Path, json_format: bool) -> None:
    try:
        setup_logging("info", json_format, str(tmp_path), process=1)
        logging.getLogger("smg.server").info("listening")
        access = AccessLog(io.StringIO())
        access.configure(json_format)
        access.write(logging.INFO, "GET /health", {"status": 200})
        access.flush()
        lines = (tmp_path / "smg.p1.log").read_text().splitlines()
        assert not (tmp_path / "smg.log").exists()
        if json_format:
            assert [(line["logger"], line["process"]) for line in map(json.loads, lines)] == [
                ("smg.server", 1),
                ("smg.access", 1),
            ]
        else:
            assert lines[0].endswith(" INFO  smg.server[1]: listening") and " smg.access[1]: GET /health" in lines[1]
    finally:
        setup_logging("info", json_format)  # process None again for the tests after this one


@pytest.mark.usefixtures("restore_logging")
def test_a_previous_days_file_is_rotated_to_its_date_and_old_days_are_bounded(tmp_path: Path) -> None:
    """A restart on a later day: the live file, last written three days ago, is renamed for
    its UTC day at the first batch; of the dated files, only the newest `KEEP_DAYS` stay."""
    live = tmp_path / "smg.log"
    live.write_text("old line\n")
    then = time.time() - 3 * DAY
    os.utime(live, (then, then))
    for day in range(1, 21):
        (tmp_path / f"smg.2000-01-{day:02d}.log").write_text(f"day {day}\n")
    (tmp_path / "notes.txt").write_text("not ours\n")

    setup_logging("info", False, str(tmp_path))
    access = AccessLog(io.StringIO())
    access.write(logging.INFO, "GET /v1/models", {"status": 200})
    access.flush()

    rotated = tmp_path / f"smg.{time.strftime('%Y-%m-%d', time.gmtime(then))}.log"
    assert rotated.read_text() == "old line\n"
    assert live.read_text().splitlines()[-1].endswith("smg.access: GET /v1/models status=200")
    dated = sorted(p.name for p in tmp_path.glob("smg.*-*-*.log"))
    assert len(dated) == LogFile.KEEP_DAYS and dated[-1] == rotated.name
    assert dated[0] == "smg.2000-01-08.log"  # the 7 oldest of the 21 went
    assert (tmp_path / "notes.txt").exists()


def _unusable(tmp: Path, kind: str) -> Path:
    (tmp / "file").write_text("")
    if kind == "a file":
        return tmp / "file"
    if kind == "under a file":
        return tmp / "file" / "logs"
    (tmp / "smg.log").mkdir()  # the log file's own name is taken
    return tmp


@pytest.mark.parametrize(
    ("kind", "words"),
    [("a file", "exists and is not a directory"), ("under a file", "cannot create"), ("taken name", "cannot write")],
)
@pytest.mark.usefixtures("restore_logging")
def test_an_unusable_directory_is_a_config_error_and_changes_nothing(tmp_path: Path, kind: str, words: str) -> None:
    root = logging.getLogger()
    before = root.handlers[:]
    with pytest.raises(ConfigError, match=f"^--log-dir: .*{words}"):
        setup_logging("info", False, str(_unusable(tmp_path, kind)))
    assert root.handlers == before


@pytest.mark.usefixtures("restore_logging")
def test_the_command_line_stops_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exit_:
        main(["--log-dir", str(tmp_path / "file" / "logs")])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smg: error: --log-dir: cannot create"), lines
