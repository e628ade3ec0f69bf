#!/usr/bin/env python3
"""What the routing costs: pgbench directly to the leader, through PgBouncer, through HAProxy.

Needs the lab up and the cluster deployed (`make lab`). pgbench runs on this machine (an admin
source: the firewall and pg_hba let it reach the leader directly) with the same clients and
duration on every path:
- TPC-B-like (pgbench's built-in): leader:5432, leader's PgBouncer :6432, HAProxy 5000;
- select-only (-S): the same three, and HAProxy 5001 (the replicas);
- select-only with a new connection per transaction (-C), where a pooler should win.

    .venv/bin/python bench/routing.py [--clients 8] [--seconds 15] [--scale 5]

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
    machine,
    now,
    progress,
    write_results,
)
from lab.cluster import cluster, credentials, leader  # noqa: E402


def pgbench_init(host: str, port: int, password: str, scale: int) -> None:
    """pgbench's tables at ``scale`` (pgbench -i prints no figures to read)."""
    app = cluster().app
    subprocess.run([PGBENCH, "-i", "-q", "-s", str(scale), "-h", host, "-p", str(port), "-U",
                    app["user"], app["database"]], capture_output=True, text=True, check=True,
                   env={**os.environ, "PGPASSWORD": password})


def pgbench(host: str, port: int, password: str, *args: str) -> dict:
    app = cluster().app
    cmd = [PGBENCH, "-h", host, "-p", str(port), "-U", app["user"], *args, app["database"]]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         env={**os.environ, "PGPASSWORD": password}).stdout
    return {"tps": float(re.search(r"tps = ([\d.]+)", out).group(1)),
            "latency_ms": float(re.search(r"latency average = ([\d.]+) ms", out).group(1))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--scale", type=int, default=5)
    args = parser.parse_args()
    c = cluster()
    password = credentials()["app"]
    primary = c.members[leader()]
    paths = {"direct": (primary, c.model["postgresql"]["port"]),
             "pgbouncer": (primary, c.model["pgbouncer"]["port"]),
             "haproxy": (c.web_address, c.primary_port),
             "haproxy-replicas": (c.web_address, c.replica_port)}
    progress(f"pgbench -i -s {args.scale} on the leader {primary} ...")
    pgbench_init(primary, paths["direct"][1], password, args.scale)
    load = ["-n", "-c", str(args.clients), "-j", "2", "-T", str(args.seconds)]
    plan = [("tpcb", [], ["direct", "pgbouncer", "haproxy"]),
            ("select-only", ["-S"], ["direct", "pgbouncer", "haproxy", "haproxy-replicas"]),
            ("connect-per-transaction", ["-S", "-C"], ["direct", "pgbouncer", "haproxy"])]
    results = []
    for workload, flags, names in plan:
        direct = None
        for name in names:
            progress(f"{workload} via {name} ...")
            host, port = paths[name]
            result = pgbench(host, port, password, *load, *flags)
            direct = direct or result["tps"]
            results.append({"workload": workload, "path": name, "port": port, **result,
                            "ratio_to_direct": round(result["tps"] / direct, 2)})
    data = {"date": now(), "machine": machine(), "clients": args.clients,
            "seconds": args.seconds, "scale": args.scale, "runs": results}
    table = ["| workload | path | TPS | latency avg ms | TPS / direct |", "| --- | --- | --- | --- | --- |"]
    table += [f"| {r['workload']} | {r['path']} (:{r['port']}) | {r['tps']:.0f} | {r['latency_ms']:.2f} | "
              f"{r['ratio_to_direct']} |" for r in results]
    text = write_results("routing", data, f"Routing overhead, {data['date']}, {data['machine']}; "
                         f"pgbench -c {args.clients} -j 2 -T {args.seconds}, scale {args.scale}, "
                         "from the lab's host machine", table)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
