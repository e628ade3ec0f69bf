"""
Every component's defaults (``salt/<component>/defaults.yaml`` in the master's state tree), as
pillar ``pgcluster_defaults: {component: its defaults}``.

The cluster model (``pgcluster.config`` on the minion) merges the ``pgcluster`` pillar over
them and checks the result; bringing them with the pillar costs the minion no request to the
fileserver, so an operator's ``salt web patroni.list`` is as quick as the call itself.

.. code-block:: yaml

    # master (and a masterless minion) configuration
    ext_pillar:
      - pgcluster_defaults: {}
"""

from __future__ import annotations

import glob
import os

import salt.utils.yaml

__virtualname__ = "pgcluster_defaults"


def __virtual__():
    return __virtualname__


def ext_pillar(minion_id, pillar, saltenv="base"):
    """The defaults.yaml of every component folder of the state tree's ``saltenv``."""
    defaults = {}
    for root in __opts__.get("file_roots", {}).get(saltenv, []):
        for path in sorted(glob.glob(os.path.join(root, "*", "defaults.yaml"))):
            component = os.path.basename(os.path.dirname(path))
            if component in defaults:
                continue  # the first root that has it wins, as for the fileserver
            with open(path) as fh:
                defaults[component] = salt.utils.yaml.safe_load(fh) or {}
    return {"pgcluster_defaults": defaults}
