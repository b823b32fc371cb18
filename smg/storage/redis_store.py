"""History in Redis: shared by every gateway that points at it, records expiring after a retention.

Layout under a key prefix (`smg:` by default):
- `conv:<id>`: a hash (tenant, created_at, metadata as JSON);
- `conv:<id>:order`: a sorted set of item ids scored by `conv:<id>:seq`, the
  order items were added in, so `after` and `has_more` are range queries;
- `conv:<id>:items`: a hash item id -> item JSON;
- `resp:<id>`: the stored response as JSON.
Writes to one conversation run in MULTI/EXEC under WATCH of its hash, so a
conversation deleted meanwhile gets no orphan items. Every write renews
the record's expiry (`retention_days`; None keeps records).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, TypeVar

import redis

from smg.storage.base import StorageError, UnknownCursor
from smg.storage.records import Conversation, Item, Page, StoredResponse

SCHEMA_VERSION = 1
T = TypeVar("T")


class RedisHistory:
    name = "redis"
    blocking = True

    def __init__(
        self, url: str, pool_size: int = 16, op_timeout_secs: float = 5.0, retention_days: int | None = 30, prefix: str = "smg:"
    ) -> None:
        self.pool_size = pool_size
        self.prefix = prefix
        self.ttl = retention_days * 86_400 if retention_days and retention_days > 0 else None
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=op_timeout_secs,  # waiting for a free connection
            socket_timeout=op_timeout_secs,
            socket_connect_timeout=op_timeout_secs,
        )
        self.redis = redis.Redis(connection_pool=pool, decode_responses=False)

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def migrate(self) -> int:
        with _errors():
            self.redis.setnx(self._key("schema_version"), SCHEMA_VERSION)
            return int(self.redis.get(self._key("schema_version")) or SCHEMA_VERSION)

    def close(self) -> None:
        self.redis.close()
        self.redis.connection_pool.disconnect()

    # -- conversations -----------------------------------------------------------------

    def create_conversation(self, conversation: Conversation, items: list[Item]) -> None:
        key = self._key("conv", conversation.id)
        with _errors(), self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "tenant": conversation.tenant,
                    "created_at": conversation.created_at,
                    "metadata": json.dumps(conversation.metadata),
                },
            )
            self._append(pipe, conversation.id, items, first_seq=1)
            self._expire(pipe, conversation.id)
            pipe.execute()

    def _conversation(self, client: Any, tenant: str, conversation_id: str) -> Conversation | None:
        fields = client.hgetall(self._key("conv", conversation_id))
        if not fields or fields.get(b"tenant", b"").decode() != tenant:
            return None
        return Conversation(conversation_id, tenant, int(fields[b"created_at"]), json.loads(fields.get(b"metadata", b"{}")))

    def get_conversation(self, tenant: str, conversation_id: str) -> Conversation | None:
        with _errors():
            return self._conversation(self.redis, tenant, conversation_id)

    def update_conversation(self, tenant: str, conversation_id: str, metadata: dict[str, str]) -> Conversation | None:
        def change(pipe: Any) -> Conversation | None:
            found = self._conversation(pipe, tenant, conversation_id)
            if found is None:
                return None
            pipe.multi()
            pipe.hset(self._key("conv", conversation_id), "metadata", json.dumps(metadata))
            self._expire(pipe, conversation_id)
            found.metadata = dict(metadata)
            return found

        return self._watched(conversation_id, change)

    def delete_conversation(self, tenant: str, conversation_id: str) -> bool:
        def delete(pipe: Any) -> bool:
            if self._conversation(pipe, tenant, conversation_id) is None:
                return False
            pipe.multi()
            pipe.delete(*self._conversation_keys(conversation_id))
            return True

        return self._watched(conversation_id, delete)

    def add_items(self, tenant: str, conversation_id: str, items: list[Item]) -> bool:
        def add(pipe: Any) -> bool:
            if self._conversation(pipe, tenant, conversation_id) is None:
                return False
            seq = int(pipe.get(self._key("conv", conversation_id, "seq")) or 0)
            pipe.multi()
            self._append(pipe, conversation_id, items, first_seq=seq + 1)
            self._expire(pipe, conversation_id)
            return True

        return self._watched(conversation_id, add)

    def list_items(self, tenant: str, conversation_id: str, limit: int, order: str, after: str | None) -> Page | None:
        with _errors():
            if self._conversation(self.redis, tenant, conversation_id) is None:
                return None
            order_key = self._key("conv", conversation_id, "order")
            if after is None:
                low, high = "-inf", "+inf"
            else:
                score = self.redis.zscore(order_key, after)
                if score is None:
                    raise UnknownCursor(after)
                low, high = (f"({score}", "+inf") if order == "asc" else ("-inf", f"({score}")
            if order == "asc":
                ids = self.redis.zrangebyscore(order_key, low, high, start=0, num=limit + 1)
            else:
                ids = self.redis.zrevrangebyscore(order_key, high, low, start=0, num=limit + 1)
            chosen: list[Any] = ids[:limit]
            data: list[Any] = self.redis.hmget(self._key("conv", conversation_id, "items"), chosen) if chosen else []
            items = [_item(conversation_id, tenant, raw) for raw in data if raw is not None]
            return Page(items, len(ids) > limit)

    def get_item(self, tenant: str, conversation_id: str, item_id: str) -> Item | None:
        with _errors():
            if self._conversation(self.redis, tenant, conversation_id) is None:
                return None
            raw: Any = self.redis.hget(self._key("conv", conversation_id, "items"), item_id)
            return _item(conversation_id, tenant, raw) if raw is not None else None

    def delete_item(self, tenant: str, conversation_id: str, item_id: str) -> bool:
        def delete(pipe: Any) -> bool:
            if self._conversation(pipe, tenant, conversation_id) is None:
                return False
            if not pipe.hexists(self._key("conv", conversation_id, "items"), item_id):
                return False
            pipe.multi()
            pipe.zrem(self._key("conv", conversation_id, "order"), item_id)
            pipe.hdel(self._key("conv", conversation_id, "items"), item_id)
            return True

        return self._watched(conversation_id, delete)

    # -- responses -----------------------------------------------------------------------

    def put_responses(self, responses: list[StoredResponse]) -> None:
        with _errors(), self.redis.pipeline(transaction=True) as pipe:
            for response in responses:
                pipe.set(self._key("resp", response.id), json.dumps(asdict(response)), ex=self.ttl)
            pipe.execute()

    def get_response(self, tenant: str, response_id: str) -> StoredResponse | None:
        with _errors():
            raw = self.redis.get(self._key("resp", response_id))
        if raw is None:
            return None
        found = StoredResponse(**json.loads(raw))
        return found if found.tenant == tenant else None

    def delete_response(self, tenant: str, response_id: str) -> bool:
        if self.get_response(tenant, response_id) is None:
            return False
        with _errors():
            return bool(self.redis.delete(self._key("resp", response_id)))

    # -- helpers -------------------------------------------------------------------------

    def _conversation_keys(self, conversation_id: str) -> list[str]:
        return [self._key("conv", conversation_id, *suffix) for suffix in ((), ("order",), ("items",), ("seq",))]

    def _append(self, pipe: Any, conversation_id: str, items: list[Item], first_seq: int) -> None:
        if not items:
            return
        pipe.zadd(self._key("conv", conversation_id, "order"), {i.id: first_seq + n for n, i in enumerate(items)})
        pipe.hset(self._key("conv", conversation_id, "items"), mapping={i.id: json.dumps(i.data) for i in items})
        pipe.set(self._key("conv", conversation_id, "seq"), first_seq + len(items) - 1)

    def _expire(self, pipe: Any, conversation_id: str) -> None:
        if self.ttl is not None:
            for key in self._conversation_keys(conversation_id):
                pipe.expire(key, self.ttl)

    def _watched(self, conversation_id: str, body: Callable[[Any], T]) -> T:
        """Run `body` on a pipeline watching the conversation's hash; it reads, calls
        `pipe.multi()` and queues its writes. A concurrent change retries it."""
        with _errors(), self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self._key("conv", conversation_id), self._key("conv", conversation_id, "seq"))
                    result = body(pipe)
                    if pipe.explicit_transaction:
                        pipe.execute()
                    else:
                        pipe.unwatch()
                    return result
                except redis.WatchError:
                    continue


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise StorageError(f"{type(exc).__name__}: {exc}"[:200]) from exc


def _item(conversation_id: str, tenant: str, raw: bytes) -> Item:
    data = json.loads(raw)
    return Item(data["id"], conversation_id, tenant, 0, data)
