"""Every way a leader (or its consensus) can fail, under load: a writer through HAProxy's primary
port records every write the database acknowledged, a reader reads through the replica port. After each fault
and its repair, every acknowledged write is on every member, the old leader is back as a
replica, and the web app takes a message. The crash and the partition run twice in every run
(every stop's CI run adds two more; bench/failover.py repeats them): a rare failure is still a
failure. Outages and counts go to tests/output/faults.{json,md}."""

from __future__ import annotations

import json
import platform
import time
from datetime import UTC, datetime

import pytest

from lab.cluster import cluster, credentials, roles
from lab.workload import FAULTS, Reader, Writer, ensure_table, in_recovery, rows_on, run_under, wait_healthy
from tests.conftest import REPO
from tests.lab.test_webapp import request

RUNS = {"stop": 1, "kill9": 1, "crash": 2, "partition": 2, "etcd-one": 1, "etcd-quorum": 1,
        "switchover": 1, "replica-crash": 1, "replica-crash-sync": 1}
CASES = [(name, run) for name, runs in RUNS.items() for run in range(1, runs + 1)]
OUTPUT = REPO / "tests" / "output"
MEMBERS = cluster().members


@pytest.fixture(scope="module")
def report(lab):
    rows: list[dict] = []
    yield rows
    OUTPUT.mkdir(exist_ok=True)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {platform.freedesktop_os_release()['PRETTY_NAME']}"
    (OUTPUT / "faults.json").write_text(json.dumps({"date": when, "machine": machine, "runs": rows},
                                                   indent=2) + "\n")
    lines = [f"Fault tests, {when}, {machine}", "",
             "| scenario | run | hurt | write outage, s | writes acked | found on every member | "
             "reads ok / failed |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['what']} | {r['run']} | {', '.join(r['hurt'])} | {r['outage_s']} | {r['acked']} "
              f"| {r['found']} | {r['reads_ok']} / {r['reads_failed']} |" for r in rows]
    (OUTPUT / "faults.md").write_text("\n".join(lines) + "\n")


def all_rows_everywhere(tag: str, acked: set[int], timeout: float = 90) -> dict[str, int]:
    """Wait until every member has every acknowledged row; {member: how many it lacks}."""
    deadline = time.monotonic() + timeout
    while True:
        missing = {host: len(acked - rows_on(host, tag)) for host in MEMBERS}
        if not any(missing.values()) or time.monotonic() > deadline:
            return missing
        time.sleep(2)


@pytest.mark.disruptive
@pytest.mark.parametrize(("scenario", "run"), CASES, ids=[f"{n}-{r}" for n, r in CASES])
def test_no_acknowledged_write_is_lost(lab, report, scenario, run):
    fault = FAULTS[scenario]
    if fault.dynamic_config is None:
        wait_healthy(240, sync_standby=True)
        check_scenario(fault, scenario, run, report)
        return
    run_under(fault.dynamic_config)
    try:
        check_scenario(fault, scenario, run, report)
    finally:
        run_under(None)


def check_scenario(fault, scenario, run, report):
    password = credentials()["app"]
    ensure_table(password)
    tag = f"{scenario}-{run}-{time.time_ns()}"
    writer, reader = Writer(password, tag), Reader(password)
    writer.start()
    reader.start()
    time.sleep(3)
    before = roles()
    old_leader = next(h for h, r in before.items() if r == "Leader")
    targets = fault.targets()
    fault_at = time.monotonic()
    for host in targets:
        fault.inject(host)
    read_only_after = None
    if scenario == "partition":
        # No split brain: the cut-off old leader must stop taking writes once its lock is gone
        # (ttl), while a new leader is being elected on the other side. It stops when it shuts
        # down to rejoin as a replica (refusing connections while its archiver tries, briefly,
        # to archive the WAL it holds), and answers read-only once it is up again.
        while time.monotonic() < fault_at + cluster().ttl + 10:
            if in_recovery(old_leader) is not False:
                read_only_after = round(time.monotonic() - fault_at, 1)
                break
            time.sleep(0.5)
        assert read_only_after is not None, "the partitioned old leader still takes writes"
    time.sleep(max(0.0, fault_at + fault.observe - time.monotonic()))
    for host in targets:
        fault.repair(host)
    repaired_at = time.monotonic()
    time.sleep(2)
    writer.stop.set()
    reader.stop.set()
    writer.join()
    reader.join()

    wait_healthy(240, sync_standby=True)
    after = roles()
    missing = all_rows_everywhere(tag, writer.acked)
    status, _, body = request("POST", "/api/messages", {"text": f"after {scenario} {run}"})
    report.append({
        "scenario": scenario, "what": fault.description, "run": run, "hurt": targets,
        "old_leader": old_leader, "new_leader": next(h for h, r in after.items() if r == "Leader"),
        "outage_s": round(writer.longest_gap(fault_at - 1), 2), "acked": len(writer.acked),
        "found": "yes" if not any(missing.values()) else f"missing {missing}",
        "reads_ok": len(reader.ok), "reads_failed": reader.failed,
        "old_leader_read_only_after_s": read_only_after,
    })
    assert writer.acked, "the writer never got a write through"
    assert not any(missing.values()), f"acknowledged writes missing: {missing}"
    # Everyone is back: the old leader (and anything hurt) as a member of the cluster.
    assert sorted(after) == sorted(MEMBERS) and list(after.values()).count("Leader") == 1
    assert status == 201, body
    # Reads through the replica port went on after the repair.
    assert reader.ok and reader.ok[-1][0] > repaired_at
