"""Logging: plain text or one JSON object per line (`--log-json`).

Ordinary log records go through `logging`. The per-request access line is
on the hot path, so `AccessLog` formats it directly and buffers it, flushing
every `FLUSH_SECS` from a task in the node's nursery (and at shutdown),
instead of paying a LogRecord and a write() per request. Both paths share
the same line formats.

With `--log-dir` both paths also go to a `LogFile` in that directory (see
its docstring for the naming and rotation), in the console's format.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from logging.handlers import TimedRotatingFileHandler
from typing import Any, TextIO

import trio

from smg.settings import ConfigError

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
FLUSH_SECS = 0.1
_process: int | None = None  # one of the processes of --processes N: its lines say which (`setup_logging`)


def timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def format_text(created: float, level: str, logger: str, msg: str, fields: dict[str, Any] | None) -> str:
    if _process is not None:
        logger = f"{logger}[{_process}]"
    line = f"{timestamp(created)} {level:<5} {logger}: {msg}"
    if fields:
        line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
    return line


def format_json(created: float, level: str, logger: str, msg: str, fields: dict[str, Any] | None) -> str:
    out: dict[str, Any] = {"ts": timestamp(created), "level": level.lower(), "logger": logger, "msg": msg}
    if _process is not None:
        out["process"] = _process
    if fields:
        out.update(fields)
    return json.dumps(out, separators=(",", ":"), default=str)


class _Formatter(logging.Formatter):
    """Fields passed as `extra={"fields": {...}}` become key=value pairs or JSON keys."""

    def __init__(self, json_format: bool) -> None:
        super().__init__()
        self._format = format_json if json_format else format_text

    def format(self, record: logging.LogRecord) -> str:
        line = self._format(record.created, record.levelname, record.name, record.getMessage(), getattr(record, "fields", None))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class LogFile(TimedRotatingFileHandler):
    """The log file of `--log-dir`: `smg.log`, rotated daily at midnight UTC.

    The reference (tracing-appender, daily) writes one file per UTC day, named
    `smg.YYYY-MM-DD`, and keeps them all. Here the live file has a fixed name, so `tail -F DIR/smg.log` follows
    it across days; a finished day is renamed `smg.YYYY-MM-DD.log` (the UTC day its
    lines belong to, the reference's date in its name) and only the newest
    `KEEP_DAYS` of those are kept, so the directory cannot fill a disk over the
    months. A restart on a later day rotates the previous day's file at its first
    line (the stdlib handler dates the live file by its modification time).
    """

    NAME = "smg.log"
    KEEP_DAYS = 14

    def __init__(self, directory: str, name: str = NAME) -> None:
        super().__init__(os.path.join(directory, name), when="midnight", utc=True, backupCount=self.KEEP_DAYS, encoding="utf-8")
        self.namer = _dated_name

    def write_lines(self, text: str) -> None:
        """Lines already formatted (`AccessLog`'s batch): one rollover check and one write per batch."""
        record = logging.LogRecord(AccessLog.LOGGER, logging.INFO, __file__, 0, text, None, None)
        self.acquire()
        try:
            if self.shouldRollover(record):
                self.doRollover()
            if self.stream is None:  # a rollover that failed to reopen
                self.stream = self._open()
            self.stream.write(text + "\n")
            self.stream.flush()
        except Exception:
            self.handleError(record)
        finally:
            self.release()


def _dated_name(default: str) -> str:
    """`DIR/smg.log.2024-01-15` (the stdlib's name) -> `DIR/smg.2024-01-15.log` (the reference's date, a `.log` suffix)."""
    head, _, day = default.rpartition(".")
    return head.removesuffix(".log") + f".{day}.log"


def open_log_dir(directory: str, name: str = LogFile.NAME) -> LogFile:
    """The `LogFile` in `directory`, created when missing; a path that cannot hold it is a `ConfigError`.

    Checked before anything starts, so a typo or a read-only volume stops the gateway
    with one line instead of a gateway that runs while its file log is silently lost.
    """
    path = os.path.abspath(directory)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--log-dir: {directory} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--log-dir: cannot create {directory}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):  # rotation renames files: the directory itself must be writable
        raise ConfigError(f"--log-dir: {directory} is not writable")
    try:
        return LogFile(path, name)
    except OSError as exc:
        raise ConfigError(f"--log-dir: cannot write {os.path.join(directory, name)}: {exc.strerror or exc}") from None


def setup_logging(level: str = "info", json_format: bool = False, log_dir: str | None = None, process: int | None = None) -> None:
    """stderr always; with `log_dir` also the rotating `LogFile` there, in the same format.

    `process`: this is gateway process `process` of `--processes N`: its lines name it (the
    logger as `smg.server[1]`, a `process` key in JSON), and its file is `smg.p<N>.log` (the
    processes do not share one file, which each would rotate on its own).

    Raises `ConfigError` (one line) when `log_dir` cannot be used; nothing is changed then.
    """
    global _process
    formatter = _Formatter(json_format)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_dir is not None:
        handlers.append(open_log_dir(log_dir, LogFile.NAME if process is None else f"smg.p{process}.log"))
    _process = process
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, LogFile):
            old.close()
    root.handlers[:] = handlers
    root.setLevel(LEVELS[level])
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def log_files() -> list[LogFile]:
    """The `LogFile`s `setup_logging` installed (none without `--log-dir`)."""
    return [h for h in logging.getLogger().handlers if isinstance(h, LogFile)]


class AccessLog:
    """Buffered access lines in the same format as the rest of the log."""

    LOGGER = "smg.access"

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._pending: list[str] = []
        self._wakeup = trio.Event()  # set by the first line written after a flush
        self._logger = logging.getLogger(self.LOGGER)
        self._format = format_text

    def configure(self, json_format: bool) -> None:
        self._format = format_json if json_format else format_text

    def enabled_for(self, level: int) -> bool:
        return self._logger.isEnabledFor(level)

    def write(self, level: int, msg: str, fields: dict[str, Any]) -> None:
        self._pending.append(self._format(time.time(), logging.getLevelName(level), self.LOGGER, msg, fields))
        if len(self._pending) >= 1024:
            self.flush()
        elif not self._wakeup.is_set():
            self._wakeup.set()

    def flush(self) -> None:
        if self._pending:
            text = "\n".join(self._pending)
            self._pending.clear()
            stream = self._stream or sys.stderr
            stream.write(text + "\n")
            stream.flush()
            for log_file in log_files():
                log_file.write_lines(text)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Flush `FLUSH_SECS` after the first pending line, until cancelled, then once more.

        Asleep while nothing is written: an idle gateway does not wake up ten times a second.
        """
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                await trio.sleep(FLUSH_SECS)  # batch what arrives meanwhile
                self._wakeup = trio.Event()
                self.flush()
        finally:
            self.flush()
