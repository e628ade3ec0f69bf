#!/usr/bin/env python3
"""The web app's throughput and latency, next to the same SQL without the web stack.

Needs the lab up and the cluster deployed (`make lab`). From this machine:
- wrk GETs random messages by id (GET /api/messages/<id>) and adds messages
  (POST /api/messages) through nginx on 10.0.0.10;
- pgbench runs the app's own statements at the same concurrency through HAProxy: the SELECT by id
  through 5001 (replicas), the INSERT through 5000 (leader).
The ratio of the two shows what nginx + gunicorn + the app cost.

    .venv/bin/python bench/web.py [--connections 8,32] [--seconds 15]

Prints a table and writes bench/results/web.json and web.md. The load generators run on the
same 2 cores as the lab, so every figure is a floor.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import PGBENCH, machine, now, progress, write_results  # noqa: E402
from lab.cluster import cluster, credentials  # noqa: E402

WEB = cluster().url
SELECT = "SELECT id, text, created_at, host(inet_server_addr()) AS server FROM messages WHERE id = :id;"
INSERT = "INSERT INTO messages (text) VALUES ('bench') RETURNING id;"


def add_messages(count: int) -> list[int]:
    ids = []
    for i in range(count):
        request = urllib.request.Request(f"{WEB}/api/messages", method="POST",
                                         data=json.dumps({"text": f"bench seed {i}"}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            ids.append(json.load(answer)["id"])
    return ids


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(script: str, connections: int, seconds: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
                              "-s", lua.name, WEB], capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": _ms(latency["50"]), "p99_ms": _ms(latency["99"]),
            "errors": int(errors.group(1)) if errors else 0}


def pgbench(sql: str, port: int, password: str, connections: int, seconds: int, **variables) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "script.sql"
        script.write_text("".join(f"\\set {k} {v}\n" for k, v in variables.items()) + sql + "\n")
        app = cluster().app
        cmd = [PGBENCH, "-h", cluster().web_address, "-p", str(port), "-U", app["user"], "-n", "-f",
               str(script), "-c", str(connections), "-j", "2", "-T", str(seconds), "-l",
               "--log-prefix", f"{tmp}/log", app["database"]]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tmp,
                             env={**os.environ, "PGPASSWORD": password}).stdout
        # Per-transaction log lines: client, transaction, latency in microseconds, ...
        latencies = sorted(int(line.split()[2]) / 1000 for log in Path(tmp).glob("log.*")
                           for line in log.read_text().splitlines())
    quantiles = statistics.quantiles(latencies, n=100)
    return {"rps": float(re.search(r"tps = ([\d.]+)", out).group(1)),
            "p50_ms": round(quantiles[49], 2), "p99_ms": round(quantiles[98], 2), "errors": 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", default="8,32",
                        help="comma-separated: each concurrency is measured in turn")
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args()
    password = credentials()["app"]
    primary, replicas = cluster().primary_port, cluster().replica_port
    s = args.seconds
    ids = add_messages(200)
    get_lua = (f"ids = {{{', '.join(map(str, ids))}}}\n"
               "request = function() return wrk.format('GET', '/api/messages/' .. "
               "ids[math.random(#ids)]) end\n")
    post_lua = ("wrk.method = 'POST'\nwrk.path = '/api/messages'\n"
                "wrk.headers['Content-Type'] = 'application/json'\n"
                "wrk.body = '{\"text\": \"bench\"}'\n")
    names = {"get_web": "GET /api/messages/<id> through nginx",
             "get_sql": f"its SELECT through {replicas}",
             "post_web": "POST /api/messages through nginx", "post_sql": f"its INSERT through {primary}"}
    table = ["| what | connections | requests/s | p50 ms | p99 ms | errors | web / SQL |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    runs = {}
    for c in map(int, args.connections.split(",")):
        progress(f"GET by id through nginx, {c} connections, {s}s ...")
        run = {"get_web": wrk(get_lua, c, s)}
        progress(f"the same SELECT through HAProxy {replicas} ...")
        run["get_sql"] = pgbench(SELECT, replicas, password, c, s, id=f"random({min(ids)}, {max(ids)})")
        progress(f"POST through nginx, {c} connections, {s}s ...")
        run["post_web"] = wrk(post_lua, c, s)
        progress(f"the same INSERT through HAProxy {primary} ...")
        run["post_sql"] = pgbench(INSERT, primary, password, c, s)
        runs[c] = run
        for key, what in names.items():
            r = run[key]
            ratio = f"{r['rps'] / run[key.replace('web', 'sql')]['rps']:.2f}" if key.endswith("web") else ""
            table.append(f"| {what} | {c} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{r['errors']} | {ratio} |")
    data = {"date": now(), "machine": machine(), "seconds": s, "runs": runs}
    text = write_results("web", data, f"Web app throughput, {data['date']}, {data['machine']}; "
                         f"{s} s each, load generated on the same machine", table)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
