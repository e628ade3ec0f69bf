"""A member added to and removed from a running etcd (the etcd_cluster module's member_add and
member_remove, which the runner _runners/pgcluster_members.py calls), against real etcd 3.4
members on loopback: the second really joins with the initial cluster member_add gives. And
what the runner plans from the pillar's members, etcd's list and each host's data. The runner
itself runs in the lab (tests/lab/test_members.py)."""

from __future__ import annotations

import importlib.util
import re
import shutil

import pytest

from tests.conftest import REPO
from tests.unit.conftest import load_module, salt_utils, start_etcd

etcd_cluster = load_module("_modules/etcd_cluster.py")
_spec = importlib.util.spec_from_file_location("pgcluster_members",
                                               REPO / "_runners" / "pgcluster_members.py")
runner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runner)
CONFIG: dict = {}


@pytest.fixture
def configure_loader_modules():
    funcs = {"pgcluster.config": lambda fresh=False, pillar=None: CONFIG,
             "pillar.get": lambda key, default=None, unmask=False: default}
    return {etcd_cluster: {"__salt__": funcs, "__utils__": salt_utils(), "__grains__": {"id": "e1"}}}


@pytest.fixture
def etcd(tmp_path):
    """e1 running on 127.0.0.1; the pillar lists e2 on 127.0.0.2 too (same ports, as members
    on their own hosts have)."""
    if not shutil.which("etcd"):
        pytest.skip("etcd-server is not installed (make apt installs it)")
    process, client, peer = start_etcd(tmp_path / "e1")
    CONFIG.clear()
    CONFIG.update({"name": "test", "member_names": ["e1", "e2"],
                   "members": {"e1": {"address": "127.0.0.1"}, "e2": {"address": "127.0.0.2"}},
                   "etcd": {"tls": False, "auth": False, "client_port": client, "peer_port": peer,
                            "urls": {n: f"http://127.0.0.{i}:{client}" for i, n in ((1, "e1"), (2, "e2"))}}})
    processes = [process]
    yield processes
    for p in processes:
        p.terminate()
        p.wait(timeout=10)


def _listed() -> dict[str, dict]:
    return {m["peer_urls"][0]: m for m in etcd_cluster.members(endpoints=CONFIG["etcd"]["urls"]["e1"])}


def test_a_member_is_added_joins_with_the_initial_cluster_given_and_is_removed_once(etcd, tmp_path):
    client, peer = CONFIG["etcd"]["client_port"], CONFIG["etcd"]["peer_port"]
    added = etcd_cluster.member_add("e2")
    initial = f"e1=http://127.0.0.1:{peer},e2=http://127.0.0.2:{peer}"
    assert added["changed"] is True and added["initial_cluster"] == initial
    assert _listed()[f"http://127.0.0.2:{peer}"]["status"] == "unstarted"
    # Asked again before it started (a deploy that stopped there): the same, nothing added.
    again = etcd_cluster.member_add("e2")
    assert again == {**added, "changed": False}
    assert len(_listed()) == 2
    # It joins the running cluster with what member_add gave.
    etcd.append(start_etcd(tmp_path / "e2", "e2", "127.0.0.2", (client, peer), initial)[0])
    assert _listed()[f"http://127.0.0.2:{peer}"]["name"] == "e2"
    assert etcd_cluster.member_remove("e2") == {"changed": True, "id": added["id"]}
    assert list(_listed()) == [f"http://127.0.0.1:{peer}"]
    assert etcd_cluster.member_remove("e2") == {"changed": False, "id": None}
    # Removed, its etcd stops serving by itself.
    etcd[1].wait(timeout=20)


def test_a_change_refused_while_a_peer_just_reconnected_is_asked_again(etcd, tmp_path):
    """etcd refuses a member change ("unhealthy cluster") until its leader has been connected to
    every member for 5 s: right after a member's etcd restarted (as after a reboot, or when a
    deploy restarted it), member_add and member_remove ask again rather than fail the deploy."""
    client, peer = CONFIG["etcd"]["client_port"], CONFIG["etcd"]["peer_port"]
    added = etcd_cluster.member_add("e2")
    etcd.append(start_etcd(tmp_path / "e2", "e2", "127.0.0.2", (client, peer),
                           added["initial_cluster"])[0])
    CONFIG["member_names"].append("e3")
    CONFIG["members"]["e3"] = {"address": "127.0.0.3"}
    CONFIG["etcd"]["urls"]["e3"] = f"http://127.0.0.3:{client}"

    def restart_e2():
        etcd[1].terminate()
        etcd[1].wait(timeout=10)
        etcd[1] = start_etcd(tmp_path / "e2", "e2", "127.0.0.2", (client, peer),
                             added["initial_cluster"])[0]

    restart_e2()
    with pytest.raises(etcd_cluster.CommandExecutionError, match="unhealthy cluster") as refused:
        etcd_cluster.member_add("e3", wait=0)
    # Each member was asked (one that has seen every link up for 5 s takes it), and the
    # refusal says what each member's peer links are then (up or DOWN, how often each
    # dropped): here both up again, only not for 5 s yet.
    urls = CONFIG["etcd"]["urls"]
    assert re.fullmatch(rf"etcd refused POST /v3/cluster/member/add at {urls['e1']}, {urls['e2']} "
                        r"for 0 s: etcdserver: unhealthy cluster \(peer links now: "
                        r"e1: e2 up[^;]*; e2: e1 up[^;]*\)", str(refused.value)), refused.value
    # Which peers each member has a live link with, by name (the runner's gates read it).
    CONFIG["tls"] = {"ca_file": str(tmp_path / "no-ca.crt")}
    health = etcd_cluster.tls_switch_health()
    assert [health[m]["linked"] for m in ("e1", "e2", "e3")] == [["e2"], ["e1"], []]
    assert etcd_cluster.member_add("e3")["changed"] is True
    assert len(_listed()) == 3
    # One never started is taken out at once (etcd: not part of the quorum).
    assert etcd_cluster.member_remove("e3", wait=0)["changed"] is True
    restart_e2()
    with pytest.raises(etcd_cluster.CommandExecutionError, match="unhealthy cluster"):
        etcd_cluster.member_remove("e2", wait=0)
    assert etcd_cluster.member_remove("e2")["changed"] is True
    assert list(_listed()) == [f"http://127.0.0.1:{peer}"]


