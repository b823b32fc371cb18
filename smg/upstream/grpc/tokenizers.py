"""The tokenizer of each model served by gRPC workers: found, loaded, cached on disk, reported.

With gRPC workers the gateway tokenizes, templates and detokenizes, so a model cannot be served
until its tokenizer is loaded; `/readiness` waits for it (as the reference's does). The sources,
in the reference's order (`../shared/reference/smg-grpc-contract.md`), the first that works wins:

1. the worker's own `tokenizer_path`, then its `model_path` (GetModelInfo), when that is a local
   directory this gateway can read (gateway and engine on one host or one volume);
2. `--tokenizer-path`, then `--model-path` (unless `--disable-tokenizer-autoload`);
3. the copy fetched earlier from a worker, under `--tokenizer-cache-dir`;
4. GetTokenizer from the worker: a zip in chunks, its SHA-256 checked, unpacked atomically into
   the cache (`smg.tokenization.archive`), then loaded from there.

Nothing is downloaded from a hub: a hub id in a worker's labels is not a local directory, so the
gateway asks the worker. Loading (file reads, tokenizer.json parsing) runs in a worker thread.
A failed load (any error: the RPC's status, a bad archive, a timeout) is that model's only: logged
once per failure, and tried again from its last worker when a request or `/readiness` asks once
`RETRY_SECS` passed; requests for the model meanwhile get 503 `tokenizer_load_failed` (or
`tokenizer_loading`), not a wrong answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from smg.generation.types import EngineInfo
from smg.tokenization.archive import ArchiveAssembler, extract_archive
from smg.tokenization.loader import ModelTokenizer, load_model_tokenizer

log = logging.getLogger("smg.tokenizer")

RETRY_SECS = 10.0  # a failed model is tried again no sooner than this, on the next ensure()
FETCH_TIMEOUT_SECS = 120.0  # a whole GetTokenizer transfer


class TokenizerSource(Protocol):
    """The worker end of GetTokenizer (`EngineClient.tokenizer_archive`)."""

    def tokenizer_archive(self, timeout: float) -> AsyncGenerator[tuple[bytes, str], None]: ...


@dataclass
class _Entry:
    state: str  # "loading" | "ready" | "failed"
    tokenizer: ModelTokenizer | None = None
    error: str | None = None
    failed_at: float = 0.0
    source: str = ""


class ModelTokenizers:
    """Per model id: its `ModelTokenizer` once loaded, else its state and last error."""

    def __init__(
        self,
        *,
        tokenizer_path: str | None,
        model_path: str | None,
        cache_dir: str | Path,
        chat_template_path: str | None = None,
    ) -> None:
        """`model_path` None when `--disable-tokenizer-autoload`; `chat_template_path`
        (`--chat-template`) replaces every model's template."""
        self.tokenizer_path = tokenizer_path
        self.model_path = model_path
        self.cache_dir = Path(cache_dir)
        self.chat_template_path = chat_template_path
        self._entries: dict[str, _Entry] = {}
        self._sources: dict[str, tuple[EngineInfo, TokenizerSource]] = {}  # the last worker of each model
        self.retry_secs = RETRY_SECS
        self.fetch_timeout = FETCH_TIMEOUT_SECS
        self._spawn: Callable[[Callable[..., Coroutine[Any, Any, None]], str, EngineInfo, TokenizerSource], None] | None = None

    def attach(self, nursery: trio.Nursery | None) -> None:
        """Load jobs run in `nursery` (the fleet's) from now on; None: the fleet is stopping, and
        loads are no longer started."""
        self._spawn = nursery.start_soon if nursery is not None else None

    def retry(self, model: str) -> None:
        """Try a failed model again from its last worker, once `RETRY_SECS` passed since the
        failure (requests and `/readiness` ask, so a gateway recovers without a re-registration)."""
        entry, source = self._entries.get(model), self._sources.get(model)
        if entry is not None and entry.state == "failed" and source is not None:
            self.ensure(model, *source)

    def failed_models(self) -> list[str]:
        return [model for model, entry in self._entries.items() if entry.state == "failed"]

    def get(self, model: str) -> ModelTokenizer | None:
        entry = self._entries.get(model)
        return entry.tokenizer if entry is not None else None

    def state(self, model: str) -> tuple[str, str | None]:
        """("ready" | "loading" | "failed" | "unknown", the last error)."""
        entry = self._entries.get(model)
        if entry is None:
            return "unknown", None
        return entry.state, entry.error

    def ensure(self, model: str, info: EngineInfo, source: TokenizerSource) -> None:
        """Start loading `model`'s tokenizer unless it is loaded, loading, or failed too recently."""
        self._sources[model] = (info, source)
        entry = self._entries.get(model)
        if entry is not None and (entry.state in ("ready", "loading") or trio.current_time() - entry.failed_at < self.retry_secs):
            return
        if self._spawn is None:  # the fleet is stopping (or not started): nothing new starts
            return
        self._entries[model] = _Entry("loading", error=entry.error if entry is not None else None)
        self._spawn(self._load, model, info, source)

    async def _load(self, model: str, info: EngineInfo, source: TokenizerSource) -> None:
        entry = self._entries[model]
        try:
            tokenizer, where = await self._find(model, info, source)
        except trio.TooSlowError:
            self._failed(entry, model, f"GetTokenizer took over {self.fetch_timeout:g}s")
            return
        except Exception as exc:  # any failure (the RPC's status, a bad archive, a bad file) is this model's only
            self._failed(entry, model, str(exc) or type(exc).__name__)
            return
        entry.state, entry.tokenizer, entry.error, entry.source = "ready", tokenizer, None, where
        log.info("model %s: tokenizer loaded from %s", model, where)

    def _failed(self, entry: _Entry, model: str, error: str) -> None:
        entry.state, entry.error, entry.failed_at = "failed", error, trio.current_time()
        log.error(
            "model %s: no tokenizer: %s (requests for it get 503; tried again in %gs when asked)", model, error, self.retry_secs
        )

    async def _find(self, model: str, info: EngineInfo, source: TokenizerSource) -> tuple[ModelTokenizer, str]:
        local = [info.tokenizer_path, info.model_path, self.tokenizer_path, self.model_path]
        for path in local:
            if path and _has_tokenizer(Path(path)):
                return await self._load_dir(Path(path)), path
        cached = self.cache_dir / _cache_key(model, info)
        if _has_tokenizer(cached):
            try:
                return await self._load_dir(cached), f"{cached} (fetched earlier)"
            except ValueError as exc:  # a damaged cache: fetch again over it
                log.warning("model %s: cached tokenizer at %s does not load (%s); fetching it again", model, cached, exc)
        with trio.fail_after(self.fetch_timeout):
            assembler = ArchiveAssembler()
            # aclosing: a bad chunk (ArchiveError) ends the RPC here, not when the GC finds it
            async with contextlib.aclosing(source.tokenizer_archive(self.fetch_timeout)) as chunks:
                async for data, sha256 in chunks:
                    assembler.feed(data, sha256)
        members = assembler.finish()
        await trio.to_thread.run_sync(extract_archive, members, cached)
        return await self._load_dir(cached), f"the worker (GetTokenizer, {assembler.received} bytes, cached in {cached})"

    async def _load_dir(self, path: Path) -> ModelTokenizer:
        template = self.chat_template_path
        return await trio.to_thread.run_sync(
            lambda: load_model_tokenizer(path, chat_template_path=template, strict_optional=False)
        )


def _has_tokenizer(path: Path) -> bool:
    try:
        return (path / "tokenizer.json").is_file()
    except OSError:
        return False


def _cache_key(model: str, info: EngineInfo) -> str:
    """A directory name per model as its engines describe it: readable, and distinct for two
    models (or two paths of one id) that would otherwise share a name."""
    identity = f"{info.runtime}\0{model}\0{info.model_path}\0{info.tokenizer_path}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model)[:64].strip("._") or "model"
    return f"{readable}-{digest}"
