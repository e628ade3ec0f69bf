#!/usr/bin/env python3
"""Certificate rotation under write load: every host's certificate issued again by the CA,
next to a planned switchover, interleaved (rotation, switchover, rotation, ...).

Needs the lab up and the cluster deployed (`make lab`) with TLS on. A rotation is what an
operator runs: `bin/deploy --pillar '{"pgcluster": {"tls": {"issued_after": NOW}}}'`, the
whole orchestration, in which every host's certificate written before NOW is signed again and
each service takes its new one by a reload. The fault tests' writer inserts a row every 100 ms
through HAProxy's primary port throughout; the outage is the longest gap between two
acknowledged writes, and every acknowledged row is looked for on the leader afterwards (`lost`
must be 0). Each rotation also checks that every host's certificate changed and that no
PostgreSQL, PgBouncer, etcd or Patroni process restarted.

    .venv/bin/python bench/rotation.py [--pairs 3]

Prints a table and writes bench/results/rotation.json and rotation.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import machine, now, progress, write_results  # noqa: E402
from lab.cluster import cluster, credentials, leader  # noqa: E402
from lab.workload import FAULTS, Writer, ensure_table, lab, rows_on, wait_healthy  # noqa: E402

CALM = 5  # seconds of writes after the action that end a run's watch


def serials() -> dict[str, str]:
    """Each host's certificate serial (salt/tls's host.crt)."""
    path = f"{cluster().model['tls']['dir']}/host.crt"
    return {host: lab("exec", host, "--", "openssl", "x509", "-noout", "-serial", "-in",
                      path).stdout.strip() for host in cluster().hosts}


def service_pids() -> dict[str, str]:
    """{host/service: its main PID}: what a restart changes and a reload does not."""
    model = cluster().model
    services = [model["pgbouncer"]["service"], model["etcd"]["service"], model["patroni"]["service"]]
    pids = {}
    for host in cluster().members:
        for service in services:
            pids[f"{host}/{service}"] = lab("exec", host, "--", "systemctl", "show", "-p",
                                            "MainPID", "--value", service).stdout.strip()
        pids[f"{host}/postmaster"] = lab("exec", host, "--", "runuser", "-u", "postgres", "--",
                                         "psql", "-XAtc", "select pg_postmaster_start_time()"
                                         ).stdout.strip()
    return pids


def rotate() -> dict:
    """bin/deploy with tls:issued_after now; what changed."""
    before_serials, before_pids = serials(), service_pids()
    moment = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    pillar = json.dumps({"pgcluster": {"tls": {"issued_after": moment}}})
    started = time.monotonic()
    done = subprocess.run([REPO / "bin" / "deploy", "--pillar", pillar], capture_output=True,
                          text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the rotation's deployment failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    after_serials, after_pids = serials(), service_pids()
    return {"deploy_s": round(time.monotonic() - started, 1),
            "not_renewed": sorted(h for h in before_serials if before_serials[h] == after_serials[h]),
            "restarted": sorted(k for k in before_pids if before_pids[k] != after_pids[k])}


def run_once(action: str, password: str) -> dict:
    tag = f"rotation-{action}-{time.time_ns()}"
    writer = Writer(password, tag)
    writer.start()
    time.sleep(3)
    started = time.monotonic()
    extra = {}
    if action == "rotation":
        extra = rotate()
    else:
        FAULTS["switchover"].inject(leader())
    # Writes must flow CALM seconds after the action (a switchover's outage comes after it).
    deadline = time.monotonic() + FAULTS["switchover"].observe
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if time.monotonic() - writer.ok[-1][0] < 0.5 and \
                time.monotonic() - max(started, writer.resumed_after(started - 1) or started) >= CALM:
            break
    writer.stop.set()
    writer.join()
    outage = writer.longest_gap(started - 1)
    wait_healthy(300, sync_standby=True)
    lost = writer.acked - rows_on(leader(), tag)
    return {"action": action, "outage_s": round(outage, 2), "acked": len(writer.acked),
            "lost": len(lost), "action_s": round(time.monotonic() - started, 1), **extra}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    password = credentials()["app"]
    ensure_table(password)
    wait_healthy(300, sync_standby=True)
    runs = []
    for pair in range(args.pairs):
        for action in ("rotation", "switchover"):
            progress(f"pair {pair + 1}/{args.pairs}: {action} ...")
            runs.append(run_once(action, password))
            progress(f"  {runs[-1]}")
    by = {a: [r for r in runs if r["action"] == a] for a in ("rotation", "switchover")}
    ratios = [r["outage_s"] / s["outage_s"] for r, s in zip(by["rotation"], by["switchover"], strict=True)
              if s["outage_s"] > 0]
    summary = {a: {"median_s": round(statistics.median(r["outage_s"] for r in rs), 2),
                   "min_s": min(r["outage_s"] for r in rs), "max_s": max(r["outage_s"] for r in rs),
                   "acked": sum(r["acked"] for r in rs), "lost": sum(r["lost"] for r in rs)}
               for a, rs in by.items()}
    summary["ratio"] = {"median": round(statistics.median(ratios), 2), "min": round(min(ratios), 2),
                        "max": round(max(ratios), 2)} if ratios else None
    data = {"date": now(), "machine": machine(), "pairs": args.pairs, "summary": summary, "runs": runs}
    table = ["| action | write outage, median (min-max) s | acked | lost |", "| --- | --- | --- | --- |"]
    for action in ("rotation", "switchover"):
        s = summary[action]
        table.append(f"| {action} | {s['median_s']} ({s['min_s']}-{s['max_s']}) | {s['acked']} | "
                     f"{s['lost']} |")
    if ratios:
        r = summary["ratio"]
        table += ["", f"Rotation / switchover outage, pair by pair: median {r['median']} "
                      f"(min {r['min']}, max {r['max']})."]
    rotations = by["rotation"]
    deploy_s = statistics.median(r["deploy_s"] for r in rotations)
    notes = (f"Rotation: bin/deploy with pgcluster:tls:issued_after, {deploy_s} s median; hosts "
             f"whose certificate was not issued again: "
             f"{sorted({h for r in rotations for h in r['not_renewed']}) or 'none'}; processes restarted: "
             f"{sorted({k for r in rotations for k in r['restarted']}) or 'none'}.")
    title = (f"Certificate rotation under write load (writer every 100 ms through HAProxy's primary "
             f"port), interleaved with switchovers, {args.pairs} pairs, {data['date']}, {data['machine']}")
    text = write_results("rotation", data, title, table, notes)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
