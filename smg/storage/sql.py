"""History in a SQL database through SQLAlchemy Core: SQLite (embedded) or PostgreSQL.

The schema is versioned: `migrate()` runs at start, in one transaction,
every migration newer than the version recorded in `smg_schema_version`,
so an upgraded gateway brings an existing database forward and a request
never finds a table missing. Every operation is one transaction. SQLite
runs in WAL mode, so readers never wait for the writer and a killed
process loses nothing it had committed.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from smg.storage.base import StorageError, UnknownCursor
from smg.storage.records import Conversation, Item, Page, StoredResponse

metadata = sa.MetaData()
ID, TENANT = sa.String(64), sa.String(256)
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER keys only

schema_version = sa.Table("smg_schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))
conversations = sa.Table(
    "smg_conversations",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant", TENANT, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("metadata", sa.Text, nullable=False),
)
items = sa.Table(
    "smg_conversation_items",
    metadata,
    sa.Column("pos", ROW_ID, primary_key=True, autoincrement=True),  # the order items were added in
    sa.Column("id", ID, nullable=False),
    sa.Column("conversation_id", ID, sa.ForeignKey("smg_conversations.id", ondelete="CASCADE"), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.UniqueConstraint("conversation_id", "id", name="smg_conversation_items_conversation_item"),
    sa.Index("smg_conversation_items_by_conversation", "conversation_id", "pos"),
)
responses = sa.Table(
    "smg_responses",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant", TENANT, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("previous_response_id", ID),
    sa.Column("conversation_id", ID),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("input_items", sa.Text, nullable=False),
)


def _v1(conn: Connection) -> None:
    for table in (conversations, items, responses):
        table.create(conn)  # with its indexes


# version -> migration; append, never edit: a database at version N runs N+1.. in order
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v1}
CURRENT = max(MIGRATIONS)


class SqlHistory:
    blocking = True

    def __init__(self, engine: Engine, pool_size: int) -> None:
        self.engine = engine
        self.name = "sqlite" if engine.dialect.name == "sqlite" else "postgres"
        self.pool_size = pool_size
        self.lock_fd: int | None = None  # the default SQLite file's lock (smg.storage.lock), released on close
        self._writer: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self.name == "sqlite" else contextlib.nullcontext()
        )

    @classmethod
    def sqlite(cls, path: str, pool_size: int = 4) -> SqlHistory:
        engine = sa.create_engine(
            f"sqlite:///{path}", pool_size=pool_size, max_overflow=0, connect_args={"check_same_thread": False, "timeout": 10}
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
            cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses nothing committed
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return cls(engine, pool_size)

    @classmethod
    def postgres(cls, url: str, pool_size: int = 16, op_timeout_secs: float | None = None) -> SqlHistory:
        options = f"-c statement_timeout={int(op_timeout_secs * 1000)}" if op_timeout_secs else ""
        engine = sa.create_engine(
            postgres_url(url),
            pool_size=pool_size,
            max_overflow=0,
            pool_pre_ping=True,  # a restarted database costs one failed ping, not one failed request
            pool_timeout=op_timeout_secs or 30,
            connect_args={"options": options, "connect_timeout": max(1, int(op_timeout_secs or 10))},
        )
        return cls(engine, pool_size)

    def migrate(self) -> int:
        with self._write() as conn:
            if not sa.inspect(conn).has_table(schema_version.name):
                schema_version.create(conn)
                conn.execute(schema_version.insert().values(version=0))
            version = conn.execute(sa.select(schema_version.c.version)).scalar_one()
            for number in range(version + 1, CURRENT + 1):
                MIGRATIONS[number](conn)
            if version < CURRENT:
                conn.execute(schema_version.update().values(version=CURRENT))
            return int(max(version, CURRENT))

    def close(self) -> None:
        self.engine.dispose()
        if self.lock_fd is not None:
            from smg.storage.lock import release

            release(self.lock_fd)
            self.lock_fd = None

    def _begin(self) -> contextlib.AbstractContextManager[Connection]:
        return _transaction(self.engine)

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction. SQLite takes one writer at a time and makes the others sleep and
        retry in its busy handler (1, 2, 5 ... ms); queueing them on a lock here instead took
        stored responses through a gateway from 291 to 392 a second (bench/history.py).
        PostgreSQL needs no such lock."""
        with self._writer, _transaction(self.engine) as conn:
            yield conn

    # -- conversations -----------------------------------------------------------------

    def create_conversation(self, conversation: Conversation, new_items: list[Item]) -> None:
        with self._write() as conn:
            conn.execute(
                conversations.insert().values(
                    id=conversation.id,
                    tenant=conversation.tenant,
                    created_at=conversation.created_at,
                    metadata=json.dumps(conversation.metadata),
                )
            )
            _insert_items(conn, new_items)

    def get_conversation(self, tenant: str, conversation_id: str) -> Conversation | None:
        with self._begin() as conn:
            return _conversation(conn, tenant, conversation_id)

    def update_conversation(self, tenant: str, conversation_id: str, metadata: dict[str, str]) -> Conversation | None:
        with self._write() as conn:
            done = conn.execute(
                conversations.update()
                .where(conversations.c.id == conversation_id, conversations.c.tenant == tenant)
                .values(metadata=json.dumps(metadata))
            )
            return _conversation(conn, tenant, conversation_id) if done.rowcount else None

    def delete_conversation(self, tenant: str, conversation_id: str) -> bool:
        with self._write() as conn:
            if _conversation(conn, tenant, conversation_id) is None:
                return False
            conn.execute(items.delete().where(items.c.conversation_id == conversation_id))
            conn.execute(conversations.delete().where(conversations.c.id == conversation_id))
            return True

    def add_items(self, tenant: str, conversation_id: str, new_items: list[Item]) -> bool:
        with self._write() as conn:
            if _conversation(conn, tenant, conversation_id) is None:
                return False
            _insert_items(conn, new_items)
            return True

    def list_items(self, tenant: str, conversation_id: str, limit: int, order: str, after: str | None) -> Page | None:
        with self._begin() as conn:
            if _conversation(conn, tenant, conversation_id) is None:
                return None
            query = sa.select(items).where(items.c.conversation_id == conversation_id)
            if after is not None:
                cursor = conn.execute(
                    sa.select(items.c.pos).where(items.c.conversation_id == conversation_id, items.c.id == after)
                ).scalar()
                if cursor is None:
                    raise UnknownCursor(after)
                query = query.where(items.c.pos > cursor if order == "asc" else items.c.pos < cursor)
            query = query.order_by(items.c.pos.asc() if order == "asc" else items.c.pos.desc()).limit(limit + 1)
            rows = conn.execute(query).all()
            return Page([_item(row, tenant) for row in rows[:limit]], len(rows) > limit)

    def get_item(self, tenant: str, conversation_id: str, item_id: str) -> Item | None:
        with self._begin() as conn:
            if _conversation(conn, tenant, conversation_id) is None:
                return None
            row = conn.execute(sa.select(items).where(items.c.conversation_id == conversation_id, items.c.id == item_id)).first()
            return _item(row, tenant) if row is not None else None

    def delete_item(self, tenant: str, conversation_id: str, item_id: str) -> bool:
        with self._write() as conn:
            if _conversation(conn, tenant, conversation_id) is None:
                return False
            done = conn.execute(items.delete().where(items.c.conversation_id == conversation_id, items.c.id == item_id))
            return bool(done.rowcount)

    # -- responses -----------------------------------------------------------------------

    def put_responses(self, records: list[StoredResponse]) -> None:
        rows = [
            {
                "id": r.id,
                "tenant": r.tenant,
                "created_at": r.created_at,
                "previous_response_id": r.previous_response_id,
                "conversation_id": r.conversation_id,
                "data": json.dumps(r.data),
                "input_items": json.dumps(r.input_items),
            }
            for r in {r.id: r for r in records}.values()  # the last write of an id wins
        ]
        insert = (sqlite_insert if self.name == "sqlite" else postgres_insert)(responses)
        upsert = insert.on_conflict_do_update(
            index_elements=[responses.c.id], set_={c: insert.excluded[c] for c in rows[0] if c != "id"}
        )
        with self._write() as conn:
            conn.execute(upsert, rows)

    def get_response(self, tenant: str, response_id: str) -> StoredResponse | None:
        with self._begin() as conn:
            row = conn.execute(sa.select(responses).where(responses.c.id == response_id, responses.c.tenant == tenant)).first()
        if row is None:
            return None
        return StoredResponse(
            row.id,
            row.tenant,
            row.created_at,
            json.loads(row.data),
            json.loads(row.input_items),
            row.previous_response_id,
            row.conversation_id,
        )

    def delete_response(self, tenant: str, response_id: str) -> bool:
        with self._write() as conn:
            done = conn.execute(responses.delete().where(responses.c.id == response_id, responses.c.tenant == tenant))
            return bool(done.rowcount)


