"""The interface every policy implements, and what a policy may know of a request."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from smg.workers.registry import Worker


class NoEligibleWorker(Exception):
    """The policy cannot route this request (e.g. a targeted worker that is out of range)."""


@dataclass(slots=True)
class RequestInfo:
    """What a policy may look at; richer policies get more fields, not more calls. Made once
    per request; the attempt loop sets `now` before each choice (not frozen: a `replace` per
    attempt cost more than the policy's choice)."""

    model: str
    path: str = ""
    now: float = 0.0  # monotonic seconds, from the trio shell
    text: str = ""  # the routing text, filled only for policies that set `needs_text`
    tokens: tuple[int, ...] | None = None  # gRPC workers (`needs_text` policies): the prompt's ids as the engine gets them
    routing_key: str | None = None  # X-SMG-Routing-Key
    target_index: int | None = None  # X-SMG-Target-Worker
    client_key: str | None = None  # a digest of Authorization, else the first X-Forwarded-For address
    lineage_key: str | None = None  # the conversation: first response of a previous_response_id chain, or `conversation`
    pool: Sequence[Worker] = ()  # every worker of the model, in registration order
    request_id: str = ""  # for --log-routing-decisions


ASSIGNMENT_MODES = ("random", "min_load", "min_group", "delegate")  # of a new routing key to a worker


@dataclass(frozen=True)
class PolicyConfig:
    seed: int | None = None
    virtual_nodes: int = 160
    prefix_token_count: int = 256
    prefix_hash_load_factor: float = 1.25
    max_idle_secs: float = 14400.0
    max_sticky_keys: int = 1_000_000
    cache_threshold: float = 0.3
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5
    max_tree_size: int = 64 * 1024 * 1024
    tokenize: Callable[[str], tuple[int, ...]] | None = None  # token mode when set
    bucket_adjust_interval_secs: float = 60.0
    assignment_mode: str | None = None  # how a new routing key gets its worker (None: the policy's default)
    sticky: bool = False  # --routing-key-override: pin routing keys on any policy

    def __post_init__(self) -> None:
        if self.assignment_mode is not None and self.assignment_mode not in ASSIGNMENT_MODES:
            raise ValueError(f"--assignment-mode must be one of {', '.join(ASSIGNMENT_MODES)}, got '{self.assignment_mode}'")
        if self.virtual_nodes < 1:  # no flag sets it (the reference fixes 160): name the field
            raise ValueError(f"virtual_nodes must be at least 1, got {self.virtual_nodes}")
        if self.prefix_token_count < 1:
            raise ValueError(f"--prefix-token-count must be at least 1, got {self.prefix_token_count}")
        if not self.prefix_hash_load_factor >= 1.0:
            raise ValueError("--prefix-hash-load-factor must be at least 1.0")
        if self.max_idle_secs <= 0:
            raise ValueError("--max-idle-secs must be positive")
        if not 0.0 <= self.cache_threshold <= 1.0:
            raise ValueError("--cache-threshold must be between 0 and 1")
        if self.balance_abs_threshold < 0 or self.balance_rel_threshold < 1.0:
            raise ValueError("--balance-abs-threshold must be >= 0 and --balance-rel-threshold >= 1")
        if self.bucket_adjust_interval_secs <= 0:
            raise ValueError("--bucket-adjust-interval-secs must be positive")
        if self.max_tree_size < 1:
            raise ValueError("--max-tree-size must be at least 1")


class Policy(Protocol):
    name: str
    needs_text: bool  # gets `RequestInfo.text` (the routing text costs a walk of the messages)
    needs_client_key: bool  # gets `RequestInfo.client_key` (a digest of the caller's credential)

    def select(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
        """Pick one of `workers` (never empty), or raise NoEligibleWorker."""
        ...


def load_of(worker: Worker) -> int:
    """A worker's load as policies see it: the cluster's in-flight count (this
    gateway's plus its peers'), or the worker's own report (running + waiting)
    when that is higher."""
    return max(worker.in_flight + worker.peer_in_flight, worker.reported_load)
