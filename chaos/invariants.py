"""What must hold after a scenario, measured: failure classes, convergence, agreement, flaps."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import openai

from chaos.cluster import ADMIN_KEY, Cluster
from chaos.traffic import Outcome

DEAD_LINE = re.compile(r"^(\S+) .* smg\.mesh: mesh (\S+): (\S+) is dead")
KILL_MARGIN = 0.5  # seconds: a request that failed this close to its gateway's kill was in flight on it


@dataclass
class Report:
    scenario: str
    sent: int = 0
    ok: int = 0
    rerouted: int = 0
    served_while_draining: int = 0  # answered by a gateway between its SIGTERM and its exit
    killed_in_flight: int = 0  # class (a)
    streams_cut: int = 0  # class (b)
    other_failures: int = 0  # class (c): must be 0
    failure_samples: list[str] = field(default_factory=list)
    converge_secs: float | None = None
    digests_agree_secs: float | None = None
    registry_identical: bool = False
    max_deaths_per_pair: int = 0
    allowed_deaths: int = 0
    rss_growth_mb: float = 0.0
    limit: int = 0  # the limited tenant's requests per minute
    limit_slack: float = 0.0  # the contract: admitted per window <= limit x (1 + slack)
    limited_sent: int = 0
    limited_refused: int = 0  # 429s: the limit was reached
    admitted_per_window: list[int] = field(default_factory=list)  # per aligned minute the run touched
    timings: dict[str, float | None] = field(default_factory=dict)
    history_shared: bool | None = None  # a stored response continued on every other gateway (shared history)
    violations: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return "PASS" if not self.violations else "FAIL"

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["verdict"] = self.verdict
        return out


def classify(report: Report, outcomes: list[Outcome], cluster: Cluster) -> None:
    kills = [(t, int(what.rsplit(" ", 1)[1])) for t, what in cluster.events if what.startswith("kill -9 gateway")]
    for o in outcomes:
        report.sent += 1
        report.rerouted += 1 if o.rerouted else 0
        if o.ok:
            report.ok += 1
        elif any(g == o.gateway and o.started - KILL_MARGIN <= t <= o.ended + KILL_MARGIN for t, g in kills):
            report.killed_in_flight += 1
        elif o.stream and o.first_byte:
            report.streams_cut += 1
        else:
            report.other_failures += 1
            if len(report.failure_samples) < 5:
                report.failure_samples.append(f"gateway {o.gateway}: {o.error}")
    if report.other_failures:
        report.violations.append(f"{report.other_failures} failures outside the expected classes")


def draining(report: Report, outcomes: list[Outcome], cluster: Cluster) -> None:
    """How many requests a gateway answered after its SIGTERM: the settle window at work (without
    it they would have been refused, or cut when a connection was taken in the same instant)."""
    stops: dict[int, float] = {}
    for t, what in cluster.events:
        if what.startswith("SIGTERM gateway"):
            stops[int(what.rsplit(" ", 1)[1])] = t
        elif what.endswith(" exited"):
            i = int(what.split()[1])
            report.served_while_draining += sum(
                1 for o in outcomes if o.ok and o.gateway == i and stops.get(i, t) <= o.started <= t
            )


def no_failures(report: Report) -> None:
    """For faults a client must not notice (a rolling restart): a request in flight on a stopping
    gateway or a stream cut short is a failure like any other."""
    failed = report.killed_in_flight + report.streams_cut
    if failed:
        report.violations.append(f"{failed} requests cut on a stopping gateway; this scenario allows none")


def rate_limit(report: Report, limited: list[tuple[float, int]], limit: int, slack: float) -> None:
    """The limited tenant's admissions per aligned minute window, against the contract. The limiter's
    sliding estimate is at least the current window's count, so no window may hold more than the limit
    (plus the scenario's slack); the 429s prove the limit was reached."""
    report.limit, report.limit_slack, report.limited_sent = limit, slack, len(limited)
    report.limited_refused = sum(1 for _, status in limited if status == 429)
    windows: Counter[int] = Counter(int(sent // 60) for sent, status in limited if status == 200)
    report.admitted_per_window = [windows[w] for w in sorted(windows)]
    worst = max(report.admitted_per_window, default=0)
    if worst > limit * (1 + slack):
        report.violations.append(f"the limited tenant got {worst} requests in one minute (limit {limit}, slack {slack:.0%})")
    failed = sum(1 for _, status in limited if status not in (200, 429))
    if failed:
        report.violations.append(f"{failed} of the limited tenant's requests got neither an answer nor a 429")


def wait_converged(report: Report, cluster: Cluster, deadline: float) -> None:
    """After the faults: every gateway sees every gateway alive; then stores and registries agree."""
    started = time.monotonic()
    names: set[str] = set()
    while time.monotonic() - started < deadline:
        statuses = [cluster.status(i) for i in range(cluster.gateways)]
        if all(s is not None for s in statuses):
            names = {s["node_name"] for s in statuses}  # type: ignore[index]
            views = [{n["name"]: n["status"] for n in s["nodes"]} for s in statuses]  # type: ignore[index]
            if all(all(view.get(name) == "alive" for name in names) for view in views) and len(names) == cluster.gateways:
                report.converge_secs = round(time.monotonic() - started, 2)
                break
        time.sleep(0.1)
    else:
        report.violations.append(f"membership not converged within {deadline:g}s")
        return
    while time.monotonic() - started < deadline:
        statuses = [cluster.status(i) for i in range(cluster.gateways)]
        stores = {json.dumps(s["stores"], sort_keys=True) for s in statuses if s is not None}
        if len(stores) == 1 and all(s is not None for s in statuses):
            report.digests_agree_secs = round(time.monotonic() - started, 2)
            break
        time.sleep(0.2)
    else:
        report.violations.append(f"store digests differ after {deadline:g}s")
    registries = [cluster.worker_ids(i) for i in range(cluster.gateways)]
    report.registry_identical = all(r is not None for r in registries) and len({frozenset(r) for r in registries}) == 1  # type: ignore[arg-type]
    if not report.registry_identical:
        report.violations.append("worker registries differ")


def count_flaps(report: Report, cluster: Cluster, since_wall: str) -> None:
    """Dead transitions per (observer, member) in the gateways' logs since the scenario began."""
    deaths: Counter[tuple[str, str]] = Counter()
    for node in cluster.gateway_nodes:
        for line in node.log.read_text(errors="replace").splitlines():
            found = DEAD_LINE.match(line)
            if found and found.group(1) >= since_wall:
                deaths[(found.group(2), found.group(3))] += 1
    report.max_deaths_per_pair = max(deaths.values(), default=0)
    if report.max_deaths_per_pair > report.allowed_deaths:
        report.violations.append(
            f"a member was declared dead {report.max_deaths_per_pair} times by one observer (allowed {report.allowed_deaths})"
        )


def memory(report: Report, before: list[int], cluster: Cluster) -> None:
    after = [node.rss_kb() for node in cluster.gateway_nodes]
    growth = [(a - b) / 1024 for a, b in zip(after, before, strict=True) if a and b]
    report.rss_growth_mb = round(max(growth, default=0.0), 1)
    if report.rss_growth_mb > 100:
        report.violations.append(f"a gateway's memory grew by {report.rss_growth_mb} MB")


def shared_history(report: Report, cluster: Cluster, model: str) -> None:
    """With a shared history (the compose file's PostgreSQL): a response stored through one
    gateway is continued (`previous_response_id`) through every other, as a client behind a
    balancer would; a gateway that cannot find it is a violation."""
    clients = [
        openai.OpenAI(base_url=cluster.url(i) + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=30)
        for i in range(cluster.gateways)
    ]
    try:
        first = clients[0].responses.create(model=model, input="remember the word kiwi")
        for i, client in enumerate(clients[1:], start=1):
            follow = client.responses.create(model=model, input="which word?", previous_response_id=first.id)
            if follow.status != "completed":
                report.violations.append(f"gateway {i} continued a stored response as {follow.status}")
    except openai.APIError as exc:
        report.history_shared = False
        report.violations.append(f"a stored response did not continue on another gateway: {exc}")
        return
    report.history_shared = True
