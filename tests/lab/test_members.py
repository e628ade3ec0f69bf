"""The pillar's member list is the truth: a member added in pillar and made with salt-cloud
joins through bin/deploy, a member taken out of pillar leaves, a member whose host was
destroyed and made again with the same name rejoins, and a change of two members at once is
refused; all under the fault tests' writer, with no acknowledged write lost.

The new member's name and address follow the pillar's last member (the next number and
address); it is added through pillar/local.sls (merged over the site's pillar, kept out of
git), the file put back as it was after."""

from __future__ import annotations

import ipaddress
import re
import time

import pytest
import yaml

from lab.cluster import cluster, credentials, leader, on_web, salt, spare_replica
from tests.conftest import REPO, VENV_BIN, run
from tests.lab.conftest import lab_exec, started_at, wait_healthy

C = cluster()
LOCAL = REPO / "pillar" / "local.sls"
OUTPUT = REPO / "tests" / "output"
LAST = C.model["member_names"][-1]
NEW = re.sub(r"\d+$", lambda m: str(int(m.group()) + 1), LAST)
NEW_ADDRESS = str(ipaddress.ip_address(C.members[LAST]) + 1)


def deploy(check: bool = True):
    return run(REPO / "bin" / "deploy", check=check, timeout=1800)


def etcd_members() -> dict[str, str]:
    """{name: status} as etcd lists them."""
    return {m["name"] or m["peer_urls"][0]: m["status"]
            for m in on_web("etcd_cluster.members", check=True)}


def patroni_states() -> dict[str, str]:
    return {m["name"]: m["state"] for m in on_web("patroni.list", check=True)["members"]}


def replica_port_answers(times: int) -> set[str]:
    password = credentials()["app"]
    return {lab_exec(C.web, "env", f"PGPASSWORD={password}", "psql", "-h", "127.0.0.1", "-p",
                     str(C.replica_port), "-U", C.app["user"], "-d", C.app["database"], "-XAtc",
                     "select host(inet_server_addr())").stdout.strip() for _ in range(times)}


@pytest.fixture
def local_pillar():
    """pillar/local.sls with a change merged in (write(members)); put back as it was."""
    before = LOCAL.read_text() if LOCAL.exists() else None
    base = yaml.safe_load(before or "") or {}

    def write(members: dict) -> None:
        pillar = {**base, "pgcluster": {**base.get("pgcluster", {}), "members": {
            **base.get("pgcluster", {}).get("members", {}), **members}}}
        LOCAL.write_text(yaml.safe_dump(pillar))

    yield write
    if before is None:
        LOCAL.unlink(missing_ok=True)
    else:
        LOCAL.write_text(before)


def test_a_member_added_in_pillar_and_map_joins_and_taken_out_leaves(writer, local_pillar):
    assert NEW not in C.members and NEW_ADDRESS not in C.hosts.values()
    before = started_at()
    local_pillar({NEW: {"address": NEW_ADDRESS}})
    cloud_map = OUTPUT / "members.map"
    OUTPUT.mkdir(exist_ok=True)
    cloud_map.write_text(yaml.safe_dump({"lab-db": [{NEW: {"ip_address": NEW_ADDRESS}}]}))
    try:
        run(VENV_BIN / "salt-cloud", "-m", cloud_map, "-y", timeout=600)
        joined = time.monotonic()
        out = deploy().stdout
        gaps = {"join": writer.longest_gap(joined, time.monotonic())}
        assert re.search(rf"members-join +ok .*{NEW}: into etcd", out), out
        assert "warning: pgcluster:members: 4 members, an even number" in out
        assert etcd_members() == {**dict.fromkeys(C.members, "started"), NEW: "started"}
        wait_healthy(300, settled=False)
        assert patroni_states()[NEW] == "streaming"
        # HAProxy balances reads over the three replicas, the new one among them.
        replicas = {NEW_ADDRESS, *C.members.values()} - {C.members[leader()]}
        deadline = time.monotonic() + 60
        while (answers := replica_port_answers(12)) != replicas:
            assert time.monotonic() < deadline, f"reads went to {answers}, not {replicas}"
            time.sleep(2)
        # No running member's PostgreSQL restarted for it.
        assert started_at() == before

        # Out of pillar again while it leads: switched away from, then it leaves Patroni, etcd
        # and HAProxy, and its services stop.
        on_web("patroni.switchover", f"candidate={NEW}", check=True)
        wait_healthy(300)
        assert leader() == NEW
        _without_new()
        left = time.monotonic()
        out = deploy().stdout
        gaps["leave (the leader)"] = writer.longest_gap(left, time.monotonic())
        print(f"\nlongest write gap: {', '.join(f'{k} {v:.2f} s' for k, v in gaps.items())}")
        assert re.search(rf"members-leave +ok .*{NEW}: switched over from; .*{NEW}: out of etcd", out), out
        assert leader() != NEW
        assert etcd_members() == dict.fromkeys(C.members, "started")
        assert NEW not in patroni_states()
        haproxy = lab_exec(C.web, "cat", C.model["haproxy"]["config_file"]).stdout
        assert NEW_ADDRESS not in haproxy and NEW not in haproxy
        for unit in (C.model["patroni"]["service"], C.model["etcd"]["service"]):
            assert lab_exec(NEW, "systemctl", "is-active", unit, check=False).stdout.strip() != "active"
    finally:
        run(VENV_BIN / "salt-cloud", "-d", NEW, "-y", check=False, timeout=300)
    assert NEW not in salt("-L", tool="salt-key").get("minions", [])


def _without_new() -> None:
    pillar = yaml.safe_load(LOCAL.read_text()) or {}
    pillar.get("pgcluster", {}).get("members", {}).pop(NEW, None)
    if not pillar.get("pgcluster", {}).get("members"):
        pillar.get("pgcluster", {}).pop("members", None)
    if not pillar.get("pgcluster"):
        pillar.pop("pgcluster", None)
    LOCAL.write_text(yaml.safe_dump(pillar) if pillar else "")


def test_two_members_taken_out_at_once_are_refused_and_nothing_changes(lab):
    """What bin/deploy's members-leave step runs, with the pillar's list short of two."""
    wait_healthy(240)
    keep = C.model["member_names"][:1]
    result = salt("pgcluster_members.leave", f"members={keep}", tool="salt-run")
    removed = " ".join(f"removes {n}," for n in C.model["member_names"][1:]).rstrip(",")
    assert result.get("Error", "").startswith(f"members: the pillar {removed} at once"), result
    assert etcd_members() == dict.fromkeys(C.members, "started")
    assert set(patroni_states()) == set(C.members)


def test_a_member_whose_host_is_made_again_rejoins_through_bin_deploy(writer):
    host = spare_replica()
    old_id = next(m["id"] for m in on_web("etcd_cluster.members", check=True) if m["name"] == host)
    run(VENV_BIN / "salt-cloud", "-d", host, "-y", timeout=300)
    run(VENV_BIN / "salt-cloud", "-m", "cloud.maps.d/lab.map", "-P", "-y", timeout=900)
    started = time.monotonic()
    out = deploy().stdout
    print(f"\n{host} made again: bin/deploy {time.monotonic() - started:.0f} s, longest write gap "
          f"{writer.longest_gap(started, time.monotonic()):.2f} s")
    assert re.search(rf"members-join +ok .*{host}: its old member out of etcd", out), out
    members = {m["name"]: m for m in on_web("etcd_cluster.members", check=True)}
    assert set(members) == set(C.members) and members[host]["id"] != old_id
    wait_healthy(300, settled=True)
    assert patroni_states()[host] == "streaming"
