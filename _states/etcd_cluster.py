"""
etcd's authentication as ``pgcluster:etcd:auth`` wants it: a root user, a ``patroni`` user whose
role reads and writes the cluster's prefix only, a ``reader`` user that may only read it, each
with its generated password, and authentication on; or, with the switch off, authentication
off (``etcd_cluster.auth_plan`` does the work).

Run on one member once etcd is healthy (salt/etcd does it on the bootstrap member). Under
``test=True`` it lists what it would do; etcd is asked, nothing changes. Passwords never appear
in what it returns.

Patroni must never meet authentication it cannot pass: a Patroni leader that etcd refuses
demotes itself at once. So authentication goes on only once every member's running Patroni
says it has its login (``patroni.etcd_logins``); it waits, so a plain ``salt '*'
state.apply``, whose hosts run at once, keeps that order as the orchestration does. Patroni
keeps its login when authentication goes off (see pgcluster_render.patroni_etcd), so going off
needs no order.

.. code-block:: yaml

    etcd-auth:
      etcd_cluster.auth_managed:
        - name: pg-cluster-skynet
"""

from __future__ import annotations

import time

from salt.exceptions import CommandExecutionError

ENABLE_STEP = "enable authentication"
POLL_INTERVAL = 1.0
# Seconds either switch waits for the other hosts of a state.apply (their patroni or etcd state).
DEFAULT_WAIT = 300
# Seconds the state asks etcd again while none of its endpoints answers (etcd_cluster.auth_plan's
# wait): members that just formed the cluster may not answer within a call's 2 s while their
# hosts install their packages (seen in the lab: the deployment failed).
ANSWER_WAIT = 60

__virtualname__ = "etcd_cluster"


def __virtual__():
    if "etcd_cluster.auth_plan" not in __salt__:
        return False, "etcd_cluster: the execution module etcd_cluster is not synced"
    return __virtualname__


def _without_login():
    """{member: why} for each member whose running Patroni does not log in to etcd yet."""
    logins = __salt__["patroni.etcd_logins"](fresh=False)
    return {member: login.get("error") or "its Patroni runs without its etcd login"
            for member, login in logins.items() if not login.get("etcd_user")}


def _wait_for_logins(wait):
    """{} once every member's Patroni logs in to etcd, else who does not, after ``wait`` s."""
    deadline = time.monotonic() + wait
    while True:
        missing = _without_login()
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(POLL_INTERVAL)


def auth_managed(name, enable=True, wait=DEFAULT_WAIT, answer_wait=ANSWER_WAIT):
    """
    Users, roles and authentication in etcd as ``pgcluster:etcd:auth`` wants them, by this
    run's pillar (a ``pillar=`` override included).

    name
        A label for the state (the cluster's name).
    enable
        ``False``: the users and roles, and authentication off when the pillar wants it off,
        but not on: what runs before Patroni has its etcd login (salt/etcd). Turning it on
        comes after (salt/etcd/auth.sls), so a running cluster never meets authentication
        before its Patroni can log in.
    wait
        Seconds to wait, before turning authentication on, for every member's Patroni to run
        with its login (their patroni states give it, maybe at this moment on other hosts);
        past it authentication stays off and the state fails, naming them.
    answer_wait
        Seconds to ask etcd again while none of its endpoints answers (not in test mode, which
        says at once that etcd cannot tell); past it the state fails with their errors.
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    try:
        steps = __salt__["etcd_cluster.auth_plan"](
            apply=False, enable=enable, fresh=False, wait=0 if __opts__["test"] else answer_wait)
        if ENABLE_STEP in steps:
            missing = _without_login() if __opts__["test"] else _wait_for_logins(wait)
            if missing and not __opts__["test"]:
                ret.update(result=False, comment=(
                    f"etcd's authentication stays off: not every Patroni has its etcd login "
                    f"after {wait:g} s (each member's patroni state gives it): "
                    + "; ".join(f"{m}: {why}" for m, why in sorted(missing.items()))))
                return ret
            if missing:
                steps = [*steps[:-1], f"{ENABLE_STEP} once every Patroni has its etcd login "
                                      f"(not yet: {', '.join(sorted(missing))})"]
        if not __opts__["test"] and steps:
            steps = __salt__["etcd_cluster.auth_plan"](apply=True, enable=enable, fresh=False,
                                                        wait=answer_wait)
    except CommandExecutionError as exc:
        if __opts__["test"]:  # e.g. a new host: its etcd is not running yet
            ret.update(result=None, comment=f"etcd's authentication would be set up; etcd "
                                            f"cannot say what is missing now: {exc}")
        else:
            ret.update(result=False, comment=f"etcd's authentication: {exc}")
        return ret
    if not steps:
        ret["comment"] = ("etcd's users, roles and authentication are as pillar wants them" if enable
                          else "etcd's users and roles are as pillar wants them")
    elif __opts__["test"]:
        ret.update(result=None, comment="etcd would: " + "; ".join(steps),
                   changes={"etcd": steps})
    else:
        ret.update(comment="etcd: " + "; ".join(steps), changes={"etcd": steps})
    return ret

