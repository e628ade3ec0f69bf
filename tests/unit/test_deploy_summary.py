"""bin/deploy's summary of an orchestration's steps: a runner's step (orch.cluster's
etcd-tls-switch) says what the runner did, and its error shows as the step's failure, as
Salt's salt.runner state returns them (salt/states/saltmod.py)."""

from __future__ import annotations

import importlib.machinery
import importlib.util

from tests.conftest import REPO

_loader = importlib.machinery.SourceFileLoader("deploy", str(REPO / "bin" / "deploy"))
deploy = importlib.util.module_from_spec(importlib.util.spec_from_loader("deploy", _loader))
_loader.exec_module(deploy)


def _runner_step(result: bool, runner_return: dict, run_num: int = 3) -> dict:
    return {"name": "pgcluster_etcd.tls_switch", "changes": {"return": runner_return},
            "result": result, "__run_num__": run_num, "duration": 961.2,
            "comment": f"Runner function 'pgcluster_etcd.tls_switch' "
                       f"{'executed' if result else 'failed'}.", "__id__": "etcd-tls-switch"}


def test_a_runners_step_says_what_it_did():
    steps = {"a": _runner_step(True, {"switched": True, "to": "tls", "steps": ["x"] * 9})}
    lines, failures = deploy.summarize(steps)
    assert "etcd-tls-switch    ok" in lines[0] and lines[0].endswith("9 steps to tls")
    assert failures == []
    steps = {"a": _runner_step(True, {"switched": False, "comment": "etcd runs tls wherever it runs"})}
    assert deploy.summarize(steps)[0][0].endswith("etcd runs tls wherever it runs")


def test_a_runners_error_is_the_steps_failure_and_the_next_step_did_not_run():
    error = "etcd's TLS: refused while Patroni is not running on postgres-srv2: ..."
    steps = {"a": _runner_step(False, {"Error": error}),
             "b": {"name": "etcd", "changes": {}, "result": False, "__run_num__": 4,
                   "comment": "One or more requisite failed: orch.cluster.etcd-tls-switch",
                   "__id__": "etcd", "duration": 0.1}}
    lines, failures = deploy.summarize(steps)
    assert "etcd-tls-switch    FAILED" in lines[0] and "etcd               not run" in lines[1]
    assert failures == [f"master (etcd-tls-switch): {error}"]


def test_a_membership_step_lists_what_it_did_and_the_models_warnings():
    steps = {"a": {**_runner_step(True, {
        "changed": True, "steps": ["postgres-srv4: into etcd", "postgres-srv4: etcd running with 3 peers"],
        "warnings": ["pgcluster:members: 4 members, an even number: ..."]}), "__id__": "members-join"}}
    lines, failures = deploy.summarize(steps)
    assert lines[0].endswith("postgres-srv4: into etcd; postgres-srv4: etcd running with 3 peers")
    assert lines[1].strip() == "warning: pgcluster:members: 4 members, an even number: ..."
    assert failures == []


def test_a_minion_that_gave_no_result_is_named_with_why():
    """Salt marks a minion that did not answer an orchestration's state step with False (seen
    after a host was cut off and healed): the summary says so, not "postgres-srv3 (): False"."""
    steps = {"a": {"name": "patroni", "result": False, "__run_num__": 1, "duration": 2000.0,
                   "__id__": "patroni-others",
                   "comment": "Run failed on minions: postgres-srv3\nMinion postgres-srv3 did "
                              "not return a state result.",
                   "changes": {"ret": {"postgres-srv3": False}}}}
    lines, failures = deploy.summarize(steps)
    assert "patroni-others     FAILED" in lines[0]
    assert failures == ["postgres-srv3: its salt-minion did not answer (a host booting, cut off, "
                        "or its minion not connected: salt HOST test.ping), so nothing was "
                        "applied there"]


def test_steps_that_ran_at_the_same_time_say_so():
    """orch.cluster's parallel steps: their seconds add up to more than the deployment took,
    so each says which ran beside it; one after another say nothing."""
    def step(name, run_num, start, seconds):
        return {"__id__": name, "name": name, "result": True, "__run_num__": run_num,
                "start_time": start, "duration": seconds * 1000, "comment": "",
                "changes": {"ret": {"web": {}}}}
    steps = {"a": step("web-services", 1, "10:00:01.000", 30),
             "b": step("members-base", 2, "10:00:01.010", 60),
             "c": step("patroni-first", 3, "10:01:01.020", 6)}
    lines, _ = deploy.summarize(steps)
    assert lines[0].endswith("(beside members-base)") and lines[1].endswith("(beside web-services)")
    assert "beside" not in lines[2]
    # Salt gives the time of day only: a deployment that runs past midnight reads the same.
    steps = {"a": step("monitoring", 1, "23:59:50.000", 30),
             "b": step("backup-repository", 2, "00:00:05.000", 20),
             "c": step("patroni-first", 3, "00:00:31.020", 6)}
    lines, _ = deploy.summarize(steps)
    assert lines[0].endswith("(beside backup-repository)")
    assert lines[1].endswith("(beside monitoring)")
    assert "beside" not in lines[2]


def test_a_runner_that_raised_is_the_steps_failure_with_its_last_line():
    """Salt returns a runner's exception as its traceback's text (seen: members-leave's
    KeyError), which read as "not run" with no failure at all."""
    traceback = ("Exception occurred in runner pgcluster_members.leave: Traceback (most recent "
                 "call last):\n  File \"_runners/pgcluster_members.py\", line 118, in plan\n"
                 "KeyError: 'postgres-srv4'\n")
    steps = {"a": {**_runner_step(False, {}), "name": "pgcluster_members.leave",
                   "__id__": "members-leave", "changes": {"return": traceback},
                   "comment": "Runner function 'pgcluster_members.leave' failed."}}
    lines, failures = deploy.summarize(steps)
    assert "members-leave      FAILED" in lines[0]
    assert failures == ["master (members-leave): the runner pgcluster_members.leave raised "
                        "KeyError: 'postgres-srv4'"]
