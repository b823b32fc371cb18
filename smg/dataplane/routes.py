"""The OpenAI-compatible inference routes: the worker path each forwards to and how its answer is shaped."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class InferenceRoute:
    name: str  # the `route` label in metrics
    target: bytes  # path on the worker
    model_required: bool = True
    transform: Callable[[dict[str, Any], bytes, str, str], bytes] | None = None


def rerank_response(request: dict[str, Any], payload: bytes, model: str, request_id: str) -> bytes:
    """Wrap a worker's bare rerank list as `{id, object, created, model, results, usage}`."""
    results = json.loads(payload)
    usage = None
    if isinstance(results, dict):  # a worker that already answers the wrapped shape
        usage = results.get("usage")
        results = results.get("results", [])
    top_k = request.get("top_k", request.get("top_n"))
    if isinstance(top_k, int) and top_k >= 0:
        results = results[:top_k]
    return json.dumps(
        {"id": request_id, "object": "rerank", "created": int(time.time()), "model": model, "results": results, "usage": usage},
        separators=(",", ":"),
    ).encode()


ROUTES = {
    "/v1/chat/completions": InferenceRoute("chat", b"/v1/chat/completions"),
    "/v1/completions": InferenceRoute("completions", b"/v1/completions"),
    "/v1/embeddings": InferenceRoute("embeddings", b"/v1/embeddings"),
    "/generate": InferenceRoute("generate", b"/generate", model_required=False),
    "/v1/rerank": InferenceRoute("rerank", b"/v1/rerank", transform=rerank_response),
    "/rerank": InferenceRoute("rerank", b"/v1/rerank", transform=rerank_response),
}
