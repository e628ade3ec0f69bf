"""etcd_cluster.auth_plan and the state etcd_cluster.auth_managed against a real etcd 3.4
(Debian's etcd-server, as on the members), one member on loopback for each test; the members'
Patroni REST APIs answer as recorded from the lab (tests/unit/recorded_api), each with or
without the header that says it runs with its etcd login."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time

import pytest
from salt.exceptions import CommandExecutionError

from tests.unit.conftest import LoaderContext, load_module, salt_utils, start_etcd
from tests.unit.recorded_api import MEMBERS, RecordedCluster, cluster_config

etcd_cluster = load_module("_modules/etcd_cluster.py")
patroni = load_module("_modules/patroni.py")
auth_state = load_module("_states/etcd_cluster.py")
PREFIX = "/service/auth-test/"
PASSWORDS = {"root": "root-secret", "patroni": "patroni-secret", "reader": "reader-secret"}
PILLAR: dict = {}
CONFIG: dict = {}
PROCESS: list = []  # the test's etcd
LOGIN = {patroni.ETCD_USER_HEADER: "patroni"}

pytestmark = pytest.mark.skipif(not shutil.which("etcd"), reason="etcd-server is not installed "
                                "(make apt installs it)")


@pytest.fixture
def configure_loader_modules():
    funcs = {"pgcluster.config": lambda fresh=False: CONFIG,
             "pillar.get": lambda key, default=None, unmask=False: PILLAR.get(key, default)}
    return {etcd_cluster: {"__salt__": funcs, "__utils__": salt_utils()},
            patroni: {"__salt__": funcs, "__utils__": salt_utils(), "__context__": LoaderContext()},
            auth_state: {"__salt__": {"etcd_cluster.auth_plan": etcd_cluster.auth_plan,
                                      "etcd_cluster.auth_enabled": etcd_cluster.auth_enabled,
                                      "patroni.etcd_logins": patroni.etcd_logins},
                         "__opts__": {"test": False}}}


@pytest.fixture(autouse=True)
def patronis():
    """The members' Patroni REST APIs, each running with its etcd login unless a test says."""
    cluster = RecordedCluster("healthy")
    for member in MEMBERS:
        cluster.send_headers(member, LOGIN)
    yield cluster
    cluster.close()


@pytest.fixture(autouse=True)
def etcd(tmp_path):
    """One etcd member on loopback, its authentication off as a new cluster's is."""
    process, client, _peer = start_etcd(tmp_path / "data")
    PROCESS[:] = [process]
    url = f"http://127.0.0.1:{client}"
    CONFIG.clear()
    CONFIG.update({"member_names": ["e1"], "tls": {"ca_file": None},
                   "etcd": {"urls": {"e1": url}, "tls": False, "auth": True, "prefix": PREFIX},
                   "patroni": cluster_config()["patroni"]})
    PILLAR.clear()
    PILLAR.update({f"pgcluster_credentials:etcd_{u}": p for u, p in PASSWORDS.items()})
    yield url
    process.terminate()
    process.wait(timeout=10)


def _as(user, path, body):
    """A call as ``user`` (None: no token); etcd's refusal raises CommandExecutionError."""
    url = CONFIG["etcd"]["urls"]["e1"]
    token = etcd_cluster._token([url], None, user, 2) if user else None
    return etcd_cluster._call(url, path, body, 2, token=token)


def _key(name):
    return etcd_cluster._b64(PREFIX + name)


def test_a_new_etcd_gets_its_users_and_roles_then_authentication_and_a_second_plan_is_empty():
    plan = etcd_cluster.auth_plan()
    assert plan[0] == "add role root" and plan[-1] == "enable authentication"
    assert f"grant role patroni READWRITE on {PREFIX}" in plan
    assert f"grant role reader READ on {PREFIX}" in plan
    assert etcd_cluster.auth_plan() == plan  # a plan alone changes nothing
    assert etcd_cluster.auth_plan(apply=True) == plan
    assert etcd_cluster.auth_plan() == []
    # Each user reaches what its role allows, and nothing else.
    _as("patroni", "/v3/kv/put", {"key": _key("leader"), "value": etcd_cluster._b64("e1")})
    assert _as("reader", "/v3/kv/range", {"key": _key("leader")})["count"] == "1"
    with pytest.raises(CommandExecutionError, match="permission denied"):
        _as("reader", "/v3/kv/put", {"key": _key("leader"), "value": ""})
    with pytest.raises(CommandExecutionError, match="permission denied"):
        _as("patroni", "/v3/kv/range", {"key": etcd_cluster._b64("/service/other/leader")})
    with pytest.raises(CommandExecutionError, match="user name is empty"):
        _as(None, "/v3/kv/range", {"key": _key("leader")})


