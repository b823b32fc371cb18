"""History storage settings: which backend holds conversations and stored responses, and its bounds."""

from __future__ import annotations

import os
from dataclasses import dataclass

from smg.settings import ConfigError
from smg.storage.lock import check

HISTORY_BACKENDS = ("sqlite", "memory", "postgres", "redis", "none")


@dataclass(frozen=True)
class HistorySettings:
    history_backend: str = "sqlite"
    history_db_path: str = ""  # "" = default_history_db_path()
    history_memory_max_responses: int = 10_000
    history_memory_max_items: int = 100_000
    history_memory_retention_secs: float = 86_400.0
    postgres_db_url: str | None = None
    postgres_pool_max: int = 16
    postgres_op_timeout_secs: float = 5.0
    redis_url: str | None = None
    redis_pool_max: int = 16
    redis_retention_days: int = 30
    redis_op_timeout_secs: float = 5.0

    def validate_history(self) -> None:
        if self.history_backend not in HISTORY_BACKENDS:
            raise ConfigError(f"--history-backend must be one of {', '.join(HISTORY_BACKENDS)}, got '{self.history_backend}'")
        if self.history_backend == "sqlite":
            folder = os.path.dirname(os.path.abspath(self.history_path()))
            while not os.path.exists(folder):
                folder = os.path.dirname(folder)
            if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
                raise ConfigError(
                    f"history database {self.history_path()}: {folder} is not a writable folder "
                    "(set --history-db-path or $SMG_HISTORY_DB_PATH, or --history-backend memory)"
                )
            if self.history_path_is_default():  # two gateways must not share the default file unknowingly
                problem = check(self.history_path())
                if problem is not None:
                    raise ConfigError(problem)
        if self.history_backend == "postgres" and not self.postgres_db_url:
            raise ConfigError("--history-backend postgres needs --postgres-db-url (or $POSTGRES_DB_URL)")
        if self.history_backend == "redis" and not self.redis_url:
            raise ConfigError("--history-backend redis needs --redis-url (or $REDIS_URL)")
        for flag, value in (
            ("--history-memory-max-responses", self.history_memory_max_responses),
            ("--history-memory-max-items", self.history_memory_max_items),
            ("--postgres-pool-max", self.postgres_pool_max),
            ("--redis-pool-max", self.redis_pool_max),
        ):
            if value < 1:
                raise ConfigError(f"{flag} must be at least 1, got {value}")
        for flag, seconds in (
            ("--postgres-op-timeout-secs", self.postgres_op_timeout_secs),
            ("--redis-op-timeout-secs", self.redis_op_timeout_secs),
        ):
            if not seconds > 0:
                raise ConfigError(f"{flag} must be positive, got {seconds}")
        if self.history_memory_retention_secs < 0:
            raise ConfigError("--history-memory-retention-secs must not be negative (0 keeps records until a bound drops them)")
        if self.redis_retention_days != -1 and self.redis_retention_days < 1:
            raise ConfigError("--redis-retention-days must be at least 1, or -1 to keep records")

    def history_path(self) -> str:
        """The SQLite file: --history-db-path, else $SMG_HISTORY_DB_PATH, else the user's data directory."""
        if self.history_db_path:
            return self.history_db_path
        if os.environ.get("SMG_HISTORY_DB_PATH"):
            return os.environ["SMG_HISTORY_DB_PATH"]
        data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        return os.path.join(data, "smg", "history.db")

    def history_path_is_default(self) -> bool:
        """No flag or variable named the SQLite file: every gateway on the host would pick the same one,
        so it is locked for one gateway at a time (a named file may be shared on purpose)."""
        return not self.history_db_path and not os.environ.get("SMG_HISTORY_DB_PATH")
