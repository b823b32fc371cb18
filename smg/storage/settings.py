"""History storage settings: which backend holds conversations and stored responses, and its bounds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from smg.settings import ConfigError, at_least, non_negative, positive, setting
from smg.storage.lock import check

HISTORY_BACKENDS = ("sqlite", "memory", "postgres", "redis", "none")


def _retention_days(flag: str, days: int) -> None:
    if days != -1 and days < 1:
        raise ConfigError(f"{flag} must be at least 1, or -1 to keep records")


G_HISTORY = "history storage (Conversations and Responses APIs)"


@dataclass(frozen=True)
class HistorySettings:
    """Where conversations and stored responses live; `smg.config.GatewayConfig` composes it."""

    GROUP: ClassVar[str] = G_HISTORY

    history_backend: str = setting(
        "sqlite",
        "--history-backend",
        choices=HISTORY_BACKENDS,
        refused_choices={"oracle": "Oracle history is not supported by smg; use --history-backend postgres"},
        differs="adds sqlite, the default (the reference's default is memory); oracle is refused",
        help="where conversations and stored responses live: sqlite (an embedded file; the default), memory (bounded, lost on restart), postgres (shared by a cluster), redis, none (APIs off)",
    )
    history_db_path: str = setting(
        "",
        "--history-db-path",
        metavar="FILE",
        help="sqlite: the database file (default: $SMG_HISTORY_DB_PATH, else ~/.local/share/smg/history.db)",
    )
    history_memory_max_responses: int = setting(
        10000,
        "--history-memory-max-responses",
        check=at_least(1),
        help="memory: stored responses kept, the oldest go first",
    )
    history_memory_max_items: int = setting(
        100000,
        "--history-memory-max-items",
        check=at_least(1),
        help="memory: conversation items kept; the least recently used conversations go first, whole",
    )
    history_memory_retention_secs: float = setting(
        86400.0,
        "--history-memory-retention-secs",
        check=non_negative("0 keeps records until a bound drops them"),
        help="memory: a conversation is dropped this long after its last use, a response this long after it was stored; 0 keeps them until a bound drops them",
    )
    postgres_db_url: str | None = setting(
        None,
        "--postgres-db-url",
        metavar="URL",
        env="POSTGRES_DB_URL",
        help="postgres: e.g. postgres://user:password@host:5432/db (default: $POSTGRES_DB_URL)",
    )
    postgres_pool_max: int = setting(16, "--postgres-pool-max", check=at_least(1), help="postgres: most connections")
    postgres_op_timeout_secs: float = setting(
        5.0,
        "--postgres-op-timeout-secs",
        check=positive,
        help="postgres: bound on each storage call (pool wait, connect, statement); past it: 503 storage_unavailable",
    )
    redis_url: str | None = setting(None, "--redis-url", metavar="URL", env="REDIS_URL", help="redis: (default: $REDIS_URL)")
    redis_pool_max: int = setting(16, "--redis-pool-max", check=at_least(1), help="redis: most connections")
    redis_retention_days: int = setting(
        30,
        "--redis-retention-days",
        check=_retention_days,
        help="redis: records expire this many days after their last write; -1 keeps them",
    )
    redis_op_timeout_secs: float = setting(
        5.0,
        "--redis-op-timeout-secs",
        check=positive,
        help="redis: bound on each storage call; past it: 503 storage_unavailable",
    )

    def validate_history(self) -> None:
        """What involves several fields or the machine (each field's own checks run in `check_fields`)."""
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
