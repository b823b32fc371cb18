"""The tokens an answer reports, read without parsing the answer, in either API's shape (sans-IO).

Every answer that reports usage is counted in `smg_router_tokens_total{model,backend,kind}`
and charged to its tenant's token limit. OpenAI's answers say `prompt_tokens`,
`completion_tokens` and `prompt_tokens_details.cached_tokens`; Anthropic's say
`input_tokens` (not counting cached ones), `cache_read_input_tokens`,
`cache_creation_input_tokens` and `output_tokens`, split between `message_start` and
`message_delta` in a stream. A body can be large (embeddings): only the last `"usage"`
object is decoded, found from the end. A stream reports usage when the client asked for it
(`stream_options.include_usage`), always under a token limit (the gateway asks), and always
on the Messages API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_DECODER = json.JSONDecoder()
_KEY = b'"usage"'


@dataclass(frozen=True, slots=True)
class Usage:
    prompt: int = 0  # every prompt token, cached ones included
    completion: int = 0
    cached: int = 0  # prompt tokens the engine or provider had cached

    def merged(self, other: Usage | None) -> Usage:
        """Both reports of one stream (Anthropic's start and end), each count at its largest."""
        if other is None:
            return self
        return Usage(max(self.prompt, other.prompt), max(self.completion, other.completion), max(self.cached, other.cached))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_of(usage: Any) -> Usage | None:
    """A usage object of either shape; None if it is not one."""
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        details = usage.get("prompt_tokens_details")
        cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
        return Usage(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")), cached)
    if "input_tokens" in usage or "output_tokens" in usage:
        read = _count(usage.get("cache_read_input_tokens"))
        prompt = _count(usage.get("input_tokens")) + read + _count(usage.get("cache_creation_input_tokens"))
        return Usage(prompt, _count(usage.get("output_tokens")), read)
    return None


def usage_in(payload: bytes, *, first: bool = False) -> Usage | None:
    """The last (or `first`) usage object in a JSON body or a run of SSE events, if any."""
    at = len(payload) if not first else -1
    while True:
        at = payload.find(_KEY, at + 1) if first else payload.rfind(_KEY, 0, at)
        if at < 0:
            return None
        start = payload.find(b"{", at + len(_KEY))
        colon = payload.find(b":", at + len(_KEY))
        if start > 0 and 0 < colon < start and not payload[colon + 1 : start].strip():
            try:
                usage, _ = _DECODER.raw_decode(payload[start : start + 4096].decode("utf-8", "replace"))
            except ValueError:
                usage = None
            found = usage_of(usage)
            if found is not None:
                return found
        # "usage" inside a string (a model writing about usage), or null: look further on
