"""Timing and fault model of a simulated inference engine (sans-IO).

The trio shell in `smg.simworker.app` asks this model how long to wait and
whether to misbehave; the model itself never sleeps and never reads a clock.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import asdict, dataclass, fields
from hashlib import blake2b
from typing import Any, ClassVar

from smg.settings import setting
from smg.simworker.kvcache import PrefixKVCache

PREFILLS_KEPT = 100_000  # a benchmark run's worth of prefill records (about 200 bytes each)

VOCABULARY = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "gateways",
    "route",
    "tokens",
    "to",
    "engines",
    "that",
    "cache",
    "prefixes",
    "and",
    "stream",
    "answers",
    "back",
    "to",
    "patient",
    "clients",
]


G_SIM = "simulated worker"
HOSTED_APIS = ("openai", "anthropic")
GRPC_ENGINES = ("sglang", "vllm")  # --grpc-engine


@dataclass
class SimConfig:
    """Knobs of one simulated worker; the fault knobs can change at run time."""

    GROUP: ClassVar[str] = G_SIM

    model: str = setting("sim-model", "--model", help="model id the worker serves")
    seed: int = setting(0, "--seed", help="seed of the fault draws and generated text (worker i uses seed + i)")
    ttft_ms: float = setting(2.0, "--ttft-ms", help="fixed part of time to first token, in ms")
    prefill_tokens_per_sec: float = setting(
        50_000.0,
        "--prefill-tokens-per-sec",
        help="prefill speed: uncached prompt tokens per second added to the TTFT",
        group=G_SIM,
    )
    prefill_slots: int = setting(
        0,
        "--prefill-slots",
        help="prefills run at once (0: no limit); the others wait their turn in arrival order, so uncached "
        "prompts queue behind one another as in an engine that prefills one batch at a time",
        group=G_SIM,
    )
    tpot_ms: float = setting(1.0, "--tpot-ms", help="decode time per output token, in ms, with one running request")
    batch_slowdown: float = setting(
        0.02, "--batch-slowdown", help="fractional slowdown of decode per extra running request", group=G_SIM
    )
    max_running: int = setting(64, "--max-running", help="requests decoded at once; more wait in a FIFO queue")
    cache_blocks: int = setting(8192, "--cache-blocks", help="prefix KV-cache capacity in blocks of 16 tokens (LRU)")
    output_tokens: int = setting(16, "--output-tokens", help="output tokens when the request sets no max_tokens")
    embedding_dim: int = setting(16, "--embedding-dim", help="dimension of generated embeddings")
    hosted_key: str = setting(
        "",
        "--hosted-key",
        metavar="KEY",
        help="impersonate a hosted OpenAI-compatible provider with this API key: every request needs "
        "'Authorization: Bearer KEY' (else 401 in OpenAI's shape), and the engine endpoints a provider has not "
        "(/health, /v1/loads, /flush_cache, server and model info) answer 404",
        group=G_SIM,
    )
    hosted_api: str = setting(
        "openai",
        "--hosted-api",
        choices=HOSTED_APIS,
        help="the provider --hosted-key impersonates: openai, or anthropic (the key in 'x-api-key', "
        "'anthropic-version' required, only /v1/messages and /v1/models, errors in Anthropic's shape, 529 for an "
        "injected 503)",
        group=G_SIM,
    )
    fail_retry_after: int = setting(
        0,
        "--fail-retry-after",
        metavar="SECS",
        help="injected 429 and 503 failures carry 'Retry-After: SECS' (0: none), as a provider's rate limit does",
        group=G_SIM,
    )
    owned_by: str = setting(
        "sglang", "--owned-by", help="owned_by reported by /v1/models (gateways read the engine type from it)", group=G_SIM
    )
    fail_rate: float = setting(
        0.0, "--fail-rate", help="fraction of generation requests answered with --*fail-status", group=G_SIM
    )
    fail_status: int = setting(500, "--fail-status", help="HTTP status of injected failures")
    unhealthy: bool = setting(False, "--unhealthy", help="answer /health with 503")
    hang_rate: float = setting(
        0.0, "--hang-rate", help="fraction of requests that hang before the first byte until the client leaves", group=G_SIM
    )
    die_mid_stream_rate: float = setting(
        0.0, "--die-mid-stream-rate", help="fraction of streams cut off half-way (connection dropped)", group=G_SIM
    )
    grpc: bool = setting(
        False,
        "--grpc",
        help="speak an engine's gRPC protocol (--grpc-engine; token ids in and out, the shipped tokenizer) instead of HTTP",
        group=G_SIM,
    )
    grpc_engine: str = setting(
        "sglang",
        "--grpc-engine",
        choices=GRPC_ENGINES,
        help="gRPC mode: the engine service served, SGLang's scheduler or vLLM's engine (never both)",
        group=G_SIM,
    )
    reasoning: bool = setting(
        False, "--reasoning", help="gRPC mode: the model thinks first (<think>...</think>), then answers", group=G_SIM
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("fail_rate", "hang_rate", "die_mid_stream_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        for name in ("ttft_ms", "tpot_ms", "batch_slowdown"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.prefill_tokens_per_sec <= 0:
            raise ValueError("prefill_tokens_per_sec must be positive")
        for name in ("max_running", "cache_blocks", "embedding_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.output_tokens < 0:
            raise ValueError("output_tokens must not be negative")
        if self.grpc_engine not in GRPC_ENGINES:
            raise ValueError(f"grpc_engine must be one of {', '.join(GRPC_ENGINES)}, got {self.grpc_engine!r}")
        if self.hosted_api not in HOSTED_APIS:
            raise ValueError(f"hosted_api must be one of {', '.join(HOSTED_APIS)}, got {self.hosted_api!r}")
        if self.prefill_slots < 0:
            raise ValueError("prefill_slots must not be negative")
        if self.fail_retry_after < 0:
            raise ValueError("fail_retry_after must not be negative")
        if not 100 <= self.fail_status <= 599:
            raise ValueError(f"fail_status must be an HTTP status, got {self.fail_status}")

    def update(self, changes: dict[str, Any]) -> None:
        """Apply `changes` atomically: unknown keys or bad values change nothing."""
        known = {f.name: f.type for f in fields(self)}
        unknown = sorted(set(changes) - set(known) - {"model"})
        if unknown or "model" in changes:
            raise ValueError(f"cannot change: {', '.join(unknown or ['model'])}")
        candidate = SimConfig(**{**asdict(self), **changes})
        for key in changes:
            setattr(self, key, getattr(candidate, key))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Outcome:
    """What the engine decided to do with one request."""

    fail: bool = False
    hang: bool = False
    die_after_tokens: int | None = None  # the stream breaks off half-way through the event after this many tokens


class SimEngine:
    """Cache, queueing figures and deterministic choices of one worker."""

    def __init__(self, config: SimConfig, *, record_kv_events: bool = False) -> None:
        self.config = config
        self.cache = PrefixKVCache(config.cache_blocks, record_events=record_kv_events)
        self._faults = random.Random(config.seed)
        self.running = 0
        self.waiting = 0
        self.running_tokens = 0  # KV held by the running requests (prompt + output), as token_usage reports
        self.requests = 0
        self.completion_tokens = 0
        self.failures_injected = 0
        self.prefill_waiting = 0  # requests waiting for a prefill slot (--prefill-slots)
        self.prefill_waiting_tokens = 0  # the KV those requests will hold, not yet in use
        self.prefill_queued_tokens = 0  # uncached prompt tokens waiting for or in prefill
        # each prefill as the engine saw it (the truth a routing benchmark compares the gateways' beliefs with)
        self.prefills: deque[dict[str, Any]] = deque(maxlen=PREFILLS_KEPT)

    def record_prefill(
        self, at: float, request_id: str, queued: tuple[int, int], uncached: int, waited: float, took: float
    ) -> None:
        """One prefill: when it arrived (wall clock), the queue it found (requests waiting for a slot,
        uncached tokens waiting or in prefill), its own uncached tokens, its wait and its duration."""
        self.prefills.append(
            {
                "at": round(at, 4),
                "request_id": request_id,
                "queued_requests": queued[0],
                "queued_tokens": queued[1],
                "uncached_tokens": uncached,
                "wait_ms": round(waited * 1000, 3),
                "prefill_ms": round(took * 1000, 3),
            }
        )

    def decide(self, output_tokens: int) -> Outcome:
        """Draw this request's faults from the seeded stream."""
        cfg = self.config
        draw = self._faults.random
        if cfg.fail_rate and draw() < cfg.fail_rate:
            self.failures_injected += 1
            return Outcome(fail=True)
        if cfg.hang_rate and draw() < cfg.hang_rate:
            self.failures_injected += 1
            return Outcome(hang=True)
        if cfg.die_mid_stream_rate and draw() < cfg.die_mid_stream_rate:
            self.failures_injected += 1
            return Outcome(die_after_tokens=output_tokens // 2)
        return Outcome()

    def ttft_secs(self, uncached_tokens: int) -> float:
        cfg = self.config
        return cfg.ttft_ms / 1000.0 + uncached_tokens / cfg.prefill_tokens_per_sec

    def tpot_secs(self) -> float:
        """Decode time per token, slower as the running batch grows."""
        cfg = self.config
        return cfg.tpot_ms / 1000.0 * (1.0 + cfg.batch_slowdown * max(0, self.running - 1))

    def output_words(self, prompt: str, count: int) -> list[str]:
        """The same prompt always yields the same answer under one seed."""
        digest = blake2b(prompt.encode(), digest_size=8, key=str(self.config.seed).encode())
        rng = random.Random(int.from_bytes(digest.digest(), "big"))
        return [rng.choice(VOCABULARY) for _ in range(count)]

    def embedding(self, text: str) -> list[float]:
        dim = self.config.embedding_dim
        raw = blake2b(text.encode(), digest_size=min(64, dim * 2)).digest()
        values = [(raw[i % len(raw)] - 127.5) / 127.5 for i in range(dim)]
        norm = sum(v * v for v in values) ** 0.5 or 1.0
        return [round(v / norm, 6) for v in values]

    def load_report(self) -> dict[str, Any]:
        """Engine load in the SGLang `/v1/loads` shape (one data-parallel rank)."""
        capacity = self.config.cache_blocks * self.cache.block_tokens
        # as SGLang counts it: tokens the running requests hold; cached prefixes nobody uses are
        # evictable, not in use (a full prefix cache is not an overloaded engine)
        # a request waiting for a prefill slot holds a running slot but is, as SGLang counts it,
        # waiting, and holds no KV yet
        used = min(capacity, self.running_tokens - self.prefill_waiting_tokens)
        running, waiting = self.running - self.prefill_waiting, self.waiting + self.prefill_waiting
        return {
            "dp_rank": 0,
            "num_running_reqs": running,
            "num_waiting_reqs": waiting,
            "num_total_reqs": running + waiting,
            "num_queued_prefill_tokens": self.prefill_queued_tokens,
            "num_used_tokens": used,
            "max_total_num_tokens": capacity,
            "token_usage": round(used / capacity, 4),
            "cache_hit_rate": round(self.cache.stats.hit_rate, 4),
        }

    def stats(self) -> dict[str, Any]:
        cache = self.cache.stats
        return {
            "model": self.config.model,
            "requests": self.requests,
            "running": self.running,
            "waiting": self.waiting,
            "prompt_tokens": cache.prompt_tokens,
            "cached_tokens": cache.cached_tokens,
            "cache_hit_rate": round(cache.hit_rate, 4),
            "cache_blocks": len(self.cache),
            "cache_evictions": cache.evictions,
            "completion_tokens": self.completion_tokens,
            "failures_injected": self.failures_injected,
        }