def test_a_role_or_user_widened_by_hand_and_a_changed_password_are_put_back():
    etcd_cluster.auth_plan(apply=True)
    etcd_cluster._call(CONFIG["etcd"]["urls"]["e1"], "/v3/auth/role/grant",
                       {"name": "reader", "perm": {"permType": "READWRITE", "key": _key(""),
                                                   "range_end": etcd_cluster._prefix_end(PREFIX)}},
                       2, token=etcd_cluster._token([CONFIG["etcd"]["urls"]["e1"]], None, "root", 2))
    _as("root", "/v3/auth/user/grant", {"user": "patroni", "role": "root"})
    _as("root", "/v3/auth/user/changepw", {"name": "reader", "password": "changed"})
    plan = etcd_cluster.auth_plan(apply=True)
    # The widened permission goes, then the right one comes back, in that order.
    assert plan == [f"revoke from role reader its READWRITE on {PREFIX}",
                    f"grant role reader READ on {PREFIX}", "revoke from user patroni role root",
                    "set user reader's password"]
    assert etcd_cluster.auth_plan() == []
    with pytest.raises(CommandExecutionError, match="permission denied"):
        _as("reader", "/v3/kv/put", {"key": _key("x"), "value": ""})


def test_a_wrong_root_password_is_named_and_authentication_goes_off_with_the_switch():
    etcd_cluster.auth_plan(apply=True)
    PILLAR["pgcluster_credentials:etcd_root"] = "not-it"
    with pytest.raises(CommandExecutionError, match=r"user root \(pgcluster_credentials:etcd_root\)"
                       ".*authentication failed"):
        etcd_cluster.auth_plan()
    PILLAR["pgcluster_credentials:etcd_root"] = PASSWORDS["root"]
    CONFIG["etcd"]["auth"] = False
    assert etcd_cluster.auth_plan(apply=True) == ["disable authentication"]
    assert etcd_cluster.auth_plan() == []
    assert _as(None, "/v3/kv/range", {"key": _key("leader")})["header"]


def test_the_state_says_what_it_would_do_in_test_mode_and_does_it_otherwise(monkeypatch):
    monkeypatch.setitem(auth_state.__opts__, "test", True)
    dry = auth_state.auth_managed("auth-test")
    assert dry["result"] is None and "would: add role root" in dry["comment"]
    assert etcd_cluster.auth_plan()[0] == "add role root"  # test mode changed nothing
    monkeypatch.setitem(auth_state.__opts__, "test", False)
    done = auth_state.auth_managed("auth-test")
    assert done["result"] is True and done["changes"]["etcd"][-1] == "enable authentication"
    assert not any(p in json.dumps(done) for p in PASSWORDS.values())
    assert auth_state.auth_managed("auth-test")["changes"] == {}


def test_the_state_enables_only_when_asked_and_acts_on_its_runs_pillar(monkeypatch):
    """salt/etcd sets users and roles up with enable=False (before Patroni has its login) and
    salt/etcd/auth.sls turns authentication on; both read the run's pillar (a bin/deploy
    --pillar override included), not the master's as it stands."""
    ready = auth_state.auth_managed("auth-test", enable=False)
    assert ready["result"] is True and "enable authentication" not in ready["changes"]["etcd"]
    assert ready["changes"]["etcd"][:2] == ["add role root", "add role patroni"]
    # Until authentication is on, a password cannot be checked, so it is set again.
    assert etcd_cluster.auth_plan()[-1] == "enable authentication"
    assert auth_state.auth_managed("auth-test")["changes"]["etcd"][-1] == "enable authentication"
    assert auth_state.auth_managed("auth-test")["changes"] == {}
    # The run's pillar turns authentication off; the master's still says on.
    runs = {**CONFIG, "etcd": {**CONFIG["etcd"], "auth": False}}
    monkeypatch.setitem(etcd_cluster.__salt__, "pgcluster.config",
                        lambda fresh=False: CONFIG if fresh else runs)
    off = auth_state.auth_managed("auth-test", enable=False)
    assert off["changes"] == {"etcd": ["disable authentication"]}


