"""`--prefill-slots`: the simulated engine's prefills queue behind one another, and it records
what each request found (the truth the routing benchmark compares the gateways' beliefs with)."""

from __future__ import annotations

from typing import Any

import trio

from smg.simworker.engine import SimConfig, SimEngine
from smg.simworker.slots import PrefillSlots, prefill, running_slot


def _prompt(name: str, blocks: int) -> list[str]:
    return [f"{name}{i}" for i in range(blocks * 16)]


async def test_uncached_prompts_wait_for_the_one_prefill_slot_in_arrival_order(autojump_clock: Any) -> None:
    engine = SimEngine(SimConfig(ttft_ms=0, prefill_tokens_per_sec=1000, prefill_slots=1))
    slots = PrefillSlots().current(1)
    done: dict[str, float] = {}
    seen: list[dict[str, Any]] = []

    async def one(name: str, tokens: list[str]) -> None:
        await prefill(engine, slots, tokens, len(tokens), name)
        done[name] = trio.current_time()

    async def watch() -> None:
        await trio.sleep(0.01)
        seen.append(engine.load_report())

    begin = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "a", _prompt("a", 10))  # 160 tokens: 0.16 s
        await trio.sleep(0)
        nursery.start_soon(one, "b", _prompt("b", 5))  # 80 tokens, after a
        await trio.sleep(0)
        nursery.start_soon(one, "c", _prompt("c", 5))  # after b
        nursery.start_soon(watch)
    assert round(done["a"] - begin, 3) == 0.16
    assert round(done["b"] - begin, 3) == 0.24
    assert round(done["c"] - begin, 3) == 0.32
    a, b, c = engine.prefills
    assert (a["queued_requests"], a["queued_tokens"], a["wait_ms"]) == (0, 0, 0)
    assert (b["queued_requests"], b["queued_tokens"], b["wait_ms"]) == (0, 160, 160)  # a was in prefill
    assert (c["queued_requests"], c["queued_tokens"]) == (1, 240)  # b waited, a's and b's tokens ahead
    assert [p["uncached_tokens"] for p in engine.prefills] == [160, 80, 80]
    assert seen[0]["num_waiting_reqs"] == 2 and seen[0]["num_queued_prefill_tokens"] == 320
    assert engine.prefill_waiting == 0 and engine.prefill_queued_tokens == 0


async def test_without_slots_prefills_overlap_and_a_cached_prompt_is_quick(autojump_clock: Any) -> None:
    engine = SimEngine(SimConfig(ttft_ms=0, prefill_tokens_per_sec=1000))
    begin = trio.current_time()
    async with trio.open_nursery() as nursery:
        for name in ("x", "y"):
            tokens = _prompt(name, 10)
            nursery.start_soon(prefill, engine, None, tokens, len(tokens), name)
    assert [p["uncached_tokens"] for p in engine.prefills] == [160, 160]
    assert round(trio.current_time() - begin, 3) == 0.16  # together, not one after the other
    await prefill(engine, None, tokens, len(tokens), "z")
    assert engine.prefills[-1]["uncached_tokens"] == 0  # the cache holds it now


def test_the_slot_count_can_change_at_run_time() -> None:
    slots = PrefillSlots()
    assert slots.current(0) is None
    one = slots.current(1)
    assert one is not None and slots.current(1) is one
    assert slots.current(2) is not one


async def test_a_request_that_leaves_gives_its_slot_and_its_counts_back(autojump_clock: Any) -> None:
    engine = SimEngine(SimConfig(ttft_ms=0, prefill_tokens_per_sec=1000, prefill_slots=1))
    slots = PrefillSlots().current(1)
    done: list[str] = []

    async def one(name: str, blocks: int) -> None:
        tokens = _prompt(name, blocks)
        await prefill(engine, slots, tokens, len(tokens), name)
        done.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "a", 10)  # 0.16 s in prefill
        await trio.sleep(0)

        async def leaving(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                task_status.started(scope)
                await one("b", 5)  # will leave while waiting

        waiting = await nursery.start(leaving)
        await trio.sleep(0)
        nursery.start_soon(one, "c", 5)
        await trio.sleep(0.05)
        assert engine.prefill_waiting == 2
        waiting.cancel()
        await trio.sleep(0.01)
        assert engine.prefill_waiting == 1 and engine.prefill_queued_tokens == 160 + 80  # b's are gone
    assert done == ["a", "c"] and [p["request_id"] for p in engine.prefills] == ["a", "c"]
    assert engine.prefill_waiting == 0 and engine.prefill_queued_tokens == 0


async def test_requests_waiting_for_a_prefill_slot_hold_no_kv_yet(autojump_clock: Any) -> None:
    engine = SimEngine(SimConfig(ttft_ms=0, prefill_tokens_per_sec=1000, prefill_slots=1, cache_blocks=1000))
    running, slots = trio.Semaphore(8), PrefillSlots().current(1)
    seen: list[dict[str, Any]] = []

    async def one(name: str, blocks: int, output: int) -> None:
        tokens = _prompt(name, blocks)
        async with running_slot(engine, running, len(tokens) + output):
            await prefill(engine, slots, tokens, len(tokens), name, held=len(tokens) + output)
            await trio.sleep(1.0)  # decoding: its KV in use

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "a", 10, 40)  # in prefill for 0.16 s, holds 200
        await trio.sleep(0)
        nursery.start_soon(one, "b", 5, 20)  # waits for the slot: 100 not yet in use
        await trio.sleep(0.05)
        seen.append(engine.load_report())
        await trio.sleep(0.15)  # a decodes, b is in prefill
        seen.append(engine.load_report())
    assert (seen[0]["num_running_reqs"], seen[0]["num_waiting_reqs"], seen[0]["num_used_tokens"]) == (1, 1, 200)
    assert (seen[1]["num_running_reqs"], seen[1]["num_waiting_reqs"], seen[1]["num_used_tokens"]) == (2, 0, 300)
    assert engine.load_report()["num_used_tokens"] == 0 and engine.prefill_waiting_tokens == 0
