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
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import yaml

REPO = Path(__file__).resolve().parent.parent
LAB = REPO / "bin" / "lab"
SALT = REPO / ".venv" / "bin" / "salt"
RESULTS = REPO / "bench" / "results"
INTERVAL = 0.1


def salt_web(*args) -> object:
    out = subprocess.run([SALT, "web", *args, "--out=json", "--static", "-t", "60"], cwd=REPO,
                         capture_output=True, text=True, check=False)
    try:
        return json.loads(out.stdout or "{}").get("web")
    except json.JSONDecodeError:
        return None


def lab(*args) -> None:
    subprocess.run([LAB, *args], check=True, capture_output=True)


def leader() -> str:
    listing = salt_web("patroni.list")
    return next(m["name"] for m in listing["members"] if m["role"] == "Leader")


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


class Writer(threading.Thread):
    def __init__(self, password: str, tag: str):
        super().__init__(daemon=True)
        self.dsn = dict(host="10.0.0.10", port=5000, dbname="webapp", user="webapp",
                        password=password, connect_timeout=2)
        self.tag = tag
        self.acked: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self):
        conn, n = None, 0
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                if conn is None:
                    conn = psycopg2.connect(**self.dsn)
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("SET statement_timeout = '3s'")
                    cur.execute("INSERT INTO bench_writes (tag, n) VALUES (%s, %s)", (self.tag, n))
                self.acked.append((time.monotonic(), n))
                n += 1
            except psycopg2.Error:
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(max(0.0, INTERVAL - (time.monotonic() - started)))
        if conn is not None:
            conn.close()


# Seconds to watch the writer after each kind of fault.
OBSERVE = {"stop": 15, "kill9": 30, "crash": 45, "partition": 45, "switchover": 15}

SCENARIOS = {
    "stop": ("systemctl stop patroni on the leader",
             lambda h: lab("exec", h, "--", "systemctl", "stop", "patroni"),
             lambda h: lab("exec", h, "--", "systemctl", "start", "patroni")),
    "kill9": ("kill -9 of the leader's postmaster",
              lambda h: lab("exec", h, "--", "pkill", "-9", "-o", "-x", "postgres"),
              lambda h: None),
    "crash": ("power cut of the leader host", lambda h: lab("crash", h), lambda h: lab("start", h)),
    "partition": ("the leader cut off the network", lambda h: lab("partition", h),
                  lambda h: lab("heal", h)),
    "switchover": ("planned switchover (salt web patroni.switchover)",
                   lambda h: salt_web("patroni.switchover"), lambda h: None),
}


def run_once(name: str, password: str, admin) -> dict:
    tag = f"{name}-{time.time_ns()}"
    writer = Writer(password, tag)
    writer.start()
    time.sleep(3)
    old = leader()
    fault_at = time.monotonic()
    SCENARIOS[name][1](old)
    # Watch a fixed window: a dead leader's lock takes up to ttl (20 s) to expire, and writes
    # may carry on for a moment after the fault before they stop.
    time.sleep(max(0.0, fault_at + OBSERVE[name] - time.monotonic()))
    writer.stop.set()
    writer.join()
    SCENARIOS[name][2](old)
    # The longest gap between two acknowledged writes from just before the fault on: writes may
    # go on for a while after it (a clean stop takes seconds), then stop.
    times = [t for t, _ in writer.acked if t >= fault_at - 1]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    outage = max(gaps) if gaps else float("nan")
    wait_healthy()
    new = leader()
    found = set(admin(tag))
    lost = [n for _, n in writer.acked if n not in found]
    return {"scenario": name, "outage_s": round(outage, 2), "acked": len(writer.acked),
            "lost": len(lost), "old_leader": old, "new_leader": new}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    password = yaml.safe_load((REPO / "pillar/generated/credentials.yaml").read_text())["app"]
    dsn = dict(host="10.0.0.10", port=5000, dbname="webapp", user="webapp", password=password)

    def admin(tag: str) -> list[int]:
        with psycopg2.connect(**dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT n FROM bench_writes WHERE tag = %s", (tag,))
            return [r[0] for r in cur.fetchall()]

    with psycopg2.connect(**dsn) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS bench_writes (tag text, n int, at timestamptz "
                    "DEFAULT now())")
    wait_healthy()
    results = []
    for name in args.scenarios.split(","):
        for run in range(args.runs):
            print(f"bench: {name} run {run + 1}/{args.runs} ...", file=sys.stderr, flush=True)
            results.append(run_once(name, password, admin))
            print(f"bench:   {results[-1]}", file=sys.stderr, flush=True)
    rows = []
    for name in args.scenarios.split(","):
        outages = [r["outage_s"] for r in results if r["scenario"] == name]
        rows.append({"scenario": name, "what": SCENARIOS[name][0], "runs": len(outages),
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
