"""The models' tokenizers for gRPC workers (`smg.upstream.grpc.tokenizers`): a local source wins,
GetTokenizer fills the cache, and a failed fetch (a status, a bad checksum, a timeout) is this
model's failure only, tried again once `RETRY_SECS` passed, never the node's crash."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
import trio

from smg.generation.types import EngineInfo
from smg.simworker.grpc_model import model_directory
from smg.tokenization.archive import archive_chunks, build_archive
from smg.upstream.grpc.status import status_error
from smg.upstream.grpc.tokenizers import ModelTokenizers

INFO = EngineInfo(runtime="sglang", model_id="sim-model")


class Worker:
    """GetTokenizer's worker end: answers with `plan`'s next step each call."""

    def __init__(self, *plan: str) -> None:
        self.plan = list(plan)
        self.calls = 0

    async def tokenizer_archive(self, timeout: float) -> AsyncGenerator[tuple[bytes, str], None]:
        self.calls += 1
        step = self.plan.pop(0)
        if step == "unimplemented":
            raise status_error("UNIMPLEMENTED", "GetTokenizer is not served")
        data, sha = build_archive(model_directory())
        if step == "bad-checksum":
            sha = "0" * 64
        if step == "hang":
            await trio.sleep_forever()
        for chunk in archive_chunks(data, sha, 4096):
            yield chunk


async def settle(tokenizers: ModelTokenizers, model: str) -> str:
    with trio.fail_after(30):
        while tokenizers.state(model)[0] == "loading":
            await trio.sleep(0.01)
    return tokenizers.state(model)[0]


@pytest.mark.parametrize("failure", ["unimplemented", "bad-checksum", "hang"])
async def test_a_failed_fetch_is_the_models_failure_then_a_retry_loads_it(failure: str, tmp_path: Path) -> None:
    tokenizers = ModelTokenizers(tokenizer_path=None, model_path=None, cache_dir=tmp_path)
    tokenizers.fetch_timeout, tokenizers.retry_secs = 0.5, 0.2  # real time: loading runs in a thread
    worker = Worker(failure, "good")
    async with trio.open_nursery() as nursery:
        tokenizers.attach(nursery)
        tokenizers.ensure("sim-model", INFO, worker)
        assert await settle(tokenizers, "sim-model") == "failed"
        assert tokenizers.state("sim-model")[1]  # the reason, for the 503 and the log
        tokenizers.retry("sim-model")  # too soon: nothing happens
        assert tokenizers.state("sim-model")[0] == "failed" and worker.calls == 1
        await trio.sleep(tokenizers.retry_secs)
        tokenizers.retry("sim-model")
        assert await settle(tokenizers, "sim-model") == "ready"
        assert tokenizers.get("sim-model") is not None and worker.calls == 2
        nursery.cancel_scope.cancel()


async def test_a_local_directory_wins_and_the_fetched_copy_is_reused(tmp_path: Path) -> None:
    local = ModelTokenizers(tokenizer_path=None, model_path=model_directory(), cache_dir=tmp_path)
    fetched = ModelTokenizers(tokenizer_path=None, model_path=None, cache_dir=tmp_path)
    again = ModelTokenizers(tokenizer_path=None, model_path=None, cache_dir=tmp_path)
    worker = Worker("good")
    async with trio.open_nursery() as nursery:
        for tokenizers in (local, fetched, again):
            tokenizers.attach(nursery)
            tokenizers.ensure("sim-model", INFO, worker)
            assert await settle(tokenizers, "sim-model") == "ready"
    assert worker.calls == 1  # only `fetched` asked the worker; `again` read its cache


async def test_nothing_starts_once_the_fleet_stopped(tmp_path: Path) -> None:
    tokenizers = ModelTokenizers(tokenizer_path=None, model_path=None, cache_dir=tmp_path)
    tokenizers.attach(None)
    tokenizers.ensure("sim-model", INFO, Worker("good"))  # a discovery during shutdown: no error
    assert tokenizers.state("sim-model")[0] == "unknown"
