"""The cluster the states and the orchestration make from bare hosts (`make lab`)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from lab.cluster import cluster, credentials, leader, on_web, salt, secrets, spare_replica
from tests.conftest import REPO, VENV_BIN, run
from tests.lab.conftest import DEPLOY, LAB, lab_exec, wait_healthy

C = cluster()
MEMBERS = C.members
CREDENTIALS = REPO / "pillar" / "generated" / "credentials.yaml"


def patronictl_list(host: str) -> list[dict]:
    # As an operator types it on a host: patronictl on the PATH reads the host's config.
    return json.loads(lab_exec(host, "patronictl", "list", "-f", "json").stdout)


def psql_via_web(port: int, sql: str) -> str:
    password = credentials()["app"]
    return lab_exec(C.web, "env", f"PGPASSWORD={password}", "psql", "-h", "127.0.0.1", "-p",
                    str(port), "-U", C.app["user"], "-d", C.app["database"], "-XAtc",
                    sql).stdout.strip()


def changes(result: dict) -> dict:
    """{minion: [state ids that changed something]} from `salt --out=json state.apply`."""
    found = {}
    for minion, states in result.items():
        assert isinstance(states, dict), f"{minion}: {states}"
        failed = [k for k, v in states.items() if v["result"] is False]
        assert not failed, f"{minion}: failed states {failed}"
        found[minion] = [k.split("_|-")[1] for k, v in states.items() if v["changes"]]
    return found


def test_deploy_reads_as_success_at_a_glance(lab):
    out = DEPLOY["output"]
    # One line per orchestration step, each ok, then the cluster and the web address.
    steps = re.findall(r"^  (\S+) +(ok|FAILED|not run) +[\d.]+ s", out, re.M)
    assert [name for name, _ in steps] == [
        "modules-synced", "addresses", "members-leave", "common", "etcd-tls-switch", "members-join",
        "web-base", "members-base", "patroni-first", "patroni-others",
        "etcd-auth", "app-database", "pgbouncer", "web-services", "monitoring", "backup-repository"]
    assert {status for _, status in steps} == {"ok"}
    assert C.name in out and "Leader" in out
    assert f"web: {C.url}/" in out
    # Salt's noise goes to the log whose path is printed, not to the user.
    assert "Traceback" not in out and "unclosed" not in out and "WARNING" not in out
    assert len(out.splitlines()) < 60, out
    log = re.search(r"Salt's whole output: (\S+)", out).group(1)
    assert Path(log).stat().st_size > 0


def test_deploy_with_a_bad_pillar_says_so_once_naming_the_key(lab):
    result = run(REPO / "bin" / "deploy", "--pillar", '{"pgcluster": {"patroni": {"tll": 30}}}',
                 check=False, timeout=900)
    assert result.returncode == 1
    message = "pillar pgcluster:patroni:tll: unknown key (did you mean ttl?)"
    assert result.stdout.count(message) == 1, result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert len(result.stdout.splitlines()) < 40, result.stdout
    # Nothing was changed on the way: the cluster is still there.
    assert leader() in MEMBERS


def test_deploy_stops_before_configuring_anything_when_a_host_lacks_its_pillar_address(lab):
    host = sorted(MEMBERS)[1]
    wrong = "10.0.0.99"
    override = json.dumps({"pgcluster": {"members": {host: {"address": wrong}}}})
    result = run(REPO / "bin" / "deploy", "--pillar", override, check=False, timeout=900)
    assert result.returncode == 1
    message = (f"{host} has {MEMBERS[host]}, but pgcluster:members:{host}:address gives it {wrong}: "
               "make the map (its ip_address) and the pillar agree")
    assert result.stdout.count(message) == 1, result.stdout
    steps = dict(re.findall(r"^  (\S+) +(ok|FAILED|not run) ", result.stdout, re.M))
    assert steps["addresses"] == "FAILED" and steps["common"] == "not run", result.stdout
    # Nothing was configured from the wrong address: the host still has its config.
    config = lab_exec(host, "cat", C.model["patroni"]["config_file"]).stdout
    assert f"{MEMBERS[host]}:{C.patroni_port}" in config


@pytest.mark.parametrize("host", sorted(MEMBERS))
def test_patronictl_list_on_every_member_shows_one_leader_and_two_streaming_replicas(lab, host):
    # Patroni names the synchronous standbys a loop or two after the replicas stream.
    deadline = time.monotonic() + 60
    while True:
        members = patronictl_list(host)
        settled = sorted(m["Role"] for m in members) == C.settled_roles and \
            all(m["State"] in ("running", "streaming") for m in members)
        if settled or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {m["Member"] for m in members} == set(MEMBERS)
    roles = sorted(m["Role"] for m in members)
    assert roles.count("Leader") == 1
    replicas = [m for m in members if m["Role"] != "Leader"]
    # Quorum commit by default: every replica is one of the quorum that acknowledges commits.
    assert roles == C.settled_roles
    assert all(m["State"] == "streaming" for m in replicas)
    assert len({m["TL"] for m in members}) == 1
    for m in members:
        assert m["Host"] == MEMBERS[m["Member"]]


def test_patronictl_on_a_member_cut_off_from_etcd_ends_within_its_bound(lab):
    """Its own etcd stopped, patronictl asks the others; cut off from them too, it says so within
    retry_timeout instead of waiting without end as Patroni's own patronictl does."""
    wait_healthy()
    replica = spare_replica()
    others = [m for m in MEMBERS if m != replica]
    lab_exec(replica, "systemctl", "stop", "etcd")
    try:
        assert sorted(m["Member"] for m in patronictl_list(replica)) == sorted(MEMBERS)
        run(LAB, "partition", replica)
        try:
            started = time.monotonic()
            result = lab_exec(replica, "patronictl", "list", check=False, timeout=C.retry_timeout + 60)
            took = time.monotonic() - started
        finally:
            run(LAB, "heal", replica)
    finally:
        lab_exec(replica, "systemctl", "start", "etcd")
    assert result.returncode == 1, result
    assert took <= C.retry_timeout + 5, f"patronictl took {took:.1f} s"
    assert f"{C.etcd_url(replica)}: Connection refused" in result.stderr, result.stderr
    for member in others:
        assert f"{C.etcd_url(member)}: no answer in {C.retry_timeout:g} s" in result.stderr, result.stderr
    wait_healthy(timeout=240)


