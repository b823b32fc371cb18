"""Radix trees, chain index and the cache_aware policy as pure classes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from smg.routing.chain_index import ChainIndex
from smg.routing.policies import PolicyConfig, RequestInfo, make_policy
from smg.routing.radix import StringTree, TokenTree
from smg.routing.text import text_chain, token_chain
from smg.routing.tokenizer import load_tokenizer
from smg.workers.registry import Worker


def test_tree_match_per_tenant_and_split() -> None:
    tree = StringTree()
    tree.insert("hello world", "a", 1)
    tree.insert("hello there", "b", 2)
    assert tree.match("hello world!") == {"a": 11, "b": 6}
    assert tree.match("hello") == {"a": 5, "b": 5}
    assert tree.match("help") == {"a": 3, "b": 3}
    assert tree.match("xyz") == {}
    assert tree.size == len("hello world") + len("there")
    assert tree.tenant_size == {"a": 11, "b": 11}
    tree.insert("hello world", "b", 3)
    assert tree.match("hello world") == {"a": 11, "b": 11}
    assert tree.size == len("hello world") + len("there")


def test_tree_evicts_least_recently_used_leaves_and_stays_consistent() -> None:
    tree = StringTree()
    tree.insert("aaaa1111", "a", 1)
    tree.insert("aaaa2222", "b", 2)
    tree.insert("bbbbbbbb", "a", 3)
    assert tree.size == 4 + 4 + 4 + 8
    dropped = tree.evict(16)
    assert dropped == 1 and tree.size == 16
    assert tree.match("aaaa1111") == {"a": 4, "b": 4}  # the deepest part went first, as in a KV cache
    assert tree.match("bbbbbbbb") == {"a": 8}
    tree.evict(0)
    assert tree.size == 0 and tree.match("aaaa2222") == {} and tree.root.children == {}


def test_tree_remove_tenant_and_token_mode() -> None:
    tree = StringTree()
    for i in range(20):
        tree.insert(f"shared prefix {i}", "a" if i % 2 else "b", i)
    tree.remove_tenant("a")
    assert all(set(tree.match(f"shared prefix {i}")) <= {"b"} for i in range(20))
    assert "a" not in tree.tenant_size
    tokens = TokenTree()
    tokens.insert((1, 2, 3, 4), "a", 0)
    tokens.insert((1, 2, 9), "b", 0)
    assert tokens.match((1, 2, 3, 5)) == {"a": 3, "b": 2}


def test_tree_against_a_brute_force_model() -> None:
    """Random inserts, matches and evictions agree with a plain list of (text, tenant)."""
    rng = random.Random(7)
    tree = StringTree()
    alphabet = "ab"
    inserted: list[tuple[str, str]] = []
    for step in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        tenant = rng.choice("xyz")
        tree.insert(text, tenant, step)
        inserted.append((text, tenant))
        probe = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        expected: dict[str, int] = {}
        for known, who in inserted:
            common = 0
            while common < min(len(known), len(probe)) and known[common] == probe[common]:
                common += 1
            if common:
                expected[who] = max(expected.get(who, 0), common)
        assert tree.match(probe) == expected
    total = tree.size
    tree.evict(total // 2)
    assert tree.size <= total // 2
    assert sum(tree.tenant_size.values()) >= tree.size


def test_chain_index_match_insert_evict() -> None:
    index = ChainIndex(max_entries=6)
    text = "x" * 64 * 4
    chain = text_chain(text)
    index.insert(chain, "a", 1)
    index.insert(chain[:2], "b", 2)
    assert index.match(chain) == {"a": 4, "b": 2}
    assert index.entries == 6
    index.insert(text_chain("y" * 128), "c", 3)
    assert index.evict() == 2  # a's two oldest entries
    index.remove_worker("b")
    assert "b" not in index.match(chain)


def workers(n: int) -> list[Worker]:
    return [Worker.from_url(f"http://w{i}:1") for i in range(n)]


def test_cache_aware_sticks_shared_prefixes_and_spreads_distinct_prompts() -> None:
    pool = workers(4)
    policy = make_policy("cache_aware")
    system = "You are a helpful assistant. " * 20
    first = policy.select(pool, RequestInfo("m", text=system + "question 1", now=1))
    for i in range(2, 10):
        assert policy.select(pool, RequestInfo("m", text=system + f"question {i}", now=i)) is first
    distinct = {policy.select(pool, RequestInfo("m", text=f"{i} " * 100 + "unrelated", now=20 + i)).id for i in range(8)}
    # equal loads: the worker holding the least cached text wins, so the one holding
    # the long shared prefix gets none of these until the others hold as much
    assert len(distinct) == 3 and first.id not in distinct


def test_cache_aware_imbalance_and_threshold() -> None:
    pool = workers(2)
    policy = make_policy("cache_aware", PolicyConfig(balance_abs_threshold=4, balance_rel_threshold=1.5, cache_threshold=0.5))
    home = policy.select(pool, RequestInfo("m", text="p" * 500, now=0))
    other = pool[1] if home is pool[0] else pool[0]
    home.in_flight = 10
    assert policy.select(pool, RequestInfo("m", text="p" * 500, now=1)) is other  # imbalanced: least loaded
    home.in_flight, other.in_flight = 1, 2  # both hold the prefix now: the less loaded wins
    assert policy.select(pool, RequestInfo("m", text="p" * 500 + "q" * 100, now=2)) is home
    home.in_flight = 2
    other.in_flight = 0
    low_share = "p" * 100 + "z" * 400  # 20 % matched: below the threshold
    assert policy.select(pool, RequestInfo("m", text=low_share, now=3)) is other


def test_cache_aware_evicts_to_budget_and_forgets_workers() -> None:
    pool = workers(2)
    policy = make_policy("cache_aware", PolicyConfig(max_tree_size=1000))
    for i in range(40):
        policy.select(pool, RequestInfo("m", text=f"{i:04d}" * 50, now=i))
    assert policy.tree_sizes()["m"] <= 1250  # the high-water mark
    policy.maintain(100)
    assert policy.tree_sizes()["m"] <= 1000
    policy.forget_workers({pool[0].id})
    assert set(policy.trees["m"].tenant_size) <= {pool[0].id}


@pytest.fixture
def tokenizer_file(tmp_path: Path) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {
        "[UNK]": 0,
        **{w: i + 1 for i, w in enumerate(["you", "are", "a", "helpful", "assistant", "question", "one", "two", "three"])},
    }
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return str(tmp_path)


def test_token_mode(tokenizer_file: str) -> None:
    tokenize = load_tokenizer(tokenizer_file)
    assert tokenize("you are a helpful assistant") == (1, 2, 3, 4, 5)
    policy = make_policy("cache_aware", PolicyConfig(tokenize=tokenize))
    pool = workers(3)
    system = "you are a helpful assistant " * 10
    first = policy.select(pool, RequestInfo("m", text=system + "question one", now=0))
    assert policy.select(pool, RequestInfo("m", text=system + "question two", now=1)) is first
    assert isinstance(policy.trees["m"], TokenTree)


def test_bad_tokenizer_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no tokenizer\.json"):
        load_tokenizer(str(tmp_path / "missing"))
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot load"):
        load_tokenizer(str(bad))


def test_engine_token_ids_route_on_their_own_tree_and_shared_chains() -> None:
    """gRPC workers: the prompt's ids as the engine gets them are what cache_aware matches (the
    routing text is ignored), in a token tree of their own beside the text tree, and the chain
    hashes recorded for the mesh are of token blocks."""

    class Shared:
        def __init__(self) -> None:
            self.recorded: list[tuple[str, str, list[bytes]]] = []

        def match(self, model: str, chain: list[bytes]) -> dict[str, int]:
            return {}

        def record(self, model: str, worker: str, chain: list[bytes]) -> None:
            self.recorded.append((model, worker, chain))

        def footprint(self, model: str) -> dict[str, int]:
            held: dict[str, int] = {}
            for _, worker, chain in self.recorded:
                held[worker] = held.get(worker, 0) + len(chain)
            return held

    pool = workers(3)
    policy = make_policy("cache_aware")
    shared = Shared()
    policy.shared = shared  # type: ignore[attr-defined]
    system = tuple(range(1000, 1200))
    first = policy.select(pool, RequestInfo("m", text="unrelated text a", tokens=(*system, 1, 2), now=0))
    # a different routing text, the same engine prefix: the same worker
    assert policy.select(pool, RequestInfo("m", text="other text b", tokens=(*system, 3, 4, 5), now=1)) is first
    # a different prefix spreads to an emptier worker
    assert policy.select(pool, RequestInfo("m", text="unrelated text a", tokens=tuple(range(5000, 5200)), now=2)) is not first
    assert isinstance(policy.engine_trees["m"], TokenTree)  # type: ignore[attr-defined]
    assert "m" not in policy.trees  # type: ignore[attr-defined]
    assert policy.tree_sizes()["m"] == 200 + 2 + 3 + 200  # type: ignore[attr-defined]
    assert shared.recorded[0][2] == token_chain((*system, 1, 2))
    policy.select(pool, RequestInfo("m", text="x" * 300, now=3))  # an HTTP worker's request: the text tree
    assert policy.tree_sizes()["m"] == 200 + 2 + 3 + 200 + 300  # type: ignore[attr-defined]
    policy.forget_workers({w.id for w in pool if w is not first})  # type: ignore[attr-defined]
    assert first.id not in policy.engine_trees["m"].tenant_size  # type: ignore[attr-defined]
    assert policy.engine_chains["m"].match(token_chain(system)).get(first.id) is None  # type: ignore[attr-defined]


def test_prefix_hash_hashes_the_engine_ids_when_given() -> None:
    pool = workers(8)
    policy = make_policy("prefix_hash", PolicyConfig(prefix_token_count=4))
    head = (7, 8, 9, 10)
    chosen = {policy.select(pool, RequestInfo("m", text=f"text {i}", tokens=(*head, i), now=i)).id for i in range(20)}
    assert len(chosen) == 1  # the first 4 ids decide, whatever the text
    spread = {policy.select(pool, RequestInfo("m", text="same", tokens=(i, 1, 2, 3, 4), now=i)).id for i in range(40)}
    assert len(spread) > 1
