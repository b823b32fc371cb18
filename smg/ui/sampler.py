"""The cluster page's history: every `STEP_SECS` one row of this gateway's state into `ctx.series`.

A row is a few dozen numbers read from state the gateway keeps anyway (no scrape, no lock), so
the sampler costs microseconds per step whether or not a page is open; it runs in the gateway's
root nursery. Series names are `<scope>|<subject>|<quantity>` (the page groups by them).
"""

from __future__ import annotations

import time

import trio

from smg.context import GatewayContext
from smg.observability.series import STEP_SECS, Rates


def sample(ctx: GatewayContext, rates: Rates, now: float) -> dict[str, float | None]:
    """One row: the gateway's rates and counts, and per worker its in-flight, load report, KV use
    and cache hit rate over the step. `now` is trio's clock (rates do not jump with the wall clock)."""
    row: dict[str, float | None] = {
        "gateway||requests_per_s": rates.rate("answered", now, ctx.answered),
        "gateway||errors_per_s": rates.rate("failed", now, ctx.failed),
        "gateway||in_flight": float(ctx.in_flight),
    }
    cluster = ctx.cluster
    if cluster is not None:
        row["mesh||members_alive"] = float(len(cluster.alive_members()))
        replication = cluster.replication
        if replication is not None:  # the mean lag of the writes merged during the step
            lag = rates.ratio("lag", replication.lag_sum * 1000, replication.lag_count)
            row["mesh||replication_lag_ms"] = None if lag is None else round(lag, 3)
    sampled = {"answered", "failed", "lag"}
    for worker in ctx.registry:
        url = worker.url
        row[f"worker|{url}|in_flight"] = float(worker.in_flight + worker.peer_in_flight)
        row[f"worker|{url}|reported_load"] = float(worker.reported_load)
        row[f"worker|{url}|kv_usage"] = worker.reported_token_usage
        prompt = sum(counts[0] for counts in worker.tokens.values())
        cached = sum(counts[1] for counts in worker.tokens.values())
        row[f"worker|{url}|hit_rate"] = rates.ratio(f"hit|{url}", cached, prompt)
        sampled.add(f"hit|{url}")
    rates.forget(sampled)
    return row


async def run_sampler(ctx: GatewayContext, step: float = STEP_SECS) -> None:
    """Sample every `step` seconds until cancelled with the gateway's nursery."""
    rates = Rates()
    while True:
        ctx.series.add(time.time(), sample(ctx, rates, trio.current_time()))
        await trio.sleep(step)
