#!/usr/bin/env python3
"""Backups and restore with pgBackRest: full and incremental backup time and size, how long a
WAL segment waits to be archived under TPC-B load, and the time of a point-in-time restore of
the whole cluster (orch.restore, from its check to a healthy cluster).

Needs the lab up and the cluster deployed (`make lab`). The database is pgbench's at --scale
(its size is printed), loaded on the leader as the application's user. Backups are taken as an
operator takes them (`salt <leader> pgbackrest.backup`), on the repository host, from a
standby, into each repository in turn (the lab has a posix one and object storage); each
incremental follows --seconds of TPC-B. The archive delay is, per WAL segment
filled during the load, the time from the leader moving past it to pg_stat_archiver naming it
archived (sampled every 0.2 s). The restore goes to a time just after the last incremental
backup, so it replays that backup's WAL. THE RESTORE REPLACES THE CLUSTER'S DATA with what it
held then (the old data directories are kept as *.before-restore).

    .venv/bin/python bench/backup.py [--scale 10] [--runs 3] [--seconds 10]

Prints a table and writes bench/results/backup.json and backup.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import PGBENCH, machine, now, progress, write_results  # noqa: E402
from lab.cluster import cluster, credentials, leader, salt  # noqa: E402
from lab.workload import wait_healthy  # noqa: E402


def pgbench(host: str, port: int, password: str, *args: str) -> None:
    app = cluster().app
    subprocess.run([PGBENCH, "-h", host, "-p", str(port), "-U", app["user"], *args, app["database"]],
                   capture_output=True, text=True, check=True,
                   env={**os.environ, "PGPASSWORD": password})


def connect(host: str, password: str):
    c = cluster()
    conn = psycopg2.connect(host=host, port=c.model["postgresql"]["port"], user=c.app["user"],
                            password=password, dbname=c.app["database"], connect_timeout=5)
    conn.autocommit = True
    return conn


def backup(member: str, kind: str, repo: int) -> dict:
    made = salt(member, "pgbackrest.backup", f"type={kind}", f"repo={repo}", timeout=3600,
                check=True)[member]
    progress(f"{kind} backup {made['label']} into repo{repo}: {made['seconds']} s, "
             f"{made['stored_bytes'] / 1e6:.1f} MB stored")
    return made


class ArchiveWatch(threading.Thread):
    """Per WAL segment: when the leader moved past it, and when it was archived."""

    def __init__(self, host: str, password: str):
        super().__init__(daemon=True)
        self.conn = connect(host, password)
        self.stop = threading.Event()
        self.passed: dict[str, float] = {}
        self.archived: dict[str, float] = {}

    def run(self) -> None:
        cur = self.conn.cursor()
        current = None
        while not self.stop.is_set():
            cur.execute("SELECT pg_walfile_name(pg_current_wal_lsn()), last_archived_wal "
                        "FROM pg_stat_archiver")
            now_segment, archived = cur.fetchone()
            at = time.monotonic()
            if current is not None and now_segment != current:
                self.passed.setdefault(current, at)
            current = now_segment
            if archived and archived not in self.archived:
                self.archived[archived] = at
            time.sleep(0.2)

    def delays(self) -> list[float]:
        out = []
        for segment, passed in self.passed.items():
            done = [t for s, t in self.archived.items() if s >= segment]
            if done:
                # Both are sampled every 0.2 s: a segment archived within the sample that saw
                # the leader move past it counts as 0.
                out.append(max(0.0, round(min(done) - passed, 2)))
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    c = cluster()
    password = credentials()["app"]
    wait_healthy()
    first = leader()
    host, port = c.members[first], c.model["postgresql"]["port"]
    progress(f"pgbench -i -s {args.scale} on the leader {first} ...")
    pgbench(host, port, password, "-i", "-q", "-s", str(args.scale))
    with connect(host, password) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_database_size(current_database())")
        db_bytes = cur.fetchone()[0]
    progress(f"database {db_bytes / 1e6:.0f} MB")

    repos = {n: r["type"] for n, r in enumerate(c.backup["repositories"], 1)}
    fulls: dict[int, list] = {n: [] for n in repos}
    incrs: dict[int, list] = {n: [] for n in repos}
    delays = []
    for run in range(args.runs):
        progress(f"run {run + 1}/{args.runs}: full backups ...")
        for n in repos:
            fulls[n].append(backup(first, "full", n))
        progress(f"TPC-B for {args.seconds} s, watching the archive ...")
        watch = ArchiveWatch(host, password)
        watch.start()
        pgbench(host, port, password, "-n", "-c", str(args.clients), "-j", "2",
                "-T", str(args.seconds))
        time.sleep(5)  # the last segment filled is archived
        watch.stop.set()
        watch.join()
        delays += watch.delays()
        for n in repos:
            incrs[n].append(backup(first, "incr", n))

    target = datetime.datetime.now(datetime.UTC).isoformat()
    time.sleep(1)
    progress(f"orch.restore to {target} ...")
    started = time.monotonic()
    out = subprocess.run([REPO / ".venv/bin/salt-run", "state.orchestrate", "orch.restore",
                          "pillar=" + json.dumps({"restore": {"target": target}}), "--out=json"],
                         cwd=REPO, capture_output=True, text=True, check=False, timeout=3600)
    restore_s = round(time.monotonic() - started, 1)
    if out.returncode != 0:
        print(out.stdout[-4000:], out.stderr[-2000:], file=sys.stderr)
        return 1
    ran = json.loads(out.stdout)["data"]
    steps = {s["__id__"]: round(s["duration"] / 1000, 1) for s in next(iter(ran.values())).values()}
    leader_s = round(steps.get("restore-leader", 0) + steps.get("restore-leader-restored", 0), 1)
    wait_healthy()

    def median(rows, key):
        return statistics.median(r[key] for r in rows)

    data = {"date": now(), "machine": machine(), "scale": args.scale, "database_bytes": db_bytes,
            "runs": args.runs, "tpcb_seconds": args.seconds, "clients": args.clients,
            "repositories": repos, "full": fulls, "incr": incrs, "archive_delays_s": delays,
            "restore_seconds": restore_s, "restore_steps_s": steps}
    table = [
        "| what | median | min | max |", "| --- | --- | --- | --- |",
        *(f"| {name} into repo{n} ({repos[n]}) | {median(rows[n], 'seconds')} s, "
          f"{median(rows[n], 'stored_bytes') / 1e6:.1f} MB stored | "
          f"{min(r['seconds'] for r in rows[n])} s | {max(r['seconds'] for r in rows[n])} s |"
          for name, rows in (("full backup", fulls),
                             (f"incremental after {args.seconds} s of TPC-B", incrs))
          for n in repos),
        (f"| WAL segment archived after the leader moved past it ({len(delays)} segments) | "
         f"{statistics.median(delays) if delays else '-'} s | {min(delays, default='-')} s | "
         f"{max(delays, default='-')} s |"),
        f"| orch.restore to a point, check to healthy cluster | {restore_s} s | | |",
        f"| of which the leader's restore and recovery (restore-leader, -restored) | "
        f"{leader_s} s | | |",
    ]
    text = write_results(
        "backup", data, f"Backups and restore, {data['date']}, {data['machine']}; database "
        f"{db_bytes / 1e6:.0f} MB (pgbench scale {args.scale}), {args.runs} runs, compress "
        f"{c.backup['compress_type']}, process-max {c.backup['process_max']}", table)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
