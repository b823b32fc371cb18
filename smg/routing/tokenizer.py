"""Loading a Hugging Face `tokenizer.json` (a file, or a model directory holding one) for token-mode
cache-aware routing. Nothing is downloaded: a hub model id that is not a local directory is refused.

The loading itself is `smg.tokenization.loader`'s, the one place a model's tokenizer directory is
read (the gRPC pipeline uses the same one), so routing and generation agree on the token ids."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

Tokenize = Callable[[str], tuple[int, ...]]


@lru_cache(maxsize=4)
def load_tokenizer(path: str, flag: str = "--tokenizer-path") -> Tokenize:
    """A function from routing text to token ids; raises ValueError with a clear message naming `flag`."""
    # imported here: only token mode needs the tokenizers library
    from smg.tokenization.loader import load_model_tokenizer

    try:
        # only tokenizer.json matters for routing's token ids: a broken optional file is ignored
        model = load_model_tokenizer(path, strict_optional=False)
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}") from None
    tokenizer = model.tokenizer

    def tokenize(text: str) -> tuple[int, ...]:
        return tuple(tokenizer.encode(text, add_special_tokens=False).ids)

    return tokenize
