"""The reference's flags smg does not offer, each refused at start with one line.

A command line written for the reference (SMG 1.13) parses: every one of its
flags is known (the fact list is `reference_flags.tsv`). Those smg implements are
declared with their concern (`server`, `workers`, ...); the rest are here,
each with why it is missing and what to use instead, and given any value they
stop the gateway with `smg: error: FLAG: <why>`. Some are missing for good
(PD/EPD disaggregation, Oracle, WASM, multimodal transport, the RL control
plane, the priority scheduler); the ones marked "yet" are planned.
"""

from __future__ import annotations

from dataclasses import dataclass

from smg.settings import refused

JOB_QUEUE = "smg has no control-plane job queue (worker changes apply at once); remove the flag"
MULTIMODAL = "multimodal media processing is not supported by smg (media goes to workers unchanged); remove the flag"
DISAGGREGATION = "PD/EPD disaggregation is not supported by smg; route to whole workers with --worker-urls"
DATA_PARALLEL = "DP-aware and ZMQ engine routing are not supported by smg; register each engine's HTTP server as a worker"
POLICY_TUNING = (
    "this tuning of the reference's policies is not supported by smg; cache_aware is tuned with --cache-threshold, "
    "--balance-abs-threshold and --balance-rel-threshold"
)
KV_INDEX = (
    "event-driven KV indexing is not supported by smg; cache_aware keeps its own prefix trees "
    "(--max-tree-size, --eviction-interval-secs)"
)
WORKER_STATES = (
    "stall, wedge and warm-up detection are not supported by smg; health checks and circuit breakers take a failing "
    "worker out (--health-*, --cb-*)"
)
OVERLOAD = (
    "cache_aware's de-ranking of the hottest backend is not supported by smg; worker overload protection "
    "(--worker-overload-token-usage) takes a saturated worker out of routing"
)
REQUEST_BUFFERING = "request body buffering bounds are not supported by smg; it bounds bodies with --max-payload-size"
JEMALLOC = "allocator profiling belongs to the reference's Rust build; it does not apply to smg"
STORAGE_CONTEXT = "storage context headers are not supported by smg"
GRPC_PIPELINE = (
    "the reference's tokenizer result caches are not supported by smg; it tokenizes each request once, for gRPC workers only"
)
MCP = "MCP tools are not supported by smg"
WASM = "WASM modules are not supported by smg"
SCHEMA = "storage schema remapping is not supported by smg; its SQL schema is migrated at start"
ORACLE = "Oracle history is not supported by smg; use --history-backend postgres"
RL = "the RL control plane is not supported by smg"
PRIORITY = "the priority scheduler is not supported by smg; per-tenant limits are --tenant-rate-limit-config"
MESH_TLS = "mesh TLS is not supported by smg; its mesh is sealed with AES-GCM keys (--mesh-key)"
HTTP2 = "HTTP/2 toward workers is not supported by smg; it keeps HTTP/1.1 keep-alive connections"


