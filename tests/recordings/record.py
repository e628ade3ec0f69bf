#!/usr/bin/env python3
"""Record real answers of Patroni's REST API and etcd's v3 gateway from the lab.

Run on the lab's machine with the cluster deployed (make lab):
    .venv/bin/python tests/recordings/record.py

Writes tests/recordings/<scenario>/<member>.json: {"METHOD /path": {"status", "body"}}, which
tests/unit/recorded_api.py serves back on loopback for the unit tests of _modules/patroni.py and
_modules/etcd_cluster.py. Scenarios: healthy, paused, lag, member_down, refusals, switchover
(the cluster before a switchover, and the leader's answers to one), switched_over (after it:
a timeline history). Answers with a label in parentheses ("POST /switchover (asynchronous
candidate)") are alternatives a unit test serves in place of the unlabelled one.
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

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from lab.cluster import cluster, credentials, leader  # noqa: E402

OUT = Path(__file__).resolve().parent
C = cluster()
MEMBERS = C.members
SCOPE = C.name
PASSWORD = credentials()["restapi"]
AUTH = "Basic " + base64.b64encode(f"patroni:{PASSWORD}".encode()).decode()
PREFIX = f"/service/{SCOPE}/"


def call(url, method="GET", body=None, auth=False, timeout=5):
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = AUTH
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with C.open_patroni(request, timeout=timeout) as answer:
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
    """The GETs of every member, then `extra` ({member: {label: answer}}, or a function giving
    it, called after the GETs: the actions it takes do not show in what was recorded)."""
    folder = OUT / scenario
    folder.mkdir(parents=True, exist_ok=True)
    end = bytearray(PREFIX.encode())
    end[-1] += 1
    recorded = {}
    for name in MEMBERS:
        answers = {}
        for path in ("/cluster", "/patroni", "/primary", "/history", "/config"):
            answers[f"GET {path}"] = call(C.patroni_url(name, path))
        etcd = C.etcd_url(name)
        answers["GET /health@etcd"] = call(etcd + "/health")
        for path in ("/v3/cluster/member/list", "/v3/maintenance/status"):
            answers[f"POST {path}@etcd"] = call(etcd + path, "POST", {})
        answers["POST /v3/kv/range@etcd"] = call(
            etcd + "/v3/kv/range", "POST",
            {"key": b64(PREFIX), "range_end": base64.b64encode(bytes(end)).decode()})
        recorded[name] = answers
    if callable(extra):
        extra = extra()
    for name, answers in recorded.items():
        answers.update((extra or {}).get(name, {}))
        kept = {k: v for k, v in answers.items() if v is not None}
        (folder / f"{name}.json").write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")
    print(f"recorded {scenario}", file=sys.stderr)


def wait_healthy(timeout=180):
    """Until every member runs or streams on one timeline and a synchronous standby is named."""
    deadline = time.monotonic() + timeout
    while True:
        answer = call(C.patroni_url(next(iter(MEMBERS)), "/cluster"))
        members = json.loads(answer["body"])["members"] if answer and answer["status"] == 200 else []
        if len(members) == len(MEMBERS) and \
                all(m["state"] in ("running", "streaming") for m in members) and \
                len({m.get("timeline") for m in members}) == 1 and \
                any(m["role"] == "sync_standby" for m in members):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cluster did not become healthy: {members}")
        time.sleep(2)


def main():
    record("healthy")
    current = leader()
    replica = next(n for n in MEMBERS if n != current)
    url = C.patroni_url(current)
    replica_url = C.patroni_url(replica)

    def refusals():
        return {
            current: {
                "POST /switchover (candidate is the leader)":
                    call(url + "/switchover", "POST", {"leader": current, "candidate": current},
                         auth=True),
                "POST /switchover (no credentials)":
                    call(url + "/switchover", "POST", {"leader": current, "candidate": replica}),
                "POST /switchover (unknown candidate)":
                    call(url + "/switchover", "POST",
                         {"leader": current, "candidate": "postgres-srv9"}, auth=True),
                "POST /reinitialize (on the leader)":
                    call(url + "/reinitialize", "POST", {"force": True}, auth=True),
                "POST /restart (no credentials)": call(url + "/restart", "POST", {}),
            },
            replica: {
                # restart_pending where nothing is pending: Patroni's 503, no restart.
                "POST /restart (nothing pending)":
                    call(replica_url + "/restart", "POST", {"restart_pending": True}, auth=True),
                "POST /restart (restarted)":
                    call(replica_url + "/restart", "POST", {}, auth=True, timeout=60),
            },
        }

    record("refusals", refusals)
    wait_healthy()

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

    # A switchover (it moves the leader: last). Before it, what the leader answers a switchover
    # to the asynchronous replica (refused: synchronous_mode) and one without a candidate
    # (Patroni takes the synchronous standby); after it, a timeline history.
    wait_healthy()
    current = leader()
    url = C.patroni_url(current)
    cluster = json.loads(call(url + "/cluster")["body"])
    asynchronous = next(m["name"] for m in cluster["members"] if m["role"] == "replica")

    def switch_over():
        return {current: {
            "POST /switchover (asynchronous candidate)":
                call(url + "/switchover", "POST", {"leader": current, "candidate": asynchronous},
                     auth=True),
            "POST /switchover (to the synchronous standby)":
                call(url + "/switchover", "POST", {"leader": current}, auth=True, timeout=30),
        }}

    record("switchover", switch_over)
    wait_healthy()
    record("switched_over")


if __name__ == "__main__":
    main()