def test_a_link_counts_as_live_when_either_end_has_it_up():
    """After a member crashed, a message sent to it just before may fail only once it is back,
    and the sender then counts it down although both links work: the runner's gates take a
    link as live when either end has it up, and name the links down at both ends."""
    report = {"srv1": {"linked": ["srv3"]},           # srv1 counts srv2 down...
              "srv2": {"linked": ["srv1", "srv3"]},   # ...which has the link up
              "srv3": {"linked": ["srv1", "srv2"]},
              "srv4": {"linked": []}}
    members = ["srv1", "srv2", "srv3"]
    assert runner.unlinked(report, members) == {m: [] for m in members}
    assert runner.unlinked(report, [*members, "srv4"]) == {
        "srv1": ["srv4"], "srv2": ["srv4"], "srv3": ["srv4"], "srv4": members}


def test_only_a_pillar_member_is_added():
    CONFIG.clear()
    CONFIG.update({"members": {"e1": {"address": "127.0.0.1"}}})
    with pytest.raises(etcd_cluster.CommandExecutionError, match="e9 is no member of pgcluster:members"):
        etcd_cluster.member_add("e9")


def _row(name, address, status="started", ran=True):
    return {"name": name if status == "started" else "", "status": status,
            "peer_urls": [f"https://{address}:2380"],
            "client_urls": [f"https://{address}:2379"] if ran else []}


WANTED = {"srv1": "10.0.0.11", "srv2": "10.0.0.12", "srv3": "10.0.0.13"}
LISTED = [_row("srv1", "10.0.0.11"), _row("srv2", "10.0.0.12"), _row("srv3", "10.0.0.13")]
DATA = dict.fromkeys(WANTED, True)


@pytest.mark.parametrize(("wanted", "listed", "has_data", "expected"), [
    (WANTED, LISTED, DATA, {}),
    ({**WANTED, "srv4": "10.0.0.14"}, LISTED, {**DATA, "srv4": False}, {"join": ["srv4"]}),
    # Added to etcd by a deploy that stopped before starting it: joined again, not replaced.
    ({**WANTED, "srv4": "10.0.0.14"}, [*LISTED, _row("srv4", "10.0.0.14", "unstarted")],
     {**DATA, "srv4": False}, {"join": ["srv4"]}),
    ({"srv1": "10.0.0.11", "srv2": "10.0.0.12"}, LISTED, DATA, {"leave": ["srv3"]}),
    # Its host made again: etcd lists it as started, the host has no etcd data.
    (WANTED, LISTED, {**DATA, "srv2": False}, {"replace": ["srv2"]}),
    # A host that does not answer is not taken for one made again.
    (WANTED, LISTED, {**DATA, "srv2": None}, {}),
    # A new cluster's member that never ran (a first deployment that stopped before it): the
    # etcd step starts it as one of the new cluster.
    (WANTED, [*LISTED[:2], _row("srv3", "10.0.0.13", ran=False)], {**DATA, "srv3": False}, {}),
], ids=["same", "added", "added-unstarted", "removed", "made-again", "host-silent", "never-ran"])
def test_the_plan_follows_the_pillars_members(wanted, listed, has_data, expected):
    plan = runner.changes(wanted, listed, has_data)
    assert plan == {"leave": [], "join": [], "replace": [], "refusal": None, **expected}


@pytest.mark.parametrize(("wanted", "has_data", "named"), [
    ({"srv1": "10.0.0.11"}, DATA, "the pillar removes srv2, removes srv3 at once"),
    ({"srv1": "10.0.0.11", "srv2": "10.0.0.12", "srv4": "10.0.0.14"}, DATA,
     "the pillar removes srv3, adds srv4 at once"),
    (WANTED, {**DATA, "srv1": False, "srv2": False}, "makes srv1 again, makes srv2 again"),
])
def test_more_than_one_member_changed_at_once_is_refused_naming_each(wanted, has_data, named):
    refusal = runner.changes(wanted, LISTED, has_data)["refusal"]
    assert named in refusal and "one member changed at a time" in refusal

