#!/usr/bin/env python3
"""Failover write outage: seconds without a successful write through HAProxy port 5000.

Needs the lab up and the cluster deployed (`make lab`). A writer on this machine inserts a row
every 100 ms through 10.0.0.10:5000 (reconnecting after errors); for each scenario the leader is
hurt, and the outage is the longest gap between two acknowledged writes around the fault.
Every acknowledged row is then looked for on the leader: `lost` must be 0.

    .venv/bin/python bench/failover.py [--runs 2] [--scenarios stop,kill9,crash,partition,switchover]

Prints a table and writes bench/results/failover.json and failover.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from lab.workload import FAULTS, Writer, ensure_table, rows_on, salt_web  # noqa: E402

RESULTS = REPO / "bench" / "results"


def wait_healthy(timeout=240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = salt_web("patroni.health")
        if isinstance(health, dict) and health.get("healthy"):
            listing = salt_web("patroni.list")
            if all(m["state"] in ("running", "streaming") for m in listing["members"]) and \
                    "Sync Standby" in [m["role"] for m in listing["members"]]:
                return
        time.sleep(2)
    raise SystemExit("the cluster did not become healthy again")


def run_once(name: str, password: str) -> dict:
    fault = FAULTS[name]
    tag = f"{name}-{time.time_ns()}"
    writer = Writer(password, tag)
    writer.start()
    time.sleep(3)
    targets = fault.targets()
    fault_at = time.monotonic()
    for host in targets:
        fault.inject(host)
    # Watch a fixed window: a dead leader's lock takes up to ttl (20 s) to expire, and writes
    # may carry on for a moment after the fault before they stop.
    time.sleep(max(0.0, fault_at + fault.observe - time.monotonic()))
    writer.stop.set()
    writer.join()
    for host in targets:
        fault.repair(host)
    # The longest gap between two acknowledged writes from just before the fault on.
    outage = writer.longest_gap(fault_at - 1)
    wait_healthy()
    listing = salt_web("patroni.list")
    new = next(m["name"] for m in listing["members"] if m["role"] == "Leader")
    lost = writer.acked - rows_on(new, tag)
    return {"scenario": name, "outage_s": round(outage, 2), "acked": len(writer.acked),
            "lost": len(lost), "hurt": targets, "new_leader": new}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--scenarios", default="stop,kill9,crash,partition,switchover",
                        help=f"any of {','.join(FAULTS)}")
    args = parser.parse_args()
    password = yaml.safe_load((REPO / "pillar/generated/credentials.yaml").read_text())["app"]
    ensure_table(password)
    wait_healthy()
    results = []
    for name in args.scenarios.split(","):
        for run in range(args.runs):
            print(f"bench: {name} run {run + 1}/{args.runs} ...", file=sys.stderr, flush=True)
            results.append(run_once(name, password))
            print(f"bench:   {results[-1]}", file=sys.stderr, flush=True)
    rows = []
    for name in args.scenarios.split(","):
        outages = [r["outage_s"] for r in results if r["scenario"] == name]
        rows.append({"scenario": name, "what": FAULTS[name].description, "runs": len(outages),
                     "median_s": round(statistics.median(outages), 2), "max_s": max(outages),
                     "acked": sum(r["acked"] for r in results if r["scenario"] == name),
                     "lost": sum(r["lost"] for r in results if r["scenario"] == name)})
    os_name = platform.freedesktop_os_release()["PRETTY_NAME"]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {os_name}"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "failover.json").write_text(json.dumps(
        {"date": when, "machine": machine, "summary": rows, "runs": results}, indent=2) + "\n")
    table = ["| scenario | runs | outage median s | outage max s | writes acked | lost |",
             "| --- | --- | --- | --- | --- | --- |"]
    table += [f"| {r['what']} | {r['runs']} | {r['median_s']} | {r['max_s']} | {r['acked']} | "
              f"{r['lost']} |" for r in rows]
    text = f"Failover write outage, {when}, {machine}\n\n" + "\n".join(table) + "\n"
    (RESULTS / "failover.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
