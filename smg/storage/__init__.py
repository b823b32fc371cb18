"""History storage: conversations, their items and stored responses, behind one interface."""

from __future__ import annotations

import os
import time

from smg.storage.base import HistoryBackend
from smg.storage.settings import HistorySettings


def open_backend(config: HistorySettings) -> HistoryBackend | None:
    """The backend `--history-backend` names, configured from the flags (None: history off).
    Nothing connects here: the first call (the migration at start) does."""
    kind = config.history_backend
    if kind == "none":
        return None
    if kind == "memory":
        from smg.storage.memory import MemoryHistory

        return MemoryHistory(
            time.time,
            config.history_memory_max_responses,
            config.history_memory_max_items,
            config.history_memory_retention_secs or None,
        )
    if kind == "sqlite":
        from smg.storage.sql import SqlHistory

        path = config.history_path()
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        lock = None
        if config.history_path_is_default():  # held until close (or exit): see smg.storage.lock
            from smg.storage.lock import acquire, release

            lock = acquire(path)
        try:
            backend = SqlHistory.sqlite(path)
        except BaseException:
            if lock is not None:
                release(lock)
            raise
        backend.lock_fd = lock
        return backend
    if kind == "postgres":
        from smg.storage.sql import SqlHistory

        return SqlHistory.postgres(config.postgres_db_url or "", config.postgres_pool_max, config.postgres_op_timeout_secs)
    if kind == "redis":
        from smg.storage.redis_store import RedisHistory

        retention = None if config.redis_retention_days == -1 else config.redis_retention_days
        return RedisHistory(config.redis_url or "", config.redis_pool_max, config.redis_op_timeout_secs, retention)
    raise ValueError(f"unknown history backend '{kind}'")
