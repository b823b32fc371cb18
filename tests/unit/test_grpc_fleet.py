"""The node's gRPC side (`smg.upstream.grpc.fleet`): cancelling its task (the node stopping)
closes the channels and stops the grpc.aio loop thread, even though the task is cancelled."""

from __future__ import annotations

from pathlib import Path

import trio

from smg.upstream.grpc.fleet import EngineFleet
from smg.upstream.grpc.tokenizers import ModelTokenizers


async def test_cancelling_the_fleet_stops_its_loop_thread(tmp_path: Path) -> None:
    fleet = EngineFleet(ModelTokenizers(tokenizer_path=None, model_path=None, cache_dir=tmp_path))
    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.run)
        fleet.clients.get("grpc://127.0.0.1:1")  # a channel to close
        thread = fleet.aio._thread
        assert thread is not None and thread.is_alive()
        nursery.cancel_scope.cancel()
    assert not thread.is_alive()
