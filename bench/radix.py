"""Radix-tree cost per request: match + insert (microseconds) at 10k, 100k and 1M cached prefixes.

    python bench/radix.py                  # 10k, 100k, 1M
    python bench/radix.py --sizes 10000 100000

Each cached prefix is one of 1,000 shared 1,000-character "system prompts"
plus a unique 200-character tail, spread over 8 workers, as in a chat fleet.
The timed requests are new prompts of the same shape (a shared head, a new
tail), matched and then inserted, as `cache_aware` does per request.
"""

from __future__ import annotations

import argparse
import random
import resource
import string
import time

from smg.routing.chain_index import ChainIndex
from smg.routing.radix import StringTree
from smg.routing.text import text_chain

WORKERS = [f"w{i}" for i in range(8)]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prompt(rng: random.Random, heads: list[str]) -> str:
    return rng.choice(heads) + "".join(rng.choices(string.ascii_lowercase + " ", k=200))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    rng = random.Random(1)
    heads = ["".join(rng.choices(string.ascii_lowercase + " ", k=1000)) for _ in range(1000)]
    print(f"{'prefixes':>10}{'build s':>9}{'tree chars':>13}{'match+insert us':>17}{'+chain us':>11}{'max RSS MiB':>13}")
    for size in args.sizes:
        tree = StringTree()
        index = ChainIndex(max_entries=10**9)
        started = time.perf_counter()
        for i in range(size):
            text = prompt(rng, heads)
            worker = WORKERS[i % len(WORKERS)]
            tree.insert(text, worker, i)
            index.insert(text_chain(text), worker, i)
        build = time.perf_counter() - started
        requests = [prompt(rng, heads) for _ in range(args.requests)]
        started = time.perf_counter()
        for i, text in enumerate(requests):
            tree.match(text)
            tree.insert(text, WORKERS[i % len(WORKERS)], size + i)
        tree_us = (time.perf_counter() - started) / len(requests) * 1e6
        started = time.perf_counter()
        for i, text in enumerate(requests):
            chain = text_chain(text)
            index.match(chain)
            index.insert(chain, WORKERS[i % len(WORKERS)], size + i)
        chain_us = (time.perf_counter() - started) / len(requests) * 1e6
        print(f"{size:>10}{build:>9.1f}{tree.size:>13}{tree_us:>17.1f}{chain_us:>11.1f}{rss_mib():>13.0f}")


if __name__ == "__main__":
    main()
