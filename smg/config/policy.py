"""The load-balancing policy and its tuning."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from smg.parsers.registry import (
    REASONING_PARSERS,
    REFERENCE_REASONING_PARSERS,
    REFERENCE_TOOL_PARSERS,
    TOOL_PARSERS,
)
from smg.routing.policies import PolicyConfig
from smg.routing.tokenizer import Tokenize, load_tokenizer
from smg.settings import ConfigError, existing_file, header_names, positive, setting

G_POLICY = "policy tuning"
G_TOKENIZER = "tokenizer"


def _local_model(flag: str, path: str) -> None:
    if not os.path.exists(path):
        raise ConfigError(
            f"{flag}: {path} is not a local directory; smg downloads nothing at run time, so give the path of a "
            "Hugging Face model directory (one holding tokenizer.json)"
        )


def _unsupported(reference: tuple[str, ...], implemented: object) -> dict[str, str]:
    """The reference's parser names smg does not implement, each refused with what it offers."""
    offered = ", ".join(sorted(implemented))  # type: ignore[call-overload]
    return {name: f"not supported by smg; it offers {offered}" for name in reference if name not in implemented}  # type: ignore[operator]


def _default_tokenizer_cache() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "smg", "tokenizers")


@dataclass(frozen=True)
class PolicySettings:
    GROUP: ClassVar[str] = G_POLICY

    cache_threshold: float = setting(
        0.3,
        "--cache-threshold",
        "--cache-match-threshold",
        help="cache_aware: least matched share of the prompt that pins it to the matching worker",
    )
    balance_abs_threshold: int = setting(
        64,
        "--balance-abs-threshold",
        "--spill-abs-threshold",
        help="cache_aware: imbalance when max - min load exceeds this ...",
    )
    balance_rel_threshold: float = setting(
        1.5,
        "--balance-rel-threshold",
        "--spill-rel-threshold",
        help="... and max exceeds this multiple of min; then the least loaded wins",
    )
    max_tree_size: int = setting(
        64 * 1024 * 1024,
        "--max-tree-size",
        help="cache_aware: characters (or tokens) remembered per model, shared by its workers",
    )
    eviction_interval_secs: float = setting(
        60.0,
        "--eviction-interval-secs",
        check=positive,
        help="cache_aware: seconds between evictions down to --max-tree-size",
    )
    tokenizer_path: str | None = setting(
        None,
        "--tokenizer-path",
        help="cache_aware in token mode: a tokenizer.json (or a directory holding one)",
        group=G_TOKENIZER,
    )
    model_path: str | None = setting(
        None,
        "--model-path",
        "--model",
        check=_local_model,
        help="a local Hugging Face model directory: its tokenizer.json puts cache_aware in token mode (unless "
        "--tokenizer-path names another, or --disable-tokenizer-autoload)",
        differs="a local directory only: smg downloads nothing, so a hub model id is refused",
        group=G_TOKENIZER,
    )
    disable_tokenizer_autoload: bool = setting(
        False,
        "--disable-tokenizer-autoload",
        help="do not load the tokenizer of --model-path (pure load balancing: cache_aware matches characters)",
        group=G_TOKENIZER,
    )
    chat_template: str | None = setting(
        None,
        "--chat-template",
        metavar="PATH",
        check=existing_file,
        help="gRPC workers: a chat template file (.jinja, or .json holding chat_template) used for every model "
        "instead of the model's own",
        group=G_TOKENIZER,
    )
    tokenizer_cache_dir: str = setting(
        _default_tokenizer_cache(),
        "--tokenizer-cache-dir",
        metavar="DIR",
        help="gRPC workers: where tokenizers fetched from workers (GetTokenizer) are kept between runs",
        group=G_TOKENIZER,
    )
    parser: str = setting(
        "legacy",
        "--parser",
        choices=("legacy",),
        refused_choices={"symphony": "the Symphony parser tables are not supported by smg; use the per-model parsers (legacy)"},
        help="gRPC workers: how reasoning and tool calls are read from a chat completion: the per-model parsers "
        "(--tool-call-parser, --reasoning-parser, else the model id's defaults)",
        group=G_TOKENIZER,
    )
    tool_call_parser: str | None = setting(
        None,
        "--tool-call-parser",
        choices=sorted(TOOL_PARSERS),
        refused_choices=_unsupported(REFERENCE_TOOL_PARSERS, TOOL_PARSERS),
        help="gRPC workers: the tool-call format models write (default: from the model id, as the reference's table)",
        group=G_TOKENIZER,
    )
    reasoning_parser: str | None = setting(
        None,
        "--reasoning-parser",
        choices=sorted(REASONING_PARSERS),
        refused_choices=_unsupported(REFERENCE_REASONING_PARSERS, REASONING_PARSERS),
        help="gRPC workers: how models mark their reasoning (default: from the model id, as the reference's table)",
        group=G_TOKENIZER,
    )
    prefix_token_count: int = setting(
        256, "--prefix-token-count", help="prefix_hash: tokens hashed (4 characters each, untokenised)"
    )
    prefix_hash_load_factor: float = setting(
        1.25,
        "--prefix-hash-load-factor",
        help="prefix_hash: a worker above this multiple of its fair share is passed over",
    )
    max_idle_secs: float = setting(
        14400.0,
        "--max-idle-secs",
        "--sticky-key-idle-secs",
        check=positive,
        help="sticky routing keys (manual, --routing-key-override): a key unused this long is forgotten",
    )
    routing_key_override: bool = setting(
        False,
        "--routing-key-override",
        "--sticky-sessions",
        help="sticky sessions on any policy: a request with a routing key (--routing-key-headers, else its "
        "conversation: the first response of a previous_response_id chain, or the conversation id) goes to the "
        "worker its key is pinned to; with --ha-mesh the pins are shared by every gateway",
        differs="the lineage is the Responses API's chain or conversation; a pinned worker that is healthy but "
        "cannot take one request (breaker open, overloaded) gets a detour and keeps its pin",
    )
    assignment_mode: str | None = setting(
        None,
        "--assignment-mode",
        choices=("random", "min_load", "min_group", "delegate"),
        help="how a new routing key gets its worker: min_load (the least loaded), min_group (the one holding "
        "fewest keys), random, or delegate (the policy's choice, then pinned); default min_load for manual, "
        "delegate for --routing-key-override",
        differs="manual's default is min_load (the reference: random)",
    )
    routing_key_headers: tuple[str, ...] = setting(
        (),
        "--routing-key-headers",
        metavar="HEADER",
        many="*",
        check=header_names,
        help="headers read, in order, for the routing key (manual, consistent_hashing, --routing-key-override); "
        "the first present with a value wins (default: x-smg-routing-key)",
    )
    bucket_adjust_interval_secs: float = setting(
        60.0, "--bucket-adjust-interval-secs", help="bucket: seconds between boundary adjustments"
    )
    load_monitor_interval: float = setting(
        10.0,
        "--load-monitor-interval",
        check=positive,
        help="seconds between polls of workers' /v1/loads for load-aware policies",
    )
    disable_load_monitoring: bool = setting(
        False,
        "--disable-load-monitoring",
        help="poll workers' loads only when a load-aware policy or overload protection needs them (by default "
        "every worker is polled from registration on)",
    )

    def tokenizer(self) -> Tokenize | None:
        """--tokenizer-path, else the tokenizer of --model-path unless --disable-tokenizer-autoload."""
        if self.tokenizer_path:
            return load_tokenizer(self.tokenizer_path)
        if self.model_path and not self.disable_tokenizer_autoload:
            return load_tokenizer(self.model_path, "--model-path")
        return None

    def policy_config(self) -> PolicyConfig:
        return PolicyConfig(
            cache_threshold=self.cache_threshold,
            balance_abs_threshold=self.balance_abs_threshold,
            balance_rel_threshold=self.balance_rel_threshold,
            max_tree_size=self.max_tree_size,
            tokenize=self.tokenizer(),
            prefix_token_count=self.prefix_token_count,
            prefix_hash_load_factor=self.prefix_hash_load_factor,
            max_idle_secs=self.max_idle_secs,
            bucket_adjust_interval_secs=self.bucket_adjust_interval_secs,
            assignment_mode=self.assignment_mode,
            sticky=self.routing_key_override,
        )
