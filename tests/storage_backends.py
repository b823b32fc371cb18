"""History backends for tests: every one the gateway supports, each in its own fresh namespace.

PostgreSQL gets a database of its own (created from the server's `test`
database, dropped after); Redis a key prefix of its own (deleted after).
A server that is not running skips its backend with the reason, loudly.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from smg.storage.base import HistoryBackend
from smg.storage.memory import MemoryHistory
from smg.storage.redis_store import RedisHistory
from smg.storage.sql import SqlHistory

POSTGRES_ADMIN_URL = os.environ.get("SMG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SMG_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BACKENDS = ("memory", "sqlite", "postgres", "redis")


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty database; yields its URL."""
    import psycopg

    name = f"smg_test_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL NOT TESTED: cannot connect to {POSTGRES_ADMIN_URL}: {str(exc).strip()[:200]}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def backend(kind: str, tmp_path: Path) -> Iterator[HistoryBackend]:
    if kind == "memory":
        yield MemoryHistory(time.time)
    elif kind == "sqlite":
        store = SqlHistory.sqlite(str(tmp_path / "history.db"))
        try:
            yield store
        finally:
            store.close()
    elif kind == "postgres":
        with postgres_database() as url:
            store = SqlHistory.postgres(url, pool_size=4, op_timeout_secs=5)
            try:
                yield store
            finally:
                store.close()
    elif kind == "redis":
        store = RedisHistory(REDIS_URL, pool_size=4, op_timeout_secs=5, prefix=f"smg-test-{secrets.token_hex(6)}:")
        try:
            store.redis.ping()
        except redis.RedisError as exc:
            store.close()
            pytest.skip(f"Redis NOT TESTED: cannot reach {REDIS_URL}: {exc}")
        try:
            yield store
        finally:
            keys = list(store.redis.scan_iter(match=store.prefix + "*"))
            if keys:
                store.redis.delete(*keys)
            store.close()
    else:
        raise ValueError(kind)
