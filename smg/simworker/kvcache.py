"""Prefix KV-cache model of an inference engine (sans-IO).

A prompt is cut into blocks of `block_tokens` tokens; block i is named by the
chained hash h_i = blake2b-64(h_{i-1} || block_i), so a block hit implies the
whole prefix before it is cached too, as in a paged-attention prefix cache.
Only full blocks are cached. Eviction is least-recently-used over blocks.

With `record_events` the cache also keeps what changed as KV events (blocks
stored with their parent and tokens, blocks removed, the cache cleared), the
records an engine publishes on its KV-event stream (gRPC SubscribeKvEvents);
the engine shell drains them after each step (`drain_events`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from smg.hashing import chain_hashes as _chain

BLOCK_TOKENS = 16


def tokenize(text: str) -> list[str]:
    """Whitespace tokens: cheap, deterministic, and good enough for a cache model."""
    return text.split()


def chain_hashes(tokens: list[str], block_tokens: int = BLOCK_TOKENS) -> list[bytes]:
    """Chained 64-bit hashes of the full blocks of `tokens`."""
    return _chain(
        " ".join(tokens[start : start + block_tokens]).encode()
        for start in range(0, len(tokens) - block_tokens + 1, block_tokens)
    )


@dataclass(frozen=True, slots=True)
class KvStored:
    """New blocks, each the child of the one before; `parent` holds the first (None: a prompt's start)."""

    parent: bytes | None
    blocks: tuple[tuple[bytes, tuple[str, ...]], ...]  # (chain hash, the block's tokens)


@dataclass(frozen=True, slots=True)
class KvRemoved:
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class KvCleared:
    pass


KvEvent = KvStored | KvRemoved | KvCleared


@dataclass
class CacheStats:
    lookups: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    evictions: int = 0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class PrefixKVCache:
    """Bounded LRU set of chained block hashes."""

    def __init__(self, capacity_blocks: int, block_tokens: int = BLOCK_TOKENS, *, record_events: bool = False) -> None:
        if capacity_blocks < 1:
            raise ValueError("capacity_blocks must be at least 1")
        self.capacity_blocks = capacity_blocks
        self.block_tokens = block_tokens
        self._blocks: OrderedDict[bytes, tuple[bytes | None, tuple[str, ...]]] = OrderedDict()  # hash -> (parent, tokens)
        self.stats = CacheStats()
        self._events: list[KvEvent] | None = [] if record_events else None

    def __len__(self) -> int:
        return len(self._blocks)

    def admit(self, tokens: list[str]) -> int:
        """Look the prompt up, then cache all its full blocks; returns cached tokens."""
        hashes = chain_hashes(tokens, self.block_tokens)
        blocks = self._blocks
        matched = 0
        for h in hashes:
            if h not in blocks:
                break
            matched += 1
        self._store(hashes, tokens)
        cached = matched * self.block_tokens
        stats = self.stats
        stats.lookups += 1
        stats.prompt_tokens += len(tokens)
        stats.cached_tokens += cached
        return cached

    def peek(self, tokens: list[str]) -> int:
        """The tokens `admit` would find cached now, without changing the cache or its figures
        (what a request arriving now will not have to prefill, as far as the cache knows)."""
        blocks = self._blocks
        matched = 0
        for h in chain_hashes(tokens, self.block_tokens):
            if h not in blocks:
                break
            matched += 1
        return matched * self.block_tokens

    def retain(self, tokens: list[str]) -> None:
        """Keep the KV of prompt + generated tokens, as a radix-cache engine does after decoding."""
        self._store(chain_hashes(tokens, self.block_tokens), tokens)

    def _store(self, hashes: list[bytes], tokens: list[str]) -> None:
        blocks, events, size = self._blocks, self._events, self.block_tokens
        run: list[tuple[bytes, tuple[str, ...]]] = []  # consecutive new blocks: one stored event
        run_parent: bytes | None = None
        parent: bytes | None = None
        for i, h in enumerate(hashes):
            if h in blocks:
                blocks.move_to_end(h)
                if run and events is not None:
                    events.append(KvStored(run_parent, tuple(run)))
                    run = []
            else:
                block = tuple(tokens[i * size : (i + 1) * size])
                blocks[h] = (parent, block)
                if not run:
                    run_parent = parent
                run.append((h, block))
            parent = h
        if run and events is not None:
            events.append(KvStored(run_parent, tuple(run)))
        overflow = len(blocks) - self.capacity_blocks
        removed = [blocks.popitem(last=False)[0] for _ in range(max(0, overflow))]
        if removed and events is not None:
            events.append(KvRemoved(tuple(removed)))
        self.stats.evictions += len(removed)

    def flush(self) -> None:
        self._blocks.clear()
        if self._events is not None:
            self._events.append(KvCleared())

    def drain_events(self) -> list[KvEvent]:
        """The events since the last drain (none unless `record_events`)."""
        events = self._events
        if not events:
            return []
        self._events = []
        return events

    def live_blocks(self) -> list[tuple[bytes, bytes | None, tuple[str, ...]]]:
        """Every cached block as (hash, parent, tokens), parents before children: a snapshot.
        A block whose parent was evicted is listed with it as its parent all the same."""
        listed: set[bytes] = set()
        out: list[tuple[bytes, bytes | None, tuple[str, ...]]] = []
        blocks = self._blocks

        def visit(h: bytes) -> None:
            chain = []
            while h not in listed:
                chain.append(h)
                listed.add(h)
                parent = blocks[h][0]
                if parent is None or parent not in blocks:
                    break
                h = parent
            for block in reversed(chain):
                parent, tokens = blocks[block]
                out.append((block, parent, tokens))

        for h in blocks:
            visit(h)
        return out
