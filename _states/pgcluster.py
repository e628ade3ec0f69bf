"""
Facts the cluster's pillar states about a host, checked on the host before anything is
configured from them.

.. code-block:: yaml

    host-has-its-pillar-address:
      pgcluster.has_address:
        - name: 10.0.0.11
        - key: pgcluster:members:postgres-srv1:address
        - failhard: true
"""

from __future__ import annotations

import ipaddress

__virtualname__ = "pgcluster"


def __virtual__():
    return __virtualname__


def has_address(name, key="the pillar"):
    """
    The host has address ``name`` on one of its interfaces (grains ``ipv4``). When it has not,
    the state fails naming the host's addresses and the pillar key, so a map and a pillar that
    disagree stop a deployment before any service is bound to an address the host lacks.
    It changes nothing, so test mode gives the same answer.
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    have = [a for a in __grains__.get("ipv4", []) if not ipaddress.ip_address(a).is_loopback]
    if name in have:
        ret["comment"] = f"{__grains__['id']} has {name} ({key})"
        return ret
    ret["result"] = False
    ret["comment"] = (f"{__grains__['id']} has {', '.join(have) or 'no IPv4 address but loopback'}, "
                      f"but {key} gives it {name}: make the map (its ip_address) and the pillar agree")
    return ret