def test_etcd_reports_three_healthy_endpoints(lab):
    health = lab_exec(C.model["bootstrap_member"], "etcdctl", "endpoint", "health", "--cluster")
    out = health.stdout + health.stderr  # etcdctl prints the health report on stderr
    # etcdctl is root's, set up for the cluster (salt/etcd): its TLS and root user.
    healthy = re.findall(r"(\S+) is healthy", out)
    assert sorted(healthy) == sorted(C.etcd_url(m) for m in MEMBERS)
    members = lab_exec(C.model["member_names"][1], "etcdctl", "member", "list").stdout
    assert sorted(re.findall(r"started, ([^,]+),", members)) == sorted(MEMBERS)


def _etcd_leader() -> str | None:
    """The endpoint etcd's status names leader; None while an election or a transfer runs."""
    return next((r["endpoint"] for r in on_web("etcd_cluster.status", check=True)
                 if r.get("is_leader")), None)


def test_etcd_leadership_is_handed_away_from_the_postgresql_primary(lab):
    """A primary that dies with etcd's leadership costs 2-3 s more of writes (a new etcd leader
    renews every lease): etcd-leader-off-primary on each member moves it away."""
    primary = leader()
    primary_url = C.etcd_url(primary)
    ids = {m["client_urls"][0]: m["id"] for m in on_web("etcd_cluster.members", check=True)}
    deadline = time.monotonic() + 30
    while (current := _etcd_leader()) is None:
        assert time.monotonic() < deadline, "etcd has no leader"
        time.sleep(1)
    if current != primary_url:  # put it on the primary's host, as after an election
        lab_exec(primary, "etcdctl", f"--endpoints={current}", "move-leader", ids[primary_url])
    # Moved there, then away: no leader for a moment in between (CI once read none).
    deadline = time.monotonic() + 30
    while (etcd_leader := _etcd_leader()) in (primary_url, None):
        assert time.monotonic() < deadline, f"etcd's leader stayed on {primary}, the primary"
        time.sleep(1)
    assert etcd_leader in ids
    log = lab_exec(primary, "journalctl", "-u", "etcd-leader-off-primary", "-o", "cat").stdout
    assert f"moved etcd's leadership from {primary} to" in log


def test_the_primary_port_reaches_the_leader_and_the_replica_port_a_replica(lab):
    assert psql_via_web(C.primary_port, "select pg_is_in_recovery()") == "f"
    primary = leader()
    assert psql_via_web(C.primary_port, "select host(inet_server_addr())") == MEMBERS[primary]
    answers = {psql_via_web(C.replica_port,
                            "select pg_is_in_recovery()::text || ' ' || host(inet_server_addr())")
               for _ in range(2 * len(MEMBERS))}
    assert {a.split()[0] for a in answers} == {"true"}
    # Round robin over every replica.
    assert {a.split()[1] for a in answers} == set(MEMBERS.values()) - {MEMBERS[primary]}


