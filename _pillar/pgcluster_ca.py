"""
The certificate of the cluster's CA, for the cluster's hosts, with their pillar: the state
``pgcluster_tls.ca_managed`` then writes it without asking the master's CA runner, which every
state run of every host did before (a runner job and a pillar compile on the master each: 16 per
deployment, about half a second apiece on the path of each step).

Only the master's own CA, once made (``ca.crt`` in the store of ``_runners/pgcluster_ca.py``,
``pillar/generated/pki`` by default): a host that finds nothing here (a first deployment before
any host asked, or a CA of the user's, ``pgcluster:tls:ca``, which the runner checks) asks the
runner as before. A certificate is public; the CA's key never leaves the store.

.. code-block:: yaml

    # master configuration
    ext_pillar:
      - pgcluster_ca: {}
"""

from __future__ import annotations

import os

__virtualname__ = "pgcluster_ca"


def __virtual__():
    return __virtualname__


def ext_pillar(minion_id, pillar):
    """``pgcluster_tls_ca``: the CA's certificate (PEM) for a host of the cluster, when the
    master has made its CA and the pillar names no CA of the user's."""
    cluster = pillar.get("pgcluster")
    if not isinstance(cluster, dict):
        return {}
    hosts = [name for section in ("members", "web")
             if isinstance(cluster.get(section), dict) for name in cluster[section]]
    tls = cluster.get("tls") if isinstance(cluster.get("tls"), dict) else {}
    if minion_id not in hosts or tls.get("ca"):
        return {}
    path = os.path.join(__utils__["pgcluster_x509.ca_store"](__opts__), "ca.crt")
    try:
        with open(path) as fh:
            return {"pgcluster_tls_ca": fh.read()}
    except FileNotFoundError:
        return {}
