"""Loading a Hugging Face `tokenizer.json` (a file, or a model directory holding one) for token-mode
cache-aware routing. Nothing is downloaded: a hub model id that is not a local directory is refused."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

Tokenize = Callable[[str], tuple[int, ...]]


@lru_cache(maxsize=4)
def load_tokenizer(path: str, flag: str = "--tokenizer-path") -> Tokenize:
    """A function from routing text to token ids; raises ValueError with a clear message naming `flag`."""
    from tokenizers import Tokenizer  # imported here: only token mode needs it

    file = Path(path)
    if file.is_dir():
        file = file / "tokenizer.json"
    if not file.is_file():
        raise ValueError(f"{flag}: no tokenizer.json at {path}")
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:  # the library raises a bare Exception on bad JSON
        raise ValueError(f"{flag}: cannot load {file}: {exc}") from None

    def tokenize(text: str) -> tuple[int, ...]:
        return tuple(tokenizer.encode(text, add_special_tokens=False).ids)

    return tokenize
