"""
etcd's authentication as ``pgcluster:etcd:auth`` wants it: a root user, a ``patroni`` user whose
role reads and writes the cluster's prefix only, a ``reader`` user that may only read it, each
with its generated password, and authentication on; or, with the switch off, authentication
off (``etcd_cluster.auth_plan`` does the work).

Run on one member once etcd is healthy (salt/etcd does it on the bootstrap member). Under
``test=True`` it lists what it would do; etcd is asked, nothing changes. Passwords never appear
in what it returns.

.. code-block:: yaml

    etcd-auth:
      etcd_cluster.auth_managed:
        - name: pg-cluster-skynet
"""

from __future__ import annotations

from salt.exceptions import CommandExecutionError

__virtualname__ = "etcd_cluster"


def __virtual__():
    if "etcd_cluster.auth_plan" not in __salt__:
        return False, "etcd_cluster: the execution module etcd_cluster is not synced"
    return __virtualname__


def auth_managed(name, enable=True):
    """
    Users, roles and authentication in etcd as ``pgcluster:etcd:auth`` wants them, by this
    run's pillar (a ``pillar=`` override included).

    name
        A label for the state (the cluster's name).
    enable
        ``False``: the users and roles, and authentication off when the pillar wants it off,
        but not on: what runs before Patroni has its etcd login (salt/etcd). Turning it on
        comes after (salt/etcd/auth.sls), so a running cluster never meets authentication
        before its Patroni can log in, and leaves it only after Patroni stops logging in.
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    try:
        steps = __salt__["etcd_cluster.auth_plan"](apply=not __opts__["test"], enable=enable,
                                                   fresh=False)
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
