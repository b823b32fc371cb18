"""An advisory lock beside the default SQLite history file, held for the gateway's lifetime.

Without `--history-db-path` (or `$SMG_HISTORY_DB_PATH`) every gateway on a host
picks the same file under the user's data directory, so a second gateway
would silently share the first one's conversations. The first gateway holds
`<file>.lock` with `flock` until it exits (the kernel releases it even on
SIGKILL); a second one stops at start with a one-line error. A path named
explicitly is not locked: SQLite in WAL mode coordinates several processes
on one host, so sharing a named file is a choice the operator can make.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time

from smg.settings import ConfigError

RETRIES = 5  # a checker's brief shared lock must not fail a gateway starting at the same instant
RETRY_SECS = 0.01


class HistoryLocked(ConfigError):
    """Another process holds the default history file: a start-up error of one line (exit 2)."""


def lock_path(db_path: str) -> str:
    return db_path + ".lock"


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode().strip()
        if text:
            return f"pid {int(text)}"
    return "another process"


def _message(db_path: str, holder: str) -> str:
    return (
        f"history database {db_path} is in use by {holder} (another gateway on this host?): give each gateway "
        "its own --history-db-path, or name the same one on purpose to share it"
    )


def check(db_path: str) -> str | None:
    """Why `db_path` cannot be used now (held by another process), else None. Holds nothing afterwards
    and creates nothing: a missing lock file is held by nobody."""
    try:
        fd = os.open(lock_path(db_path), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _message(db_path, _holder(fd))
    except OSError:
        return None  # a filesystem without flock: nothing to check
    finally:
        os.close(fd)  # releases the shared lock, if taken
    return None


def acquire(db_path: str) -> int:
    """Lock `db_path` for this process (until `release` or exit); the descriptor holds the lock.
    Raises HistoryLocked when another process holds it."""
    fd = os.open(lock_path(db_path), os.O_RDWR | os.O_CREAT, 0o644)
    for attempt in range(RETRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt == RETRIES - 1:
                holder = _holder(fd)
                os.close(fd)
                raise HistoryLocked(_message(db_path, holder)) from None
            time.sleep(RETRY_SECS)
        except OSError:
            return fd  # a filesystem without flock (some network mounts): nothing can be locked there
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
