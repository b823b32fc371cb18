"""`python -m chaos run [--scenario NAME ...|--all|--ci] [--nodes 3] [--duration S] [--seed N]`.

Each scenario gets a fresh cluster (gateways and simulated workers as
processes on 127.0.0.x), traffic from the `openai` client through every
gateway, its faults, then a heal and the invariant checks. Prints a table
and writes JSON (`--json`, default `chaos-report.json`). Exit status 1 when
an invariant is violated.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import sys
import time
from pathlib import Path

from chaos import netns
from chaos.cluster import LIMIT_PER_MINUTE, Cluster
from chaos.invariants import (
    Report,
    classify,
    count_flaps,
    draining,
    memory,
    no_failures,
    rate_limit,
    shared_history,
    wait_converged,
)
from chaos.scenarios import SCENARIOS
from chaos.traffic import Traffic

COLUMNS = (
    f"{'scenario':<22}{'sent':>6}{'ok':>6}{'(a)':>5}{'(b)':>5}{'(c)':>5}{'rerouted':>9}"
    f"{'converge':>10}{'digests':>9}{'deaths':>8}{'limit':>10}{'RSS+MB':>8}  verdict"
)


def run_scenario(name: str, args: argparse.Namespace) -> Report:
    scenario = SCENARIOS[name]
    cluster = Cluster(gateways=args.nodes, workers=args.workers, seed=args.seed, net=args.net, compose=args.compose)
    report = Report(name, allowed_deaths=scenario.allowed_deaths)
    try:
        cluster.start()
        since = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        time.sleep(2)  # the mesh settles
        if cluster.database is not None:  # the compose file's shared PostgreSQL: any gateway continues any response
            shared_history(report, cluster, "sim-model")
        rss = [node.rss_kb() for node in cluster.gateway_nodes]
        traffic = Traffic(cluster, rate=args.rate, seed=args.seed)
        traffic.start()
        try:
            scenario.run(cluster, args.duration)
            cluster.heal()
            for i, node in enumerate(cluster.gateway_nodes):
                if node.stopped:
                    cluster.resume_gateway(i)
            time.sleep(3)  # traffic after the heal
        finally:
            traffic.stop()
        classify(report, traffic.outcomes, cluster)
        draining(report, traffic.outcomes, cluster)
        if scenario.no_failures:
            no_failures(report)
        rate_limit(report, traffic.limited, LIMIT_PER_MINUTE, scenario.limit_slack)
        report.timings = dict(cluster.timings)
        rejoin = report.timings.get("SIGCONT -> alive on every peer", 0.0)
        if rejoin is None or rejoin > 1.0:
            report.violations.append(f"a resumed gateway was alive everywhere only after {rejoin} s (limit 1 s)")
        wait_converged(report, cluster, args.converge_deadline)
        count_flaps(report, cluster, since)
        memory(report, rss, cluster)
    except Exception as exc:  # a harness failure is a failed scenario, reported, not a crash
        report.violations.append(f"harness: {type(exc).__name__}: {exc}")
    finally:
        cluster.close()
    report.failure_samples.append(f"logs: {cluster.logdir}")
    return report


def row(r: Report) -> str:
    def secs(value: float | None) -> str:
        return f"{value:.1f}s" if value is not None else "n/a"

    return (
        f"{r.scenario:<22}{r.sent:>6}{r.ok:>6}{r.killed_in_flight:>5}{r.streams_cut:>5}{r.other_failures:>5}{r.rerouted:>9}"
        f"{secs(r.converge_secs):>10}{secs(r.digests_agree_secs):>9}{r.max_deaths_per_pair:>5}/{r.allowed_deaths:<2}"
        f"{max(r.admitted_per_window, default=0):>6}/{r.limit:<3}"
        f"{r.rss_growth_mb:>8.1f}  {r.verdict}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chaos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run scenarios")
    which = run.add_mutually_exclusive_group()
    which.add_argument("--scenario", nargs="+", choices=sorted(SCENARIOS), help="scenarios to run")
    which.add_argument("--all", action="store_true", help="every scenario")
    which.add_argument("--ci", action="store_true", help="the short subset CI runs")
    run.add_argument("--nodes", type=int, default=3, help="gateways (default: %(default)s)")
    run.add_argument("--workers", type=int, default=2, help="simulated workers (default: %(default)s)")
    run.add_argument("--duration", type=float, default=30.0, help="seconds of traffic per scenario (default: %(default)s)")
    run.add_argument("--rate", type=float, default=10.0, help="requests per second offered (default: %(default)s)")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument(
        "--compose", type=Path, help="start the topology of this docker-compose file (its gateway and worker services)"
    )
    run.add_argument(
        "--net",
        choices=("auto", "netns", "loopback"),
        default="auto",
        help="netns: a namespace per node, faults on real packets (root, ip, nft); loopback: 127.0.0.x, "
        "faults in the mesh transport; auto: netns when possible (default)",
    )
    run.add_argument("--converge-deadline", type=float, default=30.0, help="seconds allowed to converge after the heal")
    run.add_argument("--json", default="chaos-report.json", help="where to write the results (default: %(default)s)")
    sub.add_parser("list", help="list the scenarios")
    args = parser.parse_args()
    if args.command == "list":
        for s in SCENARIOS.values():
            print(f"{s.name:<22}{s.about}{'  [ci]' if s.ci else ''}")
        return 0
    why_not = netns.unavailable() if args.net != "loopback" else "asked for loopback"
    if args.net == "netns" and why_not:
        parser.error(f"--net netns: {why_not}")
    args.net = "loopback" if why_not else "netns"
    names = args.scenario or ([n for n, s in SCENARIOS.items() if s.ci] if args.ci else list(SCENARIOS))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))  # `finally` blocks stop every process
    load = os.getloadavg()
    print(f"{len(names)} scenarios, {args.nodes} gateways, {args.workers} workers, {args.duration:g}s at {args.rate:g} req/s, "
          f"seed {args.seed}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")  # fmt: skip
    if why_not:
        print(f"network: loopback 127.0.0.x ({why_not}); partitions and loss go through the mesh fault filter")
    else:
        print("network: a namespace per node on a bridge; partitions and loss are nftables rules on real packets")
    print("failures: (a) in flight on a killed gateway, (b) streams cut after their first byte, (c) anything else (must be 0)")
    print(COLUMNS)
    reports = []
    for name in names:
        report = run_scenario(name, args)
        reports.append(report)
        print(row(report), flush=True)
        if report.timings:
            print("    " + ", ".join(f"{k}: {'n/a' if v is None else f'{v:.2f}s'}" for k, v in report.timings.items()))
        if report.served_while_draining:
            print(f"    answered by a gateway between its SIGTERM and its exit: {report.served_while_draining}")
        for line in report.violations:
            print(f"    violation: {line}")
        if report.violations:
            for sample in report.failure_samples:
                print(f"    {sample}")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(
            {
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "load_average": load,
                "scenarios": [r.as_dict() for r in reports],
            },
            f,
            indent=2,
        )
    return 1 if any(r.violations for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
