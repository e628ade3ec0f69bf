#!/usr/bin/env python3
"""Memory per host and per service, with the cluster idle and under pgbench load.

Needs the lab up and the cluster deployed (`make lab`). On every host the processes are grouped
by their systemd unit, and PostgreSQL's processes (children of patroni.service) are counted on
their own. The figure is PSS, the proportional set size: pages shared between processes (such
as PostgreSQL's shared buffers, which every backend maps) are split among them, so the numbers
add up without double counting. The host's total is the RSS of its whole cgroup, as
`bin/lab status` shows it.

Under load: pgbench TPC-B-like through HAProxy 5000 and select-only through 5001 at the same
time from this machine; each figure is the largest of several samples taken during the run.

    .venv/bin/python bench/memory.py [--clients 8] [--seconds 30]

Prints a table and writes bench/results/memory.json and memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import PGBENCH, machine, now, progress, write_results  # noqa: E402
from lab.cluster import cluster, credentials  # noqa: E402
from lab.workload import LAB  # noqa: E402

# Runs inside a host with its own python3: PSS in KiB per service, from /proc.
PROBE = r"""
import json, os, re
pss = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == os.getpid():  # this probe
        continue
    try:
        cgroup = open(f"/proc/{pid}/cgroup").read()
        comm = open(f"/proc/{pid}/comm").read().strip()
        rollup = open(f"/proc/{pid}/smaps_rollup").read()
    except OSError:
        continue
    unit = re.search(r"^0::/.*?([^/]+\.(?:service|scope))$", cgroup, re.M)
    unit = unit.group(1) if unit else "other"
    if comm == "postgres":
        unit = "postgresql (under patroni)" if unit == "patroni.service" else "postgresql"
    kib = re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)
    pss[unit] = pss.get(unit, 0) + (int(kib.group(1)) if kib else 0)
print(json.dumps(pss))
"""


def sample(host: str) -> dict[str, float]:
    out = subprocess.run([LAB, "exec", host, "--", "python3", "-c", PROBE], capture_output=True,
                         text=True, check=True).stdout
    return {unit: round(kib / 1024, 1) for unit, kib in json.loads(out).items()}


def host_totals() -> dict[str, float]:
    out = subprocess.run([LAB, "status", "--json"], capture_output=True, text=True, check=True).stdout
    return {h["name"]: h["memory_mib"] for h in json.loads(out)}


def snapshot(hosts: list[str]) -> dict:
    return {"services": {h: sample(h) for h in hosts}, "hosts": host_totals()}


def peak(snapshots: list[dict]) -> dict:
    """The largest figure of each service and host over several snapshots."""
    services: dict[str, dict[str, float]] = {}
    for snap in snapshots:
        for host, units in snap["services"].items():
            for unit, mib in units.items():
                services.setdefault(host, {})[unit] = max(mib, services.get(host, {}).get(unit, 0))
    hosts = {h: max(s["hosts"][h] or 0 for s in snapshots) for h in snapshots[0]["hosts"]}
    return {"services": services, "hosts": hosts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    c = cluster()
    hosts = list(c.hosts)
    env = {**os.environ, "PGPASSWORD": credentials()["app"]}
    user, db, web = c.app["user"], c.app["database"], c.web_address
    progress("idle: sampling every host ...")
    idle = peak([snapshot(hosts) for _ in range(3)])
    progress(f"pgbench -i -s 5 through HAProxy {c.primary_port} ...")
    subprocess.run([PGBENCH, "-i", "-q", "-s", "5", "-h", web, "-p", str(c.primary_port), "-U", user,
                    db], check=True, capture_output=True, env=env)
    progress(f"load: TPC-B through {c.primary_port} and select-only through {c.replica_port}, "
             f"{args.clients} clients each, {args.seconds} s ...")
    common = ["-U", user, "-n", "-c", str(args.clients), "-j", "2", "-T", str(args.seconds)]
    loads = [subprocess.Popen([PGBENCH, "-h", web, "-p", str(port), *common, *extra, db], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for port, extra in ((c.primary_port, []), (c.replica_port, ["-S"]))]
    snapshots = []
    time.sleep(min(5, args.seconds / 4))
    while all(p.poll() is None for p in loads):
        snapshots.append(snapshot(hosts))
        time.sleep(2)
    for p in loads:
        if p.wait() != 0:
            raise SystemExit("pgbench failed under load")
    loaded = peak(snapshots)
    progress(f"{len(snapshots)} samples under load")
    units = sorted({(h, u) for h in hosts for u in (idle["services"][h] | loaded["services"][h])
                    if max(idle["services"][h].get(u, 0), loaded["services"][h].get(u, 0)) >= 1})
    table = ["| host | service | idle MiB | under load MiB |", "| --- | --- | --- | --- |"]
    for host in hosts:
        table.append(f"| **{host}** | whole host (cgroup RSS) | {idle['hosts'][host]} | "
                     f"{loaded['hosts'][host]} |")
        table += [f"| {host} | {u} | {idle['services'][host].get(u, 0)} | "
                  f"{loaded['services'][host].get(u, 0)} |" for h, u in units if h == host]
    data = {"date": now(), "machine": machine(), "clients": args.clients, "seconds": args.seconds,
            "idle": idle, "load": loaded}
    text = write_results("memory", data, f"Memory per host and service (PSS, MiB), idle and under "
                         f"pgbench load ({args.clients} + {args.clients} clients), {data['date']}, "
                         f"{data['machine']}", table,
                         "Services under 1 MiB are left out; `other` is what runs outside a unit.")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
