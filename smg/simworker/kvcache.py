"""Prefix KV-cache model of an inference engine (sans-IO).

A prompt is cut into blocks of `block_tokens` tokens; block i is named by the
chained hash h_i = blake2b-64(h_{i-1} || block_i), so a block hit implies the
whole prefix before it is cached too, as in a paged-attention prefix cache.
Only full blocks are cached. Eviction is least-recently-used over blocks.
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

    def __init__(self, capacity_blocks: int, block_tokens: int = BLOCK_TOKENS) -> None:
        if capacity_blocks < 1:
            raise ValueError("capacity_blocks must be at least 1")
        self.capacity_blocks = capacity_blocks
        self.block_tokens = block_tokens
        self._blocks: OrderedDict[bytes, None] = OrderedDict()
        self.stats = CacheStats()

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
        self._store(hashes)
        cached = matched * self.block_tokens
        stats = self.stats
        stats.lookups += 1
        stats.prompt_tokens += len(tokens)
        stats.cached_tokens += cached
        return cached

    def retain(self, tokens: list[str]) -> None:
        """Keep the KV of prompt + generated tokens, as a radix-cache engine does after decoding."""
        self._store(chain_hashes(tokens, self.block_tokens))

    def _store(self, hashes: list[bytes]) -> None:
        blocks = self._blocks
        for h in hashes:
            if h in blocks:
                blocks.move_to_end(h)
            else:
                blocks[h] = None
        overflow = len(blocks) - self.capacity_blocks
        for _ in range(max(0, overflow)):
            blocks.popitem(last=False)
        self.stats.evictions += max(0, overflow)

    def flush(self) -> None:
        self._blocks.clear()
