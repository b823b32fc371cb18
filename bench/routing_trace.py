"""Where a routing run's TTFT tail comes from: each request as the client, the choosing gateway
and the worker saw it, joined on the request id.

- the client: which gateway it asked, when, its TTFT (`routing.Stats.records`);
- the gateway (`--log-routing-decisions --log-json`): the worker chosen and, for each candidate,
  what the gateway believed at that moment: in flight from itself, from its peers (the mesh's
  load store), and the worker's last load report (running + waiting, of which waiting);
- the worker (`GET /sim/prefills`): the prefill queue the request found on arrival (requests
  waiting for a slot, uncached tokens waiting or in prefill), its own uncached tokens, how long
  it waited for a prefill slot and how long its prefill took.

From every worker's prefills the true queue of each worker at any moment is rebuilt, so a choice
can be compared with the truth of every candidate, not only the chosen one.
"""

from __future__ import annotations

import bisect
import datetime
import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any


def _wall(ts: str) -> float:
    """A log line's `ts` (ISO 8601, UTC, milliseconds) as wall-clock seconds."""
    return datetime.datetime.strptime(ts.rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=datetime.UTC).timestamp()


def read_decisions(logs: list[Path]) -> dict[str, dict[str, Any]]:
    """request id -> the gateway's decision (the last, if it retried), with `gateway` = log index
    and `decided` = its wall-clock time."""
    decisions: dict[str, dict[str, Any]] = {}
    for index, path in enumerate(logs):
        for line in path.read_text(errors="replace").splitlines():
            if '"msg":"route"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            entry["gateway"] = index
            entry["decided"] = _wall(entry["ts"])
            decisions[entry.get("request_id", "")] = entry
    return decisions


class WorkerTimeline:
    """A worker's prefill queue over time, from its prefill records: at time t, how many requests
    wait for a slot, and how many uncached tokens wait or are in prefill."""

    def __init__(self, prefills: list[dict[str, Any]]) -> None:
        self.edges: list[tuple[float, int, int]] = []  # (time, +/-1 waiting, +/- tokens)
        for p in prefills:
            arrival = p["at"]
            start = arrival + p["wait_ms"] / 1000
            end = start + p["prefill_ms"] / 1000
            self.edges += [(arrival, 1, p["uncached_tokens"]), (start, -1, 0), (end, 0, -p["uncached_tokens"])]
        self.edges.sort()
        self.times = [e[0] for e in self.edges]
        self.waiting: list[int] = []
        self.tokens: list[int] = []
        waiting = tokens = 0
        for _, dw, dt in self.edges:
            waiting, tokens = waiting + dw, tokens + dt
            self.waiting.append(waiting)
            self.tokens.append(tokens)

    def at(self, t: float) -> tuple[int, int]:
        i = bisect.bisect_right(self.times, t) - 1
        return (self.waiting[i], self.tokens[i]) if i >= 0 else (0, 0)