@dataclass(frozen=True)
class ReferenceRefusals:
    """Fields that are never set: each exists so its flag parses, then refuses (see the module docstring)."""

    # General
    job_queue_capacity: str | None = refused("--job-queue-capacity", why=JOB_QUEUE)
    job_queue_concurrency: str | None = refused("--job-queue-concurrency", why=JOB_QUEUE)
    multimodal_tensor_transport: str | None = refused("--multimodal-tensor-transport", why=MULTIMODAL)
    multimodal_shm_min_bytes: str | None = refused("--multimodal-shm-min-bytes", why=MULTIMODAL)
    multimodal_max_inflight_bytes: str | None = refused("--multimodal-max-inflight-bytes", why=MULTIMODAL)
    mm_per_request_image_limit: str | None = refused("--mm-per-request-image-limit", why=MULTIMODAL)
    mm_processing: str | None = refused("--mm-processing", why=MULTIMODAL)
    mm_pixel_cache_mb: str | None = refused("--mm-pixel-cache-mb", why=MULTIMODAL)
    mm_pixel_rdma: bool = refused("--mm-pixel-rdma", why=MULTIMODAL, takes="0")
    mm_allowed_media_domains: str | None = refused("--mm-allowed-media-domains", why=MULTIMODAL)
    mm_allow_private_media_hosts: bool = refused("--mm-allow-private-media-hosts", why=MULTIMODAL, takes="0")
    rdma_listen_ip: str | None = refused("--rdma-listen-ip", why=MULTIMODAL)
    rdma_slot_ttl_s: str | None = refused("--rdma-slot-ttl-s", why=MULTIMODAL)
    log_mm_timing: bool = refused("--log-mm-timing", why=MULTIMODAL, takes="0")
    # Worker Configuration
    upstream_http2: bool = refused("--upstream-http2", why=HTTP2, takes="0")
    # Routing Policy
    encode_policy: str | None = refused("--encode-policy", why=DISAGGREGATION)
    prefill_policy: str | None = refused("--prefill-policy", why=DISAGGREGATION)
    decode_policy: str | None = refused("--decode-policy", why=DISAGGREGATION)
    prefix_hash_balance_abs_threshold: str | None = refused("--prefix-hash-balance-abs-threshold", why=POLICY_TUNING)
    least_load_kv_pressure_weight: str | None = refused("--least-load-kv-pressure-weight", why=POLICY_TUNING)
    least_load_default_throughput: str | None = refused("--least-load-default-throughput", why=POLICY_TUNING)
    least_load_mean_prefill_tokens: str | None = refused("--least-load-mean-prefill-tokens", why=POLICY_TUNING)
    least_load_max_waiting_requests: str | None = refused("--least-load-max-waiting-requests", why=POLICY_TUNING)
    power_of_two_load_metric: str | None = refused("--power-of-two-load-metric", why=POLICY_TUNING)
    balance_token_usage_threshold: str | None = refused("--balance-token-usage-threshold", why=POLICY_TUNING)
    overload_token_usage_threshold: str | None = refused("--overload-token-usage-threshold", why=OVERLOAD)
    kv_index: str | None = refused("--kv-index", why=KV_INDEX)
    worker_stall_secs: str | None = refused("--worker-stall-secs", why=WORKER_STATES)
    worker_wedge_secs: str | None = refused("--worker-wedge-secs", why=WORKER_STATES)
    worker_stale_secs: str | None = refused("--worker-stale-secs", why=WORKER_STATES)
    worker_warmup_secs: str | None = refused("--worker-warmup-secs", why=WORKER_STATES)
    worker_warmup_share: str | None = refused("--worker-warmup-share", why=WORKER_STATES)
    worker_warmup_blocks: str | None = refused("--worker-warmup-blocks", why=WORKER_STATES)
    worker_warmup_thin_ratio: str | None = refused("--worker-warmup-thin-ratio", why=WORKER_STATES)
    worker_warmup_divert_every: str | None = refused("--worker-warmup-divert-every", why=WORKER_STATES)
    selection_policy: str | None = refused("--selection-policy", why=POLICY_TUNING)
    selection_accounting_ttl_ms: str | None = refused("--selection-accounting-ttl-ms", why=POLICY_TUNING)
    overlap_decay: str | None = refused("--overlap-decay", why=POLICY_TUNING)
    selection_temperature: str | None = refused("--selection-temperature", why=POLICY_TUNING)
    block_size: str | None = refused("--block-size", why=KV_INDEX)
    cache_boundaries: str | None = refused("--cache-boundaries", why=KV_INDEX)
    cache_index: str | None = refused("--cache-index", why=KV_INDEX)
    cache_ttl_secs: str | None = refused("--cache-ttl-secs", why=KV_INDEX)
    max_buffered_request_bytes: str | None = refused("--max-buffered-request-bytes", why=REQUEST_BUFFERING)
    pd_admission_wait_secs: str | None = refused("--pd-admission-wait-secs", why=DISAGGREGATION)
    stream_body_stall_timeout_secs: str | None = refused("--stream-body-stall-timeout-secs", why=REQUEST_BUFFERING)
    dp_aware: bool = refused("--dp-aware", why=DATA_PARALLEL, takes="0")
    dp_minimum_tokens_scheduler: bool = refused("--dp-minimum-tokens-scheduler", why=DATA_PARALLEL, takes="0")
    # PD/EPD Disaggregation
    pd_disaggregation: bool = refused("--pd-disaggregation", why=DISAGGREGATION, takes="0")
    epd_disaggregation: bool = refused("--epd-disaggregation", why=DISAGGREGATION, takes="0")
    encode: tuple[str, ...] = refused("--encode", why=DISAGGREGATION, takes="+")
    prefill: tuple[str, ...] = refused("--prefill", why=DISAGGREGATION, takes="+")
    decode: str | None = refused("--decode", why=DISAGGREGATION)
    prefill_max_inflight_requests_per_worker: str | None = refused(
        "--prefill-max-inflight-requests-per-worker", why=DISAGGREGATION
    )
    prefill_queue_size: str | None = refused("--prefill-queue-size", why=DISAGGREGATION)
    prefill_queue_timeout_secs: str | None = refused("--prefill-queue-timeout-secs", why=DISAGGREGATION)
    # Service Discovery (Kubernetes)
    kv_connector_annotation: str | None = refused("--kv-connector-annotation", why=DISAGGREGATION)
    kv_engine_id_annotation: str | None = refused("--kv-engine-id-annotation", why=DISAGGREGATION)
    encode_selector: tuple[str, ...] = refused("--encode-selector", why=DISAGGREGATION, takes="+")
    prefill_selector: tuple[str, ...] = refused("--prefill-selector", why=DISAGGREGATION, takes="+")
    decode_selector: tuple[str, ...] = refused("--decode-selector", why=DISAGGREGATION, takes="+")
    # Service Discovery (File)
    # Logging
    # Prometheus Metrics
    # Profiling
    jemalloc_prof_dir: str | None = refused("--jemalloc-prof-dir", why=JEMALLOC)
    # Request Handling
    storage_context_headers: tuple[str, ...] = refused("--storage-context-headers", why=STORAGE_CONTEXT, takes="*")
    # Tokenizer
    tokenizer_cache_enable_l0: bool = refused("--tokenizer-cache-enable-l0", why=GRPC_PIPELINE, takes="0")
    tokenizer_cache_l0_max_entries: str | None = refused("--tokenizer-cache-l0-max-entries", why=GRPC_PIPELINE)
    tokenizer_cache_enable_l1: bool = refused("--tokenizer-cache-enable-l1", why=GRPC_PIPELINE, takes="0")
    tokenizer_cache_l0_max_memory: str | None = refused("--tokenizer-cache-l0-max-memory", why=GRPC_PIPELINE)
    tokenizer_cache_l1_max_memory: str | None = refused("--tokenizer-cache-l1-max-memory", why=GRPC_PIPELINE)
    # Parsers
    mcp_config_path: str | None = refused("--mcp-config-path", why=MCP)
    # Backend
    zmq_engine_count: str | None = refused("--zmq-engine-count", why=DATA_PARALLEL)
    enable_wasm: bool = refused("--enable-wasm", why=WASM, takes="0")
    storage_hook_wasm_path: str | None = refused("--storage-hook-wasm-path", why=WASM)
    schema_config: str | None = refused("--schema-config", why=SCHEMA)
    # Oracle Database
    oracle_wallet_path: str | None = refused("--oracle-wallet-path", why=ORACLE)
    oracle_tns_alias: str | None = refused("--oracle-tns-alias", why=ORACLE)
    oracle_connect_descriptor: str | None = refused("--oracle-connect-descriptor", why=ORACLE)
    oracle_username: str | None = refused("--oracle-username", why=ORACLE)
    oracle_password: str | None = refused("--oracle-password", why=ORACLE)
    oracle_external_auth: bool = refused("--oracle-external-auth", why=ORACLE, takes="0")
    oracle_pool_min: str | None = refused("--oracle-pool-min", why=ORACLE)
    oracle_pool_max: str | None = refused("--oracle-pool-max", why=ORACLE)
    oracle_pool_timeout_secs: str | None = refused("--oracle-pool-timeout-secs", why=ORACLE)
    # TLS/mTLS Security
    # RL Control Plane
    enable_rl: bool = refused("--enable-rl", why=RL, takes="0")
    rl_control_timeout_secs: str | None = refused("--rl-control-timeout-secs", why=RL)
    rl_fanout_concurrency: str | None = refused("--rl-fanout-concurrency", why=RL)
    # Priority Scheduler
    priority_scheduler_enabled: bool = refused("--priority-scheduler-enabled", why=PRIORITY, takes="0")
    priority_scheduler_default_max_class: str | None = refused("--priority-scheduler-default-max-class", why=PRIORITY)
    priority_scheduler_config: str | None = refused("--priority-scheduler-config", why=PRIORITY)
    priority_scheduler_tenant_metric_top_n: str | None = refused("--priority-scheduler-tenant-metric-top-n", why=PRIORITY)
    # Tenant Rate Limit
    # Mesh Server
    mesh_tls_ca_cert: str | None = refused("--mesh-tls-ca-cert", why=MESH_TLS)
    mesh_tls_cert: str | None = refused("--mesh-tls-cert", why=MESH_TLS)
    mesh_tls_key: str | None = refused("--mesh-tls-key", why=MESH_TLS)
