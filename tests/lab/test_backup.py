"""Backups with pgBackRest on the live cluster: WAL archived from the leader, backups taken on
the repository host from a standby, on schedule and on demand from any minion, and a member
rebuilt from the repository rather than from the leader."""

from __future__ import annotations

import json
import re
import time

import pytest

from lab.cluster import cluster, leader, on_web, roles, salt
from lab.workload import wait_healthy
from tests.conftest import VENV_BIN, run
from tests.lab.conftest import lab_exec

C = cluster()
BACKUP = C.backup
REPO_HOST = BACKUP["host"]
STANZA = BACKUP["stanza"]


@pytest.fixture
def healthy_cluster(lab):
    return wait_healthy()


def info() -> dict:
    return salt(REPO_HOST, "pgbackrest.info", check=True)[REPO_HOST]


def test_the_deployment_leaves_a_full_backup_and_an_archive_that_moves(healthy_cluster):
    first = info()
    assert first["stanza"] == STANZA and first["status"] == "ok"
    repo = first["repositories"]["1"]
    assert repo["status"] == "ok" and repo["cipher"] == "aes-256-cbc"
    fulls = [b for b in first["backups"] if b["type"] == "full"]
    assert fulls and all(b["wal_start"] and b["wal_stop"] for b in fulls)
    assert first["recoverable_from"] == min(b["stop"] for b in first["backups"])
    # check switches the leader to a new segment and waits for it in the repository.
    assert on_web("pgbackrest.check", check=True) == {"ok": True, "stanza": STANZA}
    after = info()["repositories"]["1"]
    assert after["wal_newest"] > repo["wal_newest"]
    assert after["wal_newest_age_seconds"] is not None and after["wal_newest_age_seconds"] < 30


def test_a_backup_asked_of_a_member_runs_on_the_repository_host_from_a_standby(healthy_cluster):
    asked = leader()
    before = {b["label"] for b in info()["backups"]}
    made = salt(asked, "pgbackrest.backup", "type=incr", timeout=600, check=True)[asked]
    assert made["host"] == REPO_HOST and made["type"] == "incr" and made["repo"] == 1
    assert made["label"] not in before
    assert made["label"] in {b["label"] for b in info()["backups"]}
    # Copied from a standby: pgBackRest waited for a standby to replay to the backup's start.
    log = lab_exec(REPO_HOST, "cat", f"{BACKUP['log_path']}/{STANZA}-backup.log").stdout
    run_log = log[log.rindex("backup command begin"):]
    assert "replay on the standby" in run_log, run_log[-3000:]


def test_the_schedule_has_a_timer_for_each_kind_of_backup(healthy_cluster):
    timers = lab_exec(REPO_HOST, "systemctl", "list-timers", "--all", "--output=json",
                      "pgbackrest-backup-*").stdout
    units = {t["unit"]: t for t in json.loads(timers)}
    kinds = [k for k, calendar in BACKUP["schedule"].items() if calendar]
    assert sorted(units) == sorted(f"pgbackrest-backup-repo1-{k}.timer" for k in kinds)
    assert all(t["next"] for t in units.values())
    # What a timer starts takes a backup.
    before = len(info()["backups"])
    lab_exec(REPO_HOST, "systemctl", "start", "pgbackrest-backup-repo1-incr.service", timeout=600)
    assert len(info()["backups"]) == before + 1


def test_no_secret_of_the_backups_is_shown_or_readable_by_others(healthy_cluster):
    shown = run(VENV_BIN / "salt", REPO_HOST, "pgcluster.pgbackrest_config").stdout
    assert "repo1-cipher-pass=**********" in shown
    for host in (REPO_HOST, C.model["bootstrap_member"]):
        modes = lab_exec(host, "stat", "-c", "%n %a %U", BACKUP["config_file"],
                         f"{BACKUP['tls_dir']}/host.key").stdout.split("\n")
        assert modes[0].split()[1:] == ["640", BACKUP["user"]]
        assert modes[1].split()[1:] == ["600", BACKUP["user"]]


def _patroni_log_since(member: str, since: str) -> str:
    return lab_exec(member, "journalctl", "-u", C.model["patroni"]["service"], "--since", since,
                    "--no-pager", "-o", "cat").stdout


def test_a_rebuilt_member_is_restored_from_the_repository_not_the_leader(healthy_cluster):
    replica = next(n for n, role in roles().items() if role == "Replica")
    since = lab_exec(replica, "date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    lab_exec(replica, "systemctl", "stop", C.model["patroni"]["service"])
    lab_exec(replica, "sh", "-c", f"rm -rf {C.model['postgresql']['data_dir']}")
    lab_exec(replica, "systemctl", "start", C.model["patroni"]["service"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        state = roles()
        if state.get(replica) in ("Replica", "Sync Standby"):
            health = on_web("patroni.health")
            if health and health.get("healthy"):
                break
        time.sleep(2)
    else:
        pytest.fail(f"{replica} did not come back streaming within 300 s")
    log = _patroni_log_since(replica, since)
    assert re.search(r"replica has been created using pgbackrest", log), log[-3000:]
    assert "basebackup" not in log.lower(), log[-3000:]


def _switch_wal_with_writes(member: str, times: int) -> None:
    for _ in range(times):
        lab_exec(member, "runuser", "-u", "postgres", "--", "psql", "-X", "-At", "-c",
                 "CREATE TABLE IF NOT EXISTS archive_probe (at timestamptz); "
                 "INSERT INTO archive_probe VALUES (now()); SELECT pg_switch_wal()")


def test_health_reports_an_archive_that_stops_and_its_recovery(healthy_cluster):
    assert on_web("patroni.health")["archive"]["ok"] is True
    host, service = REPO_HOST, BACKUP["service"]
    lab_exec(host, "systemctl", "stop", service)
    try:
        _switch_wal_with_writes(leader(), 3)
        report = on_web("patroni.health")
        assert report["healthy"] is True  # serving is not affected
        assert report["archive"]["ok"] is False, report["archive"]
        assert report["archive"]["repositories"]["1"]["segments_waiting"] >= 2
    finally:
        lab_exec(host, "systemctl", "start", service)
    deadline = time.monotonic() + 120
    while not on_web("patroni.health")["archive"]["ok"]:
        assert time.monotonic() < deadline, "the archive did not catch up within 120 s"
        time.sleep(2)
