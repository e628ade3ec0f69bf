"""
Rolling maintenance of the running cluster (the orchestration orch.rolling_restart): every
member's PostgreSQL restarted through Patroni one at a time, the replicas first, each streaming
again before the next; then a switchover to a restarted replica, and the old leader last. The
writes stop for one switchover; the reads go on through the other replicas. With ``upgrade``,
each member's Debian packages are upgraded (``pkg.upgrade``) just before its restart, so
PostgreSQL restarts on its new minor release. With ``pending``, only members where a changed
parameter waits for a restart (Patroni's pending_restart) are restarted.

Refused, changing nothing, while the cluster is not healthy (a restart then could leave no
replica to fail over to).

.. code-block:: bash

    salt-run state.orchestrate orch.rolling_restart
    salt-run state.orchestrate orch.rolling_restart pillar='{"upgrade": true}'
"""

from __future__ import annotations

import logging
import time

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "pgcluster_rolling"

# How long a member may take to be back streaming after its restart (or its upgrade).
DEFAULT_WAIT = 300


def __virtual__():
    return __virtualname__


def _call(members, fun, args=(), kwarg=None):
    return __utils__["pgcluster_orch.call"](__opts__, members, fun, args, kwarg)


def _on_one(members, fun, args=(), kwarg=None):
    return __utils__["pgcluster_orch.on_one"](__opts__, members, fun, args, kwarg)


class _Rolling:
    def __init__(self, members, wait):
        self.members, self.wait = sorted(members), int(wait)
        self.done = []

    def ask(self, fun, args=(), kwarg=None, avoid=None):
        """A patroni module function on a member other than ``avoid`` (the one restarting),
        the next when one does not answer."""
        return _on_one([m for m in self.members if m != avoid], fun, args, kwarg)

    def listing(self):
        return {m["name"]: m for m in self.ask("patroni.list")["members"]}

    def healthy(self, why, avoid=None):
        try:
            self.ask("patroni.wait_healthy", kwarg={"timeout": self.wait}, avoid=avoid)
        except CommandExecutionError as exc:
            raise CommandExecutionError(f"{why}: {exc}") from None

    def restart(self, member, upgrade):
        started = time.monotonic()
        if upgrade:
            changed = _call([member], "pkg.upgrade", kwarg={"refresh": True})[member]
            self.done.append(f"{member}: {len(changed or {})} packages upgraded")
        outcome = self.ask("patroni.restart", [member], avoid=member)[member]
        if outcome["outcome"] != "ok":
            raise CommandExecutionError(f"restart of {member}: {outcome['message']}")
        self.healthy(f"after restarting {member}", avoid=member)
        self.done.append(f"{member}: restarted ({time.monotonic() - started:.0f} s)")


def restart(members, upgrade=False, pending=False, wait=DEFAULT_WAIT):
    """
    Restart every member's PostgreSQL one at a time, the leader last after a switchover (see
    the module's docstring). Returns the steps done; ``Error`` says why it was refused or where
    it stopped (the cluster is healthy at every step before it).

    CLI Example:

    .. code-block:: bash

        salt-run pgcluster_rolling.restart members='[postgres-srv1, postgres-srv2, postgres-srv3]'
    """
    rolling = _Rolling(members, wait)
    try:
        rolling.healthy("refused: the cluster is not healthy")
        rows = rolling.listing()
        leader = next((n for n, m in rows.items() if m["role"] == "Leader"), None)
        chosen = [n for n in rolling.members if not pending or rows[n]["pending_restart"]]
        for member in chosen:
            if member != leader:
                rolling.restart(member, upgrade)
        if leader in chosen:
            rolling.ask("patroni.switchover")
            rolling.healthy("after the switchover")
            new = next(n for n, m in rolling.listing().items() if m["role"] == "Leader")
            rolling.done.append(f"switched over from {leader} to {new}")
            rolling.restart(leader, upgrade)
    except CommandExecutionError as exc:
        log.error("pgcluster_rolling: %s", exc)
        return {"Error": f"rolling restart: {exc} (done before: {', '.join(rolling.done) or 'nothing'})"}
    if not rolling.done:
        return {"changed": False, "comment": "no member waits for a restart"}
    return {"changed": True, "steps": rolling.done}