@contextlib.contextmanager
def _transaction(engine: Engine) -> Iterator[Connection]:
    """`engine.begin()`, with database errors as StorageError (503 to the client)."""
    try:
        with engine.begin() as conn:
            yield conn
    except SQLAlchemyError as exc:
        raise StorageError(_reason(exc)) from exc


def _reason(exc: SQLAlchemyError) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]


def postgres_url(url: str) -> str:
    """`postgres://` and `postgresql://` URLs use the psycopg (3) driver."""
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def _conversation(conn: Connection, tenant: str, conversation_id: str) -> Conversation | None:
    row = conn.execute(
        sa.select(conversations).where(conversations.c.id == conversation_id, conversations.c.tenant == tenant)
    ).first()
    return Conversation(row.id, row.tenant, row.created_at, json.loads(row.metadata)) if row is not None else None


def _insert_items(conn: Connection, new_items: list[Item]) -> None:
    if new_items:
        conn.execute(
            items.insert(),
            [
                {"id": i.id, "conversation_id": i.conversation_id, "created_at": i.created_at, "data": json.dumps(i.data)}
                for i in new_items
            ],
        )


def _item(row: Any, tenant: str) -> Item:
    return Item(row.id, row.conversation_id, tenant, row.created_at, json.loads(row.data))
