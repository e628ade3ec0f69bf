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
    app_password,
    cluster_pillar,
    machine,
    now,
    progress,
    write_results,
)
from lab.workload import WEB, leader  # noqa: E402


def pgbench(host: str, port: int, password: str, *args: str) -> dict:
    cmd = [PGBENCH, "-h", host, "-p", str(port), "-U", "webapp", *args, "webapp"]
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
    password = app_password()
    members = cluster_pillar()["members"]
    primary = members[leader()]["address"]
    paths = {"direct": (primary, 5432), "pgbouncer": (primary, 6432), "haproxy": (WEB, 5000),
             "haproxy-replicas": (WEB, 5001)}
    progress(f"pgbench -i -s {args.scale} on the leader {primary} ...")
    subprocess.run([PGBENCH, "-i", "-q", "-s", str(args.scale), "-h", primary, "-U", "webapp", "webapp"],
                   check=True, capture_output=True, env={**os.environ, "PGPASSWORD": password})
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
