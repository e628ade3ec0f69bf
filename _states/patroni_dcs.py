"""
Keep Patroni's cluster-wide configuration (kept in etcd) in line with the pillar.

Patroni only reads ``bootstrap.dcs`` once, when the cluster is made; afterwards a changed
parameter in pillar reaches the running cluster through this state, which sends Patroni the
difference (``PATCH /config``). Patroni then reloads PostgreSQL on every member; a parameter
that needs a restart shows as pending restart (``salt web patroni.restart all pending=True``).
Keys that are in etcd but not in the pillar are left alone.

.. code-block:: yaml

    patroni-dcs-config:
      patroni_dcs.managed:
        - config: {{ salt['pgcluster.dcs_config']() | json }}
"""

from __future__ import annotations

from salt.exceptions import CommandExecutionError

__virtualname__ = "patroni_dcs"


def __virtual__():
    return __virtualname__


def _same(want, have):
    # Patroni keeps values as it was given them: compare numbers and words as text.
    if isinstance(want, bool) or isinstance(have, bool):
        return want == have
    return str(want) == str(have)


def _difference(want, have):
    diff = {}
    for key, value in want.items():
        current = have.get(key) if isinstance(have, dict) else None
        if isinstance(value, dict):
            nested = _difference(value, current or {})
            if nested:
                diff[key] = nested
        elif current is None or not _same(value, current):
            diff[key] = value
    return diff


def managed(name, config):
    """
    Make Patroni's dynamic configuration hold ``config`` (a subset is enough).

    name
        A label for the state.
    config
        The wanted cluster-wide configuration, as ``pgcluster.dcs_config`` gives it.
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    try:
        current = __salt__["patroni.dynamic_config"](fresh=False)
    except CommandExecutionError as exc:
        # Right after a bootstrap Patroni answers 502 until its configuration is in etcd.
        ret["result"] = False
        ret["comment"] = f"cannot read Patroni's configuration: {exc}"
        return ret
    diff = _difference(config, current)
    if not diff:
        ret["comment"] = "Patroni's cluster-wide configuration is as the pillar says"
        return ret
    ret["changes"] = {"patroni_dynamic_config": diff}
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = "Patroni's cluster-wide configuration would be changed"
        return ret
    __salt__["patroni.patch_config"](diff, fresh=False)
    ret["comment"] = ("Patroni's cluster-wide configuration was changed; it reloads PostgreSQL, "
                      "and parameters that need a restart show as pending restart")
    return ret
