"""The routing text of a request: what cache-aware and prefix policies look at.

Fixed here because the CRDT and HA layers replicate summaries built from it:
every node must derive the same text, blocks and chain hashes for the same
request.

- chat (`messages`): for each message, its role, U+001F, its text content
  (text parts joined with a newline), then U+001E;
- completions (`prompt`) and generate (`text`): the prompt; a list of
  prompts is joined with U+001E; token ids are written in decimal, separated
  by spaces.

In HTTP mode the text is cut into blocks of `TEXT_BLOCK_CHARS` characters;
in token mode the token ids into blocks of `TOKEN_BLOCK` ids (each block
hashed as little-endian uint32s). Each full block gets a chained blake2b-64
hash (see `smg.hashing`).
"""

from __future__ import annotations

import struct
from typing import Any

from smg.hashing import chain_hashes

TEXT_BLOCK_CHARS = 64
TOKEN_BLOCK = 16
_UNIT, _RECORD = "\x1f", "\x1e"


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        if prompt and all(isinstance(p, int) for p in prompt):
            return " ".join(str(p) for p in prompt)
        return _RECORD.join(_prompt_text(p) for p in prompt)
    return ""


def routing_text(request: dict[str, Any]) -> str:
    messages = request.get("messages")
    if isinstance(messages, list):
        return "".join(
            f"{m.get('role', '')}{_UNIT}{_content_text(m.get('content'))}{_RECORD}" for m in messages if isinstance(m, dict)
        )
    for key in ("prompt", "text", "input_ids", "input"):
        if key in request:
            return _prompt_text(request[key])
    return ""


def text_chain(text: str, block: int = TEXT_BLOCK_CHARS) -> list[bytes]:
    """Chain hashes of the full `block`-character blocks of `text`."""
    return chain_hashes(text[i : i + block].encode() for i in range(0, len(text) - block + 1, block))


def token_chain(tokens: tuple[int, ...], block: int = TOKEN_BLOCK) -> list[bytes]:
    """Chain hashes of the full `block`-id blocks of `tokens`."""
    pack = struct.Struct(f"<{block}I").pack
    return chain_hashes(pack(*tokens[i : i + block]) for i in range(0, len(tokens) - block + 1, block))
