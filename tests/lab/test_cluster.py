"""The cluster the states and the orchestration make from bare hosts (`make lab`)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, VENV_BIN, run, salt_json
from tests.lab.conftest import DEPLOY, lab_exec

MEMBERS = {"postgres-srv1": "10.0.0.11", "postgres-srv2": "10.0.0.12", "postgres-srv3": "10.0.0.13"}
CREDENTIALS = REPO / "pillar" / "generated" / "credentials.yaml"


def credentials() -> dict:
    return yaml.safe_load(CREDENTIALS.read_text())


def patronictl_list(host: str) -> list[dict]:
    out = lab_exec(host, "patronictl", "-c", "/etc/patroni/config.yml", "list", "-f", "json").stdout
    return json.loads(out)


def psql_via_web(port: int, sql: str) -> str:
    password = credentials()["app"]
    return lab_exec("web", "env", f"PGPASSWORD={password}", "psql", "-h", "127.0.0.1", "-p",
                    str(port), "-U", "webapp", "-d", "webapp", "-XAtc", sql).stdout.strip()


def changes(result: dict) -> dict:
    """{minion: [state ids that changed something]} from `salt --out=json state.apply`."""
    found = {}
    for minion, states in result.items():
        assert isinstance(states, dict), f"{minion}: {states}"
        failed = [k for k, v in states.items() if v["result"] is False]
        assert not failed, f"{minion}: failed states {failed}"
        found[minion] = [k.split("_|-")[1] for k, v in states.items() if v["changes"]]
    return found


def test_deploy_printed_the_cluster_and_the_web_address(lab):
    out = DEPLOY["output"]
    assert "pg-cluster-skynet" in out and "Leader" in out
    assert "web: http://10.0.0.10/" in out


@pytest.mark.parametrize("host", sorted(MEMBERS))
def test_patronictl_list_on_every_member_shows_one_leader_and_two_streaming_replicas(lab, host):
    # Patroni names the synchronous standby a loop or two after the replicas stream.
    deadline = time.monotonic() + 60
    while True:
        members = patronictl_list(host)
        settled = sorted(m["Role"] for m in members) == ["Leader", "Replica", "Sync Standby"] and \
            all(m["State"] in ("running", "streaming") for m in members)
        if settled or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {m["Member"] for m in members} == set(MEMBERS)
    roles = sorted(m["Role"] for m in members)
    assert roles.count("Leader") == 1
    replicas = [m for m in members if m["Role"] != "Leader"]
    assert {m["Role"] for m in replicas} <= {"Sync Standby", "Replica"}
    # synchronous_mode is on by default: one replica is the synchronous standby.
    assert "Sync Standby" in roles
    assert all(m["State"] == "streaming" for m in replicas)
    assert len({m["TL"] for m in members}) == 1
    for m in members:
        assert m["Host"] == MEMBERS[m["Member"]]


def test_etcd_reports_three_healthy_endpoints(lab):
    health = lab_exec("postgres-srv1", "etcdctl", "endpoint", "health", "--cluster")
    out = health.stdout + health.stderr  # etcdctl prints the health report on stderr
    healthy = re.findall(r"http://(10\.0\.0\.\d+):2379 is healthy", out)
    assert sorted(healthy) == sorted(MEMBERS.values())
    members = lab_exec("postgres-srv2", "etcdctl", "member", "list").stdout
    assert sorted(re.findall(r"started, (postgres-srv\d)", members)) == sorted(MEMBERS)


def _etcd_leader() -> dict:
    rows = salt_json("web", "etcd_cluster.status")["web"]
    return next(r for r in rows if r.get("is_leader"))


def test_etcd_leadership_is_handed_away_from_the_postgresql_primary(lab):
    """A primary that dies with etcd's leadership costs 2-3 s more of writes (a new etcd leader
    renews every lease): etcd-leader-off-primary on each member moves it away."""
    primary = next(m["Member"] for m in patronictl_list("postgres-srv1") if m["Role"] == "Leader")
    primary_url = f"http://{MEMBERS[primary]}:2379"
    ids = {m["client_urls"][0]: m["id"] for m in salt_json("web", "etcd_cluster.members")["web"]}
    current = _etcd_leader()["endpoint"]
    if current != primary_url:  # put it on the primary's host, as after an election
        lab_exec(primary, "etcdctl", f"--endpoints={current}", "move-leader", ids[primary_url])
    deadline = time.monotonic() + 30
    while (leader := _etcd_leader()["endpoint"]) == primary_url:
        assert time.monotonic() < deadline, f"etcd's leader stayed on {primary}, the primary"
        time.sleep(1)
    assert leader in ids
    log = lab_exec(primary, "journalctl", "-u", "etcd-leader-off-primary", "-o", "cat").stdout
    assert f"moved etcd's leadership from {primary} to" in log


def test_port_5000_reaches_the_leader_and_5001_a_replica(lab):
    assert psql_via_web(5000, "select pg_is_in_recovery()") == "f"
    leader = next(m["Member"] for m in patronictl_list("postgres-srv1") if m["Role"] == "Leader")
    assert psql_via_web(5000, "select host(inet_server_addr())") == MEMBERS[leader]
    answers = {psql_via_web(5001, "select pg_is_in_recovery()::text || ' ' || host(inet_server_addr())")
               for _ in range(4)}
    assert {a.split()[0] for a in answers} == {"true"}
    # Round robin over both replicas.
    assert {a.split()[1] for a in answers} == set(MEMBERS.values()) - {MEMBERS[leader]}


def test_writes_through_5000_are_read_back_through_5001(lab):
    psql_via_web(5000, "create table if not exists deploy_check (id serial primary key, note text)")
    psql_via_web(5000, "insert into deploy_check (note) values ('written through HAProxy')")
    # Synchronous replication: the standby has it at once; the async one very soon.
    assert "written through HAProxy" in psql_via_web(5000, "select note from deploy_check")
    for host in MEMBERS:
        # As the postgres OS user over the local socket (peer authentication).
        out = lab_exec(host, "runuser", "-u", "postgres", "--", "psql", "-d", "webapp", "-XAtc",
                       "select count(*) from deploy_check")
        assert int(out.stdout.strip()) >= 1


def test_patroni_is_41_from_pypi_in_its_own_venv_and_owns_postgresql(lab):
    for host in MEMBERS:
        assert re.match(r"patroni 4\.1\.\d+", lab_exec(host, "patroni", "--version").stdout)
        assert lab_exec(host, "readlink", "/usr/local/bin/patronictl").stdout.strip() == \
            "/opt/patroni/bin/patronictl"
        # No Debian cluster: /etc/postgresql has none, Debian's umbrella unit is off.
        assert lab_exec(host, "ls", "/etc/postgresql/15", check=False).stdout.strip() == ""
        assert lab_exec(host, "systemctl", "is-enabled", "postgresql", check=False).stdout.strip() \
            == "disabled"
        assert lab_exec(host, "systemctl", "is-enabled", "patroni").stdout.strip() == "enabled"


def test_packages_were_installed_by_the_states_from_the_lab_repository(lab):
    policy = lab_exec("postgres-srv1", "apt-cache", "policy", "postgresql-15").stdout
    installed = re.search(r"Installed: (\S+)", policy).group(1)
    assert installed != "(none)"
    assert re.search(rf"\*\*\* {re.escape(installed)} \d+\n\s+\d+ file:/srv/pglab/apt", policy)
    # The image the hosts boot from has none of it: a fresh VM path.
    images = list(Path("/var/cache/pglab").glob("image-*"))
    assert images and not any((i / "usr/lib/postgresql").exists() for i in images)
    for pkg in ("etcd-server", "pgbouncer"):
        assert "Installed: (none)" not in lab_exec("postgres-srv2", "apt-cache", "policy", pkg).stdout
    assert "Installed: (none)" not in lab_exec("web", "apt-cache", "policy", "haproxy").stdout


def test_secret_files_are_private_and_out_of_git(lab):
    mode = lab_exec("postgres-srv1", "stat", "-c", "%a %U", "/etc/patroni/config.yml").stdout.split()
    assert mode == ["600", "postgres"]
    mode = lab_exec("postgres-srv1", "stat", "-c", "%a %U", "/etc/pgbouncer/userlist.txt").stdout.split()
    assert mode == ["640", "postgres"]
    assert oct(CREDENTIALS.stat().st_mode & 0o777) == "0o600"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(CREDENTIALS)], cwd=REPO, check=False)
    assert ignored.returncode == 0
    tracked = run("git", "ls-files").stdout
    for secret in credentials().values():
        assert secret not in tracked


def test_a_second_apply_and_test_mode_change_nothing_and_show_no_secret(lab):
    result = run(VENV_BIN / "salt", "*", "state.apply", "--out=json", "--static", "-t", "600")
    assert changes(json.loads(result.stdout)) == {m: [] for m in [*MEMBERS, "web"]}
    for secret in credentials().values():
        assert secret not in result.stdout
    dry = salt_json("*", "state.apply", "test=True", "-t", "600")
    assert changes(dry) == {m: [] for m in [*MEMBERS, "web"]}
    assert all(v["result"] is True for states in dry.values() for v in states.values())


def test_a_second_orchestration_changes_nothing(lab):
    out = run(VENV_BIN / "salt-run", "state.orchestrate", "orch.cluster", "--out=json", timeout=900)
    data = json.loads(out.stdout)["data"]
    steps = next(iter(data.values()))
    assert all(step["result"] for step in steps.values())
    changed = {k.split("_|-")[1]: step["changes"] for k, step in steps.items() if step["changes"]}
    # salt.state steps carry the minions' returns: count what the minions changed.
    minion_changes = {
        step_id: {m: [s for s, v in ret.items() if v["changes"]]
                  for m, ret in step.get("ret", {}).items()}
        for step_id, step in changed.items()
    }
    assert all(not states for step in minion_changes.values() for states in step.values()), minion_changes


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('{"pgcluster": {"patroni": {"ttl": 10}}}', "pgcluster:patroni:ttl is 10"),
        ('{"pgcluster": {"members": {"postgres-srv4": {"address": "10.0.0.14"}}}}',
         "pgcluster:members has 4 members"),
    ],
)
def test_bad_pillar_fails_the_render_naming_the_key(lab, override, message):
    out = run(VENV_BIN / "salt", "postgres-srv1", "state.show_sls", "etcd", f"pillar={override}",
              "--out=json", "--static", check=False)
    errors = json.loads(out.stdout)["postgres-srv1"]
    # A list of render errors instead of the rendered states.
    assert isinstance(errors, list)
    assert any("Rendering SLS 'base:etcd' failed" in e and message in e for e in errors), errors
    # Nothing was changed on the way: the cluster is still there.
    assert any(m["Role"] == "Leader" for m in patronictl_list("postgres-srv1"))


def show_setting(host: str, name: str) -> str:
    return lab_exec(host, "runuser", "-u", "postgres", "--", "psql", "-XAtc", f"show {name}").stdout.strip()


def test_a_parameter_changed_in_pillar_reaches_the_running_cluster(lab):
    override = '{"pgcluster": {"postgresql": {"parameters": {"wal_keep_size": "512MB"}}}}'
    try:
        result = salt_json("postgres-srv1", "state.apply", "patroni", f"pillar={override}",
                           "-t", "300")
        assert "patroni-dcs-config" in changes(result)["postgres-srv1"]
        # Patroni reloads PostgreSQL on every member: no file edited behind its back.
        deadline = time.monotonic() + 30
        while any(show_setting(h, "wal_keep_size") != "512MB" for h in MEMBERS):
            assert time.monotonic() < deadline, "the new value did not reach every member"
            time.sleep(1)
    finally:
        # Back to the pillar's value, the same way.
        salt_json("postgres-srv1", "state.apply", "patroni", "-t", "300")
    deadline = time.monotonic() + 30
    while any(show_setting(h, "wal_keep_size") != "256MB" for h in MEMBERS):
        assert time.monotonic() < deadline, "the pillar's value did not come back"
        time.sleep(1)
