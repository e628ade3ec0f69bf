#!/usr/bin/env python3
"""Record real answers of Patroni's REST API and etcd's v3 gateway from the lab.

Run on the lab's machine with the cluster deployed (make lab):
    .venv/bin/python tests/recordings/record.py

Writes tests/recordings/<scenario>/<member>.json: {"METHOD /path": {"status", "body"}}, which
tests/unit/recorded_api.py serves back on loopback for the unit tests of _modules/patroni.py and
_modules/etcd_cluster.py. Scenarios: healthy, paused, lag, member_down, refusals.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
MEMBERS = {"postgres-srv1": "10.0.0.11", "postgres-srv2": "10.0.0.12", "postgres-srv3": "10.0.0.13"}
SCOPE = "pg-cluster-skynet"
PASSWORD = yaml.safe_load((REPO / "pillar/generated/credentials.yaml").read_text())["restapi"]
AUTH = "Basic " + base64.b64encode(f"patroni:{PASSWORD}".encode()).decode()
PREFIX = f"/service/{SCOPE}/"


def call(url, method="GET", body=None, auth=False):
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = AUTH
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return {"status": answer.status, "body": answer.read().decode()}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read().decode()}
    except urllib.error.URLError:
        return None


def lab(*cmd):
    subprocess.run([str(REPO / "bin/lab"), *cmd], check=True)


def psql(host, sql):
    return subprocess.run([str(REPO / "bin/lab"), "exec", host, "--", "runuser", "-u", "postgres",
                           "--", "psql", "-XAtc", sql], check=True, capture_output=True,
                          text=True).stdout.strip()


def b64(text):
    return base64.b64encode(text.encode()).decode()


def record(scenario, extra=None):
    folder = OUT / scenario
    folder.mkdir(parents=True, exist_ok=True)
    end = bytearray(PREFIX.encode())
    end[-1] += 1
    for name, address in MEMBERS.items():
        answers = {}
        for path in ("/cluster", "/patroni", "/history"):
            answers[f"GET {path}"] = call(f"http://{address}:8008{path}")
        etcd = f"http://{address}:2379"
        answers["GET /health@etcd"] = call(etcd + "/health")
        for path in ("/v3/cluster/member/list", "/v3/maintenance/status"):
            answers[f"POST {path}@etcd"] = call(etcd + path, "POST", {})
        answers["POST /v3/kv/range@etcd"] = call(
            etcd + "/v3/kv/range", "POST",
            {"key": b64(PREFIX), "range_end": base64.b64encode(bytes(end)).decode()})
        answers.update((extra or {}).get(name, {}))
        answers = {k: v for k, v in answers.items() if v is not None}
        (folder / f"{name}.json").write_text(json.dumps(answers, indent=1, sort_keys=True) + "\n")
    print(f"recorded {scenario}", file=sys.stderr)


def leader():
    cluster = json.loads(call("http://10.0.0.11:8008/cluster")["body"])
    return next(m["name"] for m in cluster["members"] if m["role"] == "leader")


def main():
    record("healthy")
    current = leader()
    replica = next(n for n in MEMBERS if n != current)
    url = f"http://{MEMBERS[current]}:8008"
    refusals = {
        "POST /switchover (candidate is the leader)":
            call(url + "/switchover", "POST", {"leader": current, "candidate": current}, auth=True),
        "POST /switchover (no credentials)":
            call(url + "/switchover", "POST", {"leader": current, "candidate": replica}),
        "POST /switchover (unknown candidate)":
            call(url + "/switchover", "POST", {"leader": current, "candidate": "postgres-srv9"},
                 auth=True),
        "POST /reinitialize (on the leader)":
            call(url + "/reinitialize", "POST", {"force": True}, auth=True),
        "POST /restart (no credentials)": call(url + "/restart", "POST", {}),
    }
    record("refusals", {current: refusals})

    call(url + "/config", "PATCH", {"pause": True}, auth=True)
    time.sleep(4)
    record("paused")
    call(url + "/config", "PATCH", {"pause": False}, auth=True)
    time.sleep(4)

    # Lag: freeze the WAL receiver of the asynchronous replica while the leader writes 20 MB.
    # (Pausing replay does not show: Patroni 4.1 reported 0 lag for a paused replica here.)
    cluster = json.loads(call(url + "/cluster")["body"])
    asynchronous = next(m["name"] for m in cluster["members"] if m["role"] == "replica")
    walreceiver = "postgres: .*walreceiver"
    lab("exec", asynchronous, "--", "pkill", "-STOP", "-f", walreceiver)
    try:
        psql(current, "create table if not exists lag_maker(x text); "
                      "insert into lag_maker select repeat('x', 1000) from generate_series(1, 20000)")
        time.sleep(5)
        record("lag")
    finally:
        lab("exec", asynchronous, "--", "pkill", "-CONT", "-f", walreceiver)
    psql(current, "drop table lag_maker")

    lab("stop", "postgres-srv3")
    time.sleep(3)
    record("member_down")
    lab("start", "postgres-srv3")


if __name__ == "__main__":
    main()
