"""Logging: plain text or one JSON object per line (`--log-json`).

Ordinary log records go through `logging`. The per-request access line is
on the hot path, so `AccessLog` formats it directly and buffers it, flushing
every `FLUSH_SECS` from a task in the node's nursery (and at shutdown),
instead of paying a LogRecord and a write() per request. Both paths share
the same line formats.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

import trio

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
FLUSH_SECS = 0.1


def timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def format_text(created: float, level: str, logger: str, msg: str, fields: dict[str, Any] | None) -> str:
    line = f"{timestamp(created)} {level:<5} {logger}: {msg}"
    if fields:
        line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
    return line


def format_json(created: float, level: str, logger: str, msg: str, fields: dict[str, Any] | None) -> str:
    out: dict[str, Any] = {"ts": timestamp(created), "level": level.lower(), "logger": logger, "msg": msg}
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


def setup_logging(level: str = "info", json_format: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(json_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # hypercorn's own error log repeats what we log; keep only its warnings.
    logging.getLogger("hypercorn.error").setLevel(max(LEVELS[level], logging.WARNING))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


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
            stream = self._stream or sys.stderr
            stream.write("\n".join(self._pending) + "\n")
            stream.flush()
            self._pending.clear()

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