def test_the_state_asks_again_while_etcd_does_not_answer_then_names_its_errors():
    """A member that just formed the cluster may answer nothing for seconds while its
    neighbours install their packages (seen in the lab: the deployment failed). The state asks
    again for answer_wait seconds, then fails with every endpoint's error."""
    etcd = PROCESS[0]
    etcd.send_signal(signal.SIGSTOP)  # etcd takes the connection and answers nothing
    timer = threading.Timer(3, etcd.send_signal, [signal.SIGCONT])
    timer.start()
    started = time.monotonic()
    try:
        done = auth_state.auth_managed("auth-test", enable=False, answer_wait=30)
    finally:
        timer.join()
    assert done["result"] is True, done["comment"]
    assert done["changes"]["etcd"][0] == "add role root"
    assert time.monotonic() - started >= 3
    etcd.send_signal(signal.SIGSTOP)
    try:
        failed = auth_state.auth_managed("auth-test", enable=False, answer_wait=1)
    finally:
        etcd.send_signal(signal.SIGCONT)
    assert failed["result"] is False and failed["changes"] == {}
    assert failed["comment"].startswith("etcd's authentication: no etcd endpoint answered: ")
    assert CONFIG["etcd"]["urls"]["e1"] in failed["comment"]


def test_authentication_goes_on_only_once_every_patroni_runs_with_its_login(patronis):
    """A highstate runs the hosts at once: the bootstrap member's etcd.auth may come before
    another member's patroni state has given its Patroni the login, and a leader that etcd
    refuses demotes itself. So the state waits for every Patroni to say it has its login."""
    patronis.send_headers("postgres-srv2", {})
    seen_before_login = []

    def srv2_gets_its_login():
        seen_before_login.append(etcd_cluster.auth_enabled())
        patronis.send_headers("postgres-srv2", LOGIN)

    timer = threading.Timer(2.5, srv2_gets_its_login)
    timer.start()
    started = time.monotonic()
    done = auth_state.auth_managed("auth-test", wait=30)
    timer.join()
    assert seen_before_login == [False]
    assert done["result"] is True and done["changes"]["etcd"][-1] == "enable authentication"
    assert time.monotonic() - started >= 2.5
    assert etcd_cluster.auth_enabled() is True


def test_a_patroni_without_its_login_keeps_authentication_off_and_is_named(patronis,
                                                                           monkeypatch):
    patronis.send_headers("postgres-srv2", {})
    patronis.stop("postgres-srv3")
    monkeypatch.setitem(auth_state.__opts__, "test", True)
    dry = auth_state.auth_managed("auth-test")
    assert dry["result"] is None
    assert dry["changes"]["etcd"][-1] == ("enable authentication once every Patroni has its etcd "
                                          "login (not yet: postgres-srv2, postgres-srv3)")
    monkeypatch.setitem(auth_state.__opts__, "test", False)
    failed = auth_state.auth_managed("auth-test", wait=1)
    assert failed["result"] is False and failed["changes"] == {}
    assert "etcd's authentication stays off" in failed["comment"]
    assert "postgres-srv2: its Patroni runs without its etcd login" in failed["comment"]
    assert "postgres-srv3's Patroni REST API did not answer" in failed["comment"]
    assert etcd_cluster.auth_enabled() is False
    # Already on, authentication needs no login check: a member down changes nothing.
    etcd_cluster.auth_plan(apply=True)
    assert auth_state.auth_managed("auth-test", wait=1) == {
        "name": "auth-test", "changes": {}, "result": True,
        "comment": "etcd's users, roles and authentication are as pillar wants them"}
