"""Approximate prefix trees of what each worker has cached (sans-IO).

One tree per model holds the prompts routed to every worker ("tenant"): a
radix tree whose nodes carry, per tenant, the last time that tenant was
given a prompt through the node. Invariant: a node's tenants include every
tenant of its children, so the deepest node on a path that still lists a
tenant is how far that tenant's cache matches.

Works on `str` (HTTP mode: characters, `StringTree`) and on `tuple[int, ...]`
(token ids, `TokenTree`). Times are passed in; nothing here reads a clock.
Size is the total length of all edge labels, a budget shared by the tenants
of the tree; `evict` drops least-recently-used (leaf, tenant) entries.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from typing import Generic, TypeVar

Seq = TypeVar("Seq", str, tuple[int, ...])


class _Node(Generic[Seq]):
    __slots__ = ("children", "label", "parent", "tenants")

    def __init__(self, label: Seq, parent: _Node[Seq] | None) -> None:
        self.label: Seq = label
        self.parent: _Node[Seq] | None = parent
        self.children: dict[object, _Node[Seq]] = {}  # first element of the child's label -> child
        self.tenants: dict[str, float] = {}  # tenant -> last access


def _common_length(a: Sequence[object], a_start: int, b: Sequence[object]) -> int:
    """Length of the common prefix of a[a_start:] and b, by halving slice comparisons."""
    low, high = 0, min(len(a) - a_start, len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if a[a_start + low : a_start + mid] == b[low:mid]:
            low = mid
        else:
            high = mid - 1
    return low


class RadixTree(Generic[Seq]):
    def __init__(self, empty: Seq) -> None:
        self._empty: Seq = empty
        self.root: _Node[Seq] = _Node(empty, None)
        self.size = 0  # total label length
        self.tenant_size: dict[str, int] = {}  # tenant -> length of the labels it is on

    def match(self, seq: Seq) -> dict[str, int]:
        """For each tenant, how many leading elements of `seq` it has cached."""
        best: dict[str, int] = {}
        node, pos = self.root, 0
        while pos < len(seq):
            child = node.children.get(seq[pos])
            if child is None:
                break
            label = child.label
            whole = seq[pos : pos + len(label)] == label
            pos += len(label) if whole else _common_length(seq, pos, label)
            for tenant in child.tenants:
                best[tenant] = pos
            if not whole:
                break  # diverged inside this edge, or `seq` ended there
            node = child
        return best

    def insert(self, seq: Seq, tenant: str, now: float) -> None:
        """Record that `tenant` was given `seq` at `now`."""
        node, pos = self.root, 0
        node.tenants[tenant] = now
        added = 0
        while pos < len(seq):
            child = node.children.get(seq[pos])
            if child is None:
                leaf = _Node(seq[pos:], node)
                leaf.tenants[tenant] = now
                node.children[seq[pos]] = leaf
                self.size += len(leaf.label)
                added += len(leaf.label)
                break
            label = child.label
            common = len(label) if seq[pos : pos + len(label)] == label else _common_length(seq, pos, label)
            if common < len(label):
                child = self._split(child, common)
            if tenant not in child.tenants:
                added += len(child.label)
            child.tenants[tenant] = now
            pos += common
            node = child
        if added:
            self.tenant_size[tenant] = self.tenant_size.get(tenant, 0) + added

    def _split(self, child: _Node[Seq], at: int) -> _Node[Seq]:
        """Cut `child`'s label at `at`; returns the new upper node."""
        parent = child.parent
        assert parent is not None
        upper = _Node(child.label[:at], parent)
        upper.tenants = dict(child.tenants)
        parent.children[child.label[0]] = upper
        child.label = child.label[at:]
        child.parent = upper
        upper.children[child.label[0]] = child
        return upper

    def evict(self, max_size: int) -> int:
        """Drop least-recently-used (leaf, tenant) entries until size <= max_size; returns entries dropped."""
        if self.size <= max_size:
            return 0
        heap: list[tuple[float, int, _Node[Seq], str]] = []
        tiebreak = itertools.count()
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            heap.extend((seen, next(tiebreak), node, tenant) for tenant, seen in self._leaf_entries(node))
        heapq.heapify(heap)
        dropped = 0
        while self.size > max_size and heap:
            seen, _, node, tenant = heapq.heappop(heap)
            if node.tenants.get(tenant) != seen or any(tenant in c.tenants for c in node.children.values()):
                continue  # stale: refreshed, merged away, or no longer a leaf for this tenant
            affected = self._drop(node, tenant)
            dropped += 1
            if affected is not None:
                for entry in self._leaf_entries(affected):
                    heapq.heappush(heap, (entry[1], next(tiebreak), affected, entry[0]))
        return dropped

    def _leaf_entries(self, node: _Node[Seq]) -> list[tuple[str, float]]:
        """(tenant, last access) for the tenants no child of `node` carries."""
        if node is self.root:
            return []
        children = node.children.values()
        return [(t, seen) for t, seen in node.tenants.items() if not any(t in c.tenants for c in children)]

    def _drop(self, node: _Node[Seq], tenant: str) -> _Node[Seq] | None:
        """Remove `tenant` from a node it is a leaf of; returns the node whose leaves may have changed."""
        del node.tenants[tenant]
        self.tenant_size[tenant] = self.tenant_size.get(tenant, 0) - len(node.label)
        if node.tenants or node.children or node.parent is None:
            return node
        parent = node.parent
        del parent.children[node.label[0]]
        self.size -= len(node.label)
        return self._merge_into(parent)

    def _merge_into(self, node: _Node[Seq]) -> _Node[Seq]:
        """Fold a single child with the same tenants into `node`, keeping the tree compact."""
        if node is self.root or len(node.children) != 1:
            return node
        (child,) = node.children.values()
        if child.tenants.keys() != node.tenants.keys():
            return node
        node.label = node.label + child.label
        node.children = child.children
        for grandchild in node.children.values():
            grandchild.parent = node
        for tenant, seen in child.tenants.items():
            node.tenants[tenant] = max(seen, node.tenants[tenant])
        child.tenants = {}  # heap entries pointing at the old child are now stale
        return node

    def remove_tenant(self, tenant: str) -> None:
        """Forget a worker entirely (it left the pool)."""
        stack = [self.root]
        leaves = []
        while stack:
            node = stack.pop()
            if tenant in node.tenants:
                stack.extend(node.children.values())
                leaves.append(node)
        for node in reversed(leaves):  # deepest first
            if node is self.root:
                node.tenants.pop(tenant, None)
            elif tenant in node.tenants:
                self._drop(node, tenant)
        self.tenant_size.pop(tenant, None)


class StringTree(RadixTree[str]):
    def __init__(self) -> None:
        super().__init__("")


class TokenTree(RadixTree[tuple[int, ...]]):
    def __init__(self) -> None:
        super().__init__(())