def test_writes_through_the_primary_port_are_on_every_member(lab):
    psql_via_web(C.primary_port,
                 "create table if not exists deploy_check (id serial primary key, note text)")
    note = f"written through HAProxy {time.time_ns()}"
    psql_via_web(C.primary_port, f"insert into deploy_check (note) values ('{note}')")
    # Synchronous replication: the standby has it at once; the async one very soon.
    deadline = time.monotonic() + 10
    for host in MEMBERS:
        # As the postgres OS user over the local socket (peer authentication).
        while True:
            out = lab_exec(host, "runuser", "-u", "postgres", "--", "psql", "-d",
                           C.app["database"], "-XAtc",
                           f"select count(*) from deploy_check where note = '{note}'")
            if out.stdout.strip() == "1" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert out.stdout.strip() == "1", f"{host} does not have the row"


def test_patroni_is_the_pillars_version_from_pypi_in_its_own_venv_and_owns_postgresql(lab):
    patroni = C.model["patroni"]
    for host in MEMBERS:
        assert lab_exec(host, "patroni", "--version").stdout.split() == ["patroni", patroni["version"]]
        assert lab_exec(host, "readlink", "-f", "/usr/local/bin/patroni").stdout.strip() == \
            f"{patroni['venv']}/bin/patroni"
        # patronictl on the PATH: the venv's, behind the wrapper that bounds its wait for etcd.
        assert lab_exec(host, "patronictl", "version").stdout.split() == \
            ["patronictl", "version", patroni["version"]]
        assert f"exec {patroni['venv']}/bin/python {patroni['venv']}/bounded_patronictl.py" in \
            lab_exec(host, "cat", "/usr/local/bin/patronictl").stdout
        # No Debian cluster: /etc/postgresql has none, Debian's umbrella unit is off.
        assert lab_exec(host, "ls", "/etc/postgresql/15", check=False).stdout.strip() == ""
        assert lab_exec(host, "systemctl", "is-enabled", "postgresql", check=False).stdout.strip() \
            == "disabled"
        assert lab_exec(host, "systemctl", "is-enabled", "patroni").stdout.strip() == "enabled"


def _data_mount(host: str) -> dict:
    """What holds the member's data directory: findmnt's source, fstype and options."""
    pg = C.model["postgresql"]
    out = lab_exec(host, "findmnt", "--json", "--output", "TARGET,SOURCE,FSTYPE,OPTIONS",
                   "--target", f"{pg['home']}/{pg['version']}/main").stdout
    return json.loads(out)["filesystems"][0]


def test_postgresql_lives_on_its_own_disk_which_a_reboot_mounts_again(lab):
    pg = C.model["postgresql"]
    disk = pg["data_disk"]
    assert disk["device"], "the lab's pillar gives the members a data disk"
    for host in MEMBERS:
        mount = _data_mount(host)
        node = lab_exec(host, "readlink", "-f", disk["device"]).stdout.strip()
        assert (mount["target"], mount["source"], mount["fstype"]) == (pg["home"], node, disk["fstype"])
        assert "noatime" in mount["options"].split(",")
        # Mounted at boot by its systemd unit, enabled.
        unit = pg["mount_unit"]
        assert lab_exec(host, "systemctl", "is-enabled", unit).stdout.strip() == "enabled"
        assert f"What={disk['device']}\n" in lab_exec(host, "systemctl", "cat", unit).stdout
        # Patroni never runs on the system disk's folder while the data disk is missing.
        assert f"RequiresMountsFor={pg['home']}" in lab_exec(
            host, "systemctl", "cat", C.model["patroni"]["service"]).stdout
    # A replica powered off and on: the disk is mounted at boot, its data (and a row written
    # before) still there, and it streams again.
    replica = spare_replica()
    psql_via_web(C.primary_port, "create table if not exists disk_check (note text)")
    note = f"before the reboot {time.time_ns()}"
    psql_via_web(C.primary_port, f"insert into disk_check values ('{note}')")
    run(LAB, "stop", replica)
    run(LAB, "start", replica)
    assert _data_mount(replica)["target"] == pg["home"]
    wait_healthy()
    deadline = time.monotonic() + 10
    while True:
        out = lab_exec(replica, "runuser", "-u", "postgres", "--", "psql", "-d",
                       C.app["database"], "-XAtc", f"select count(*) from disk_check where note = '{note}'")
        if out.stdout.strip() == "1" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert out.stdout.strip() == "1", f"{replica} lost the row written before its reboot"