def explain(
    records: list[dict[str, Any]],
    decisions: dict[str, dict[str, Any]],
    prefills: dict[str, list[dict[str, Any]]],
    slow_ms: float,
    out: Path | None = None,
) -> list[str]:
    """Lines that say where the slow requests' time went and what their gateways believed."""
    by_id = {p["request_id"]: (worker, p) for worker, ps in prefills.items() for p in ps}
    timelines = {worker: WorkerTimeline(ps) for worker, ps in prefills.items()}
    begin = min((r["at"] for r in records), default=0.0)
    rows = []
    for r in records:
        worker, p = by_id.get(r["id"], (r["worker"], None))
        d = decisions.get(r["id"])
        row = {**r, "t": r["at"] - begin, "ttft_ms": r["ttft"] * 1000}
        if p is not None:
            row.update(wait_ms=p["wait_ms"], prefill_ms=p["prefill_ms"], uncached=p["uncached_tokens"],
                       queued_requests=p["queued_requests"], queued_tokens=p["queued_tokens"])  # fmt: skip
            # the request's time to first token in parts: client -> the gateway's choice -> the
            # worker's handler -> its prefill wait and work -> the first token back at the client
            row["worker_ms"] = p["wait_ms"] + p["prefill_ms"]
            if d is not None:
                row["to_decision_ms"] = (d["decided"] - r["at"]) * 1000
                row["to_worker_ms"] = (p["at"] - d["decided"]) * 1000
            row["back_ms"] = row["ttft_ms"] - (p["at"] - r["at"]) * 1000 - row["worker_ms"]
        if d is not None:
            row["gateway"] = d["gateway"]
            beliefs = d.get("candidates", {})
            row["believed"] = beliefs
            chosen = beliefs.get(worker)
            # what the gateway believed of the chosen worker, and of the least loaded other one
            if chosen is not None:
                row["believed_chosen"] = chosen[0] + chosen[1]
                others = [b[0] + b[1] for w, b in beliefs.items() if w != worker]
                row["believed_min_other"] = min(others) if others else None
            # the truth of every candidate at the moment the request reached the worker
            truth = {w: timelines[w].at(r["at"]) for w in beliefs if w in timelines}
            row["truth_queue"] = truth
            idle = [w for w, (waiting, tokens) in truth.items() if w != worker and tokens == 0]
            row["an_idle_worker_existed"] = bool(idle)
        rows.append(row)
    if out is not None:
        with out.open("w") as f:
            for row in rows:
                f.write(json.dumps(row, default=str) + "\n")
    slow = [r for r in rows if r["ttft_ms"] > slow_ms]
    lines = [f"  {len(slow)} of {len(rows)} requests ({100 * len(slow) / max(1, len(rows)):.1f} %) over {slow_ms:g} ms TTFT"]
    if not slow:
        return lines
    parts = [r for r in slow if "to_worker_ms" in r]
    segments = (
        ("client to the gateway's choice", "to_decision_ms"),
        ("choice to the worker", "to_worker_ms"),
        ("prefill wait + work", "worker_ms"),
        ("first token back", "back_ms"),
    )
    if parts:
        shown = [
            f"{label} {statistics.median(r[key] for r in parts):.0f} / {max(r[key] for r in parts):.0f}"
            for label, key in segments
        ]
        lines.append("  slow ones' TTFT in parts (median / max ms): " + ", ".join(shown))
    traced = [r for r in slow if "wait_ms" in r]
    if traced:
        lines.append(
            f"  slow ones: median wait for a prefill slot {statistics.median(r['wait_ms'] for r in traced):.0f} ms, "
            f"own prefill {statistics.median(r['prefill_ms'] for r in traced):.0f} ms, "
            f"queue found on arrival {statistics.median(r['queued_requests'] for r in traced):.0f} requests / "
            f"{statistics.median(r['queued_tokens'] for r in traced):.0f} uncached tokens; "
            f"own uncached tokens {statistics.median(r['uncached'] for r in traced):.0f} (all: "
            f"{statistics.median(r['uncached'] for r in rows if 'uncached' in r):.0f})"
        )
    decided = [r for r in slow if "believed_chosen" in r]
    if decided:
        blind = [r for r in decided if r["believed_chosen"] <= (r["believed_min_other"] or 0)]
        idle = [r for r in decided if r.get("an_idle_worker_existed")]
        lines.append(
            f"  their gateways believed the chosen worker no busier than the least loaded other in {len(blind)} of "
            f"{len(decided)}; another worker had an empty prefill queue at that moment in {len(idle)}"
        )
        # arrivals at the same worker shortly before, from other gateways vs the same gateway
        by_worker: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_worker.setdefault(r["worker"], []).append(r)
        others = same = 0
        for r in decided:
            for q in by_worker.get(r["worker"], []):
                if q is not r and 0 <= r["at"] - q["at"] <= 0.25 and q.get("uncached", 0) > 256:
                    if q.get("gateway") == r.get("gateway"):
                        same += 1
                    else:
                        others += 1
        lines.append(
            f"  uncached prompts (> 256 tokens) that reached the same worker in the 250 ms before each slow one: "
            f"{others} from other gateways, {same} from the same gateway"
        )
    buckets = Counter(int(r["t"] // 10) * 10 for r in slow)
    lines.append("  slow requests per 10 s of the run: " + ", ".join(f"{t}s:{n}" for t, n in sorted(buckets.items())))
    per_worker = Counter(r["worker"] for r in slow)
    lines.append("  slow requests per worker: " + ", ".join(f"{w.rsplit(':', 1)[-1]}:{n}" for w, n in sorted(per_worker.items())))
    return lines
