#!/usr/bin/env python3
"""What the routing costs: pgbench on every data path to the cluster, interleaved.

Needs the lab up and the cluster deployed (`make lab`). pgbench runs on this machine (an admin
source: the firewall and pg_hba let it reach the members directly) with the same clients and
duration on every path, over TLS as every client of the cluster:
- direct: the leader's PostgreSQL (the baseline);
- pgbouncer: the leader's PgBouncer;
- haproxy: HAProxy's primary port on the web host, which leads to the leader's PgBouncer
  (haproxy-replicas: its replica port, to a replica's PgBouncer);
- libpq: no proxy: the members' PostgreSQL as one multi-host connection string, libpq
  picking the writer (target_session_attrs=read-write) or a standby (prefer-standby,
  libpq-standby), as the web app does with pgcluster:webapp:data_path libpq (not their
  PgBouncers, which report a stale in_hot_standby: pgcluster_render.webapp_config). The
  writer is listed first; libpq-writer-last lists it last, the cost of a new connection when
  the member the pillar lists last leads.
Workloads: TPC-B-like (pgbench's own), select-only (-S), and select-only with a new
connection per transaction (-C), where a pooler and the cost of finding the writer show.

Within a workload the paths run interleaved, their order turning round by round (A B C, C B A,
...; bench/common.interleaved), and each path's TPS is divided by the direct run's of the same
round: the table gives the median TPS of each path and the median, min and max of those
ratios, which the machine's drift moves far less than it moves the TPS.

    .venv/bin/python bench/routing.py [--rounds 40] [--clients 8] [--seconds 1] [--scale 5]

Forty rounds of 1 s rather than ten of 5 s: about the same time, four times the pairs. A
round's ratio scatters about as much at 1 s as at 5 s (6-9 % measured 2026-12-05, at 5 s
6-11 %: the machine's noise falls on whole runs, not evenly within one), so more pairs is what
narrows the median: two runs at ten rounds of 5 s agreed within 5 % on 11 of 13 ratios, two
at forty of 1 s, back to back, on all 14. What a proxy costs relative to direct also moves with
the machine's load itself, which interleaving cannot cancel (a third run 44 minutes later, on a
slower machine, moved three ratios by 6-7 %): compare runs made back to back. pgbench leaves
its clients' first connections out of the TPS of -T 1 too.

Prints a table and writes bench/results/routing.json and routing.md.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import (  # noqa: E402
    PGBENCH,
    interleaved,
    machine,
    now,
    progress,
    ratios,
    spread,
    write_results,
)
from lab.cluster import cluster, credentials, leader  # noqa: E402

BASELINE = "direct"


def paths() -> dict[str, dict]:
    """{name: pgbench's host, port and libpq environment} for each data path, from pillar."""
    c = cluster()
    primary = c.members[leader()]
    direct, bouncer = c.model["postgresql"]["port"], c.model["pgbouncer"]["port"]
    others = [address for address in c.members.values() if address != primary]
    # libpq tries the hosts in the order given, each a whole connection (TLS, password) until
    # one is the writer: the writer listed first and last, not in the pillar's order, so that
    # the figures do not depend on which member leads today.
    writer_first, writer_last = ",".join([primary, *others]), ",".join([*others, primary])
    return {
        "direct": {"host": primary, "port": direct},
        "pgbouncer": {"host": primary, "port": bouncer},
        "haproxy": {"host": c.web_address, "port": c.primary_port},
        "haproxy-replicas": {"host": c.web_address, "port": c.replica_port},
        "libpq": {"host": writer_first, "port": direct,
                  "env": {"PGTARGETSESSIONATTRS": "read-write"}},
        "libpq-writer-last": {"host": writer_last, "port": direct,
                              "env": {"PGTARGETSESSIONATTRS": "read-write"}},
        "libpq-standby": {"host": writer_first, "port": direct,
                          "env": {"PGTARGETSESSIONATTRS": "prefer-standby"}},
    }


# (workload, pgbench's flags, the paths it runs on): reads only may go to a standby.
PLAN = [
    ("tpcb", [], ["direct", "pgbouncer", "haproxy", "libpq"]),
    ("select-only", ["-S"], ["direct", "pgbouncer", "haproxy", "haproxy-replicas", "libpq",
                             "libpq-standby"]),
    ("connect-per-transaction", ["-S", "-C"], ["direct", "pgbouncer", "haproxy", "libpq",
                                               "libpq-writer-last"]),
]


def _env(path: dict, password: str) -> dict:
    return {**os.environ, "PGPASSWORD": password, **path.get("env", {})}


def pgbench_init(path: dict, password: str, scale: int) -> None:
    """pgbench's tables at ``scale`` (pgbench -i prints no figures to read)."""
    app = cluster().app
    subprocess.run([PGBENCH, "-i", "-q", "-s", str(scale), "-h", path["host"], "-p",
                    str(path["port"]), "-U", app["user"], app["database"]],
                   capture_output=True, text=True, check=True, env=_env(path, password))


def pgbench(path: dict, password: str, *args: str) -> dict:
    app = cluster().app
    cmd = [PGBENCH, "-h", path["host"], "-p", str(path["port"]), "-U", app["user"], *args,
           app["database"]]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         env=_env(path, password)).stdout
    return {"tps": float(re.search(r"tps = ([\d.]+)", out).group(1)),
            "latency_ms": float(re.search(r"latency average = ([\d.]+) ms", out).group(1))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=1)
    parser.add_argument("--scale", type=int, default=5)
    args = parser.parse_args()
    password = credentials()["app"]
    by_name = paths()
    progress(f"pgbench -i -s {args.scale} on the leader {by_name['direct']['host']} ...")
    pgbench_init(by_name["direct"], password, args.scale)
    load = ["-n", "-c", str(args.clients), "-j", "2", "-T", str(args.seconds)]
    table = ["| workload | path | TPS, median (min-max) | latency avg ms, median | "
             "TPS / direct, median of rounds (min-max) |", "| --- | --- | --- | --- | --- |"]
    workloads = {}
    for workload, flags, names in PLAN:
        latencies: dict[str, list[float]] = {name: [] for name in names}

        def run(name: str, flags=flags, latencies=latencies) -> float:
            result = pgbench(by_name[name], password, *load, *flags)
            latencies[name].append(result["latency_ms"])
            return result["tps"]

        tps = interleaved({name: (lambda name=name: run(name)) for name in names}, args.rounds,
                          on_round=lambda n, name, workload=workload: progress(
                              f"{workload}, round {n + 1}/{args.rounds}: {name} ..."))
        relative = ratios(tps, BASELINE)
        workloads[workload] = {
            name: {"port": by_name[name]["port"], "tps": tps[name], "latency_ms": latencies[name],
                   "tps_spread": spread(tps[name]), "ratio": relative.get(name)}
            for name in names}
        for name in names:
            t, r = spread(tps[name]), relative.get(name)
            cell = f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})" if r else "1"
            table.append(f"| {workload} | {name} (:{by_name[name]['port']}) | {t['median']:.0f} "
                         f"({t['min']:.0f}-{t['max']:.0f}) | "
                         f"{spread(latencies[name])['median']:.2f} | {cell} |")
    data = {"date": now(), "machine": machine(), "rounds": args.rounds, "clients": args.clients,
            "seconds": args.seconds, "scale": args.scale,
            "paths": {name: {k: v for k, v in p.items() if k != "env"} | p.get("env", {})
                      for name, p in by_name.items()},
            "workloads": workloads}
    text = write_results(
        "routing", data,
        f"Routing overhead, {data['date']}, {data['machine']}; pgbench -c {args.clients} -j 2 "
        f"-T {args.seconds}, scale {args.scale}, from the lab's host machine, over TLS; "
        f"{args.rounds} rounds, paths interleaved", table,
        "libpq: the members' PostgreSQL in one connection string, the writer listed first "
        "(libpq-writer-last: last, so that each new connection first logs in to both "
        "standbys); libpq tries them in order (Debian 12's libpq 15 has no "
        "load_balance_hosts), so libpq-standby's clients all reach the first standby listed.")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