def test_packages_were_installed_by_the_states_from_the_lab_repository(lab):
    first, second = C.model["member_names"][:2]
    policy = lab_exec(first, "apt-cache", "policy", "postgresql-15").stdout
    installed = re.search(r"Installed: (\S+)", policy).group(1)
    assert installed != "(none)"
    assert re.search(rf"\*\*\* {re.escape(installed)} \d+\n\s+\d+ file:/srv/pglab/apt", policy)
    # The image the hosts boot from has none of it: a fresh VM path.
    images = list(Path("/var/cache/pglab").glob("image-*"))
    assert images and not any((i / "usr/lib/postgresql").exists() for i in images)
    for pkg in ("etcd-server", "pgbouncer"):
        assert "Installed: (none)" not in lab_exec(second, "apt-cache", "policy", pkg).stdout
    assert "Installed: (none)" not in lab_exec(C.web, "apt-cache", "policy", "haproxy").stdout


def test_secret_files_are_private_and_out_of_git(lab):
    member = C.model["bootstrap_member"]
    config = C.model["patroni"]["config_file"]
    assert lab_exec(member, "stat", "-c", "%a %U", config).stdout.split() == ["600", "postgres"]
    userlist = C.model["pgbouncer"]["userlist_file"]
    assert lab_exec(member, "stat", "-c", "%a %U", userlist).stdout.split() == ["640", "postgres"]
    assert oct(CREDENTIALS.stat().st_mode & 0o777) == "0o600"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(CREDENTIALS)], cwd=REPO, check=False)
    assert ignored.returncode == 0
    for secret in secrets():
        # Not in any tracked file as it stands, nor in any commit of the history.
        in_tree = run("git", "grep", "-q", "-F", "-e", secret, check=False)
        assert in_tree.returncode == 1, "a password is in a tracked file"
        # One argument: a secret may begin with "-", which git would read as an option.
        assert run("git", "log", "--all", "--oneline", f"-S{secret}").stdout == "", \
            "a password is in a commit"


def test_a_second_orchestration_and_test_mode_change_nothing_and_show_no_secret(lab):
    # The deployment again (what bin/deploy runs; a highstate applies the same states).
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
    # A highstate in test mode says so too, and every state would pass.
    dry = run(VENV_BIN / "salt", "*", "state.apply", "test=True", "--out=json", "--static",
              "-t", "600")
    assert changes(json.loads(dry.stdout)) == {m: [] for m in C.hosts}
    assert all(v["result"] is True for states in json.loads(dry.stdout).values()
               for v in states.values())
    for secret in secrets():
        assert secret not in out.stdout and secret not in dry.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"patroni": {"ttl": 10}}, "pillar pgcluster:patroni:ttl: 10 is not allowed"),
        ({"patroni": {"tll": 30}}, "pillar pgcluster:patroni:tll: unknown key (did you mean ttl?)"),
        ({"patroni": {"synchronous_node_count": len(MEMBERS)}},
         f"pillar pgcluster:patroni:synchronous_node_count: {len(MEMBERS)} standbys, but"),
    ],
    ids=["ttl", "typo", "standbys"],
)
def test_bad_pillar_fails_the_render_naming_the_key(lab, override, message):
    member = C.model["bootstrap_member"]
    errors = salt(member, "state.show_sls", "etcd", f"pillar={json.dumps({'pgcluster': override})}")
    errors = errors[member]
    # A list of render errors instead of the rendered states.
    assert isinstance(errors, list)
    assert any("Rendering SLS 'base:etcd' failed" in e and message in e for e in errors), errors
    # Nothing was changed on the way: the cluster is still there.
    assert leader() in MEMBERS


def show_setting(host: str, name: str) -> str:
    return lab_exec(host, "runuser", "-u", "postgres", "--", "psql", "-XAtc", f"show {name}").stdout.strip()


def test_a_parameter_changed_in_pillar_reaches_the_running_cluster(lab):
    override = '{"pgcluster": {"postgresql": {"parameters": {"wal_keep_size": "512MB"}}}}'
    member = C.model["bootstrap_member"]
    pillar_value = C.model["postgresql"]["parameters"]["wal_keep_size"]
    try:
        result = salt(member, "state.apply", "patroni", f"pillar={override}", timeout=300)
        assert "patroni-dcs-config" in changes(result)[member]
        # Patroni reloads PostgreSQL on every member: no file edited behind its back.
        deadline = time.monotonic() + 30
        while any(show_setting(h, "wal_keep_size") != "512MB" for h in MEMBERS):
            assert time.monotonic() < deadline, "the new value did not reach every member"
            time.sleep(1)
    finally:
        # Back to the pillar's value, the same way.
        salt(member, "state.apply", "patroni", timeout=300)
    deadline = time.monotonic() + 30
    while any(show_setting(h, "wal_keep_size") != pillar_value for h in MEMBERS):
        assert time.monotonic() < deadline, "the pillar's value did not come back"
        time.sleep(1)
