"""Cache-aware routing: send a prompt where its prefix is most likely cached.

Per model, a radix tree (characters, or token ids with `--tokenizer-path`)
and a chain-hash index remember which worker was given which prompts. A
request for gRPC workers comes with the prompt's token ids as the engine gets
them (chat template applied: `RequestInfo.tokens`), and goes through a token
tree of its own, so the tree holds what the engine caches; its chain hashes
are of token blocks, so every gateway of a mesh (same tokenizer, same
template) records and matches the same prefix summaries. Rule, as in the
reference:

1. If the pool is imbalanced ((max - min load) > `--balance-abs-threshold`
   and max > `--balance-rel-threshold` x min), take the least-loaded worker.
2. Else take the worker with the longest prefix match (tree or chain hashes,
   whichever is longer; ties go to the less loaded) when matched / total >=
   `--cache-threshold`; otherwise the least-loaded worker.
3. Record the prompt under the chosen worker.

Among equally loaded workers the one holding the least cached text wins, so
distinct prompts spread over the pool instead of piling on the first worker.
With the HA mesh, matches also consult the prefix summaries every gateway
shares (`smg.cluster.prefix_store`), and every choice is recorded there.
Trees are bounded by `--max-tree-size` (a budget per model, shared by its
workers): `maintain` evicts least-recently-used entries, and so does an
insert that takes a tree past 1.25x the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from smg.routing.chain_index import ChainIndex
from smg.routing.policies.base import PolicyConfig, RequestInfo, load_of
from smg.routing.radix import RadixTree, StringTree, TokenTree
from smg.routing.text import TEXT_BLOCK_CHARS, TOKEN_BLOCK, text_chain, token_chain
from smg.workers.registry import Worker

HIGH_WATER = 1.25


class SharedChains(Protocol):
    """Chain-hash records shared with other gateways (the HA mesh's prefix summaries)."""

    def match(self, model: str, chain: list[bytes]) -> dict[str, int]: ...
    def record(self, model: str, worker: str, chain: list[bytes]) -> None: ...
    def footprint(self, model: str) -> dict[str, int]: ...


class CacheAwarePolicy:
    name = "cache_aware"
    needs_text = True
    needs_client_key = False

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self._tokenize = config.tokenize
        self._block = TOKEN_BLOCK if self._tokenize else TEXT_BLOCK_CHARS
        self.trees: dict[str, RadixTree] = {}  # type: ignore[type-arg]  # the routing text's (or --tokenizer-path's ids)
        self.chains: dict[str, ChainIndex] = {}
        self.engine_trees: dict[str, TokenTree] = {}  # the engine's prompt ids (gRPC workers)
        self.engine_chains: dict[str, ChainIndex] = {}
        self.on_match: Callable[[float], None] | None = None  # e.g. a histogram's observe
        self.shared: SharedChains | None = None  # with --ha-mesh: what every gateway routed where

    def _stores(self, model: str) -> tuple[RadixTree, ChainIndex]:  # type: ignore[type-arg]
        tree = self.trees.get(model)
        if tree is None:
            tree = self.trees[model] = TokenTree() if self._tokenize else StringTree()
            self.chains[model] = ChainIndex(max(1, self.config.max_tree_size // self._block))
        return tree, self.chains[model]

    def _engine_stores(self, model: str) -> tuple[RadixTree, ChainIndex]:  # type: ignore[type-arg]
        tree = self.engine_trees.get(model)
        if tree is None:
            tree = self.engine_trees[model] = TokenTree()
            self.engine_chains[model] = ChainIndex(max(1, self.config.max_tree_size // TOKEN_BLOCK))
        return tree, self.engine_chains[model]

    def select(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
        cfg = self.config
        seq: str | tuple[int, ...]
        if request.tokens is not None:
            tree, index = self._engine_stores(request.model)
            seq, block = request.tokens, TOKEN_BLOCK
            chain = token_chain(seq)
        elif self._tokenize is not None:
            tree, index = self._stores(request.model)
            seq, block = self._tokenize(request.text), TOKEN_BLOCK
            chain = token_chain(seq)
        else:
            tree, index = self._stores(request.model)
            seq, block = request.text, TEXT_BLOCK_CHARS
            chain = text_chain(seq)
        loads = [load_of(w) for w in workers]
        low, high = min(loads), max(loads)
        if high - low > cfg.balance_abs_threshold and high > cfg.balance_rel_threshold * low:
            chosen = self._least_loaded(workers, loads, self._footprint(request.model, tree))
        else:
            by_tree = tree.match(seq)
            by_chain = index.match(chain)
            if self.shared is not None:
                for worker_id, blocks in self.shared.match(request.model, chain).items():
                    if blocks > by_chain.get(worker_id, 0):
                        by_chain[worker_id] = blocks
            best: Worker | None = None
            best_len = best_load = 0
            for worker, load in zip(workers, loads, strict=True):
                matched = max(by_tree.get(worker.id, 0), by_chain.get(worker.id, 0) * block)
                if matched > best_len or (best is not None and matched == best_len and load < best_load):
                    best, best_len, best_load = worker, matched, load
            ratio = best_len / len(seq) if seq else 0.0
            if self.on_match is not None:
                self.on_match(ratio)
            if best is None or ratio < cfg.cache_threshold:
                best = self._least_loaded(workers, loads, self._footprint(request.model, tree))
            chosen = best
        tree.insert(seq, chosen.id, request.now)
        index.insert(chain, chosen.id, request.now)
        if self.shared is not None:
            self.shared.record(request.model, chosen.id, chain)
        if tree.size > HIGH_WATER * cfg.max_tree_size:
            tree.evict(cfg.max_tree_size)
        return chosen

    def _footprint(self, model: str, tree: RadixTree) -> dict[str, int]:  # type: ignore[type-arg]
        """How much cached text each worker holds: what every gateway sent it, with the HA mesh."""
        return self.shared.footprint(model) if self.shared is not None else tree.tenant_size

    @staticmethod
    def _least_loaded(workers: Sequence[Worker], loads: list[int], footprint: dict[str, int]) -> Worker:
        best = min(range(len(workers)), key=lambda i: (loads[i], footprint.get(workers[i].id, 0), workers[i].id))
        return workers[best]

    def _all_stores(self) -> list[tuple[str, RadixTree, ChainIndex]]:  # type: ignore[type-arg]
        stores: list[tuple[str, RadixTree, ChainIndex]] = [(m, t, self.chains[m]) for m, t in self.trees.items()]  # type: ignore[type-arg]
        stores += [(m, t, self.engine_chains[m]) for m, t in self.engine_trees.items()]
        return stores

    def maintain(self, now: float) -> int:
        """Periodic eviction (`--eviction-interval-secs`); returns entries dropped."""
        dropped = 0
        for _, tree, index in self._all_stores():
            dropped += tree.evict(self.config.max_tree_size)
            dropped += index.evict()
        return dropped

    def forget_workers(self, present: set[str]) -> None:
        """Drop the records of workers that left the pool."""
        for _, tree, index in self._all_stores():
            for tenant in [t for t in tree.tenant_size if t not in present]:
                tree.remove_tenant(tenant)
                index.remove_worker(tenant)

    def tree_sizes(self) -> dict[str, int]:
        """Entries per model (characters or token ids; a model with HTTP and gRPC workers adds both trees)."""
        sizes: dict[str, int] = {}
        for model, tree, _ in self._all_stores():
            sizes[model] = sizes.get(model, 0) + tree.size
        return sizes
