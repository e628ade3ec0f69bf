"""
etcd's TLS (``pgcluster:etcd:tls``) switched on or off under a running cluster, one member at
a time, with Patroni in maintenance mode; the orchestration orch.cluster runs it before its
members-base step (each member's etcd state), and it changes nothing when every member
already runs as the pillar says.

etcd keeps each member's peer URL, and so its scheme, in its own data, and a member's clients
and peers must use the scheme it listens with; Patroni reads etcd's endpoints and CA only when
it starts. So the order is:

- on: every member restarts with its plain listeners and the certificates that let it reach
  peers already on TLS (the "bridge" stage); then, one member at a time, its peer URL moves to
  https in etcd's member list and it restarts with TLS; before the last, every Patroni restarts
  (paused, so PostgreSQL keeps running) with the https endpoints: it reaches the members that
  have moved, and found the others in etcd's member list until then;
- off: the same backwards, each member to the bridge stage, Patroni before the last, then every
  member restarts once more without the certificates.

Every step waits until every member is healthy again. etcd keeps its quorum throughout (one
member restarts at a time); PostgreSQL is not restarted, and Patroni's own restart costs the
writes the time HAProxy takes to see the leader's REST API back. When a step fails, the
cluster leaves maintenance mode (unless it was paused before) and the error names the step;
the next run goes on from where this one stopped.

.. code-block:: bash

    salt-run pgcluster_etcd.tls_switch members='[postgres-srv1, postgres-srv2, postgres-srv3]'
"""

from __future__ import annotations

import logging
import time

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "pgcluster_etcd"

# How long one member's step may take: its etcd's restart and the cluster healthy again, or a
# Patroni reaching etcd after its restart.
DEFAULT_WAIT = 180


def __virtual__():
    return __virtualname__


def _call(members, fun, args=(), kwarg=None):
    return __utils__["pgcluster_orch.call"](__opts__, members, fun, args, kwarg)


def _state(members, mods, pillar, state_id=None):
    __utils__["pgcluster_orch.state"](__opts__, members, mods, pillar, state_id)


class _Switch:
    def __init__(self, members, pillar, wait):
        self.members, self.pillar, self.wait = members, pillar or {}, wait
        # How Patroni's REST API is reached, and what its config keeps: as it runs now. The
        # switch changes only etcd's settings; a REST API switch is the patroni step's.
        self.patroni_pillar = self.pillar
        self.serves = {}  # {member: the scheme its etcd should serve clients now}
        self.done = []

    def health(self):
        return _call(self.members[:1], "etcd_cluster.tls_switch_health",
                     kwarg={"pillar": self.pillar})[self.members[0]]

    def wait_healthy(self, why, all_peers=True):
        """Every member healthy, serving its clients as ``self.serves`` says, and, with
        ``all_peers``, connected with every peer (a member that cannot dial its peers is still
        healthy for a while). Before the first step it need not be: a switch that stopped
        midway may have left a member so, and going on mends it."""
        deadline = time.monotonic() + self.wait
        peers = len(self.members) - 1
        while True:
            report = self.health()
            wrong = {name: entry for name, entry in report.items()
                     if not entry["healthy"] or entry["serves"] != self.serves[name]
                     or (all_peers and entry["peers"] != peers)}
            if not wrong:
                return
            if time.monotonic() > deadline:
                raise CommandExecutionError(f"{why}: etcd not healthy after {self.wait} s: " + "; ".join(
                    f"{name} serves {e['serves']} (wanted {self.serves[name]}), connected with "
                    f"{e['peers']} of {peers} peers: {' '.join(e['errors']) or 'no error'}"
                    for name, e in wrong.items()))
            time.sleep(1)

    def stage(self, member, stage):
        """``member``'s etcd restarted as ``stage`` (tls, bridge, plain), the cluster healthy."""
        _state([member], "etcd.member", {**self.pillar, "etcd_tls_stage": stage})
        self.serves[member] = "https" if stage == "tls" else "http"
        self.wait_healthy(f"{member} to {stage}")
        self.done.append(f"{member}: etcd {stage}")

    def move(self, member, stage):
        """``member``'s peer URL to the scheme of ``stage`` in etcd's member list, then its etcd
        restarted as ``stage``: until it has, its peers cannot reach it (one member, not the
        quorum)."""
        scheme = "https" if stage == "tls" else "http"
        _call([member], "etcd_cluster.peer_scheme_set", [scheme], {"pillar": self.pillar})
        self.stage(member, stage)

    def restart_patroni(self):
        """Every Patroni restarted with the pillar's etcd endpoints, the leader last: its REST
        API is away for a moment, and HAProxy with it."""
        _state(self.members, "patroni", {**self.patroni_pillar, "etcd_tls_switch": True},
               state_id="patroni-config")
        listing = self.patroni("patroni.list")
        leaders = [m["name"] for m in listing["members"] if m["role"] == "Leader"]
        for member in sorted(self.members, key=lambda m: (m in leaders, m)):
            _call([member], "patroni.daemon_restarted", kwarg={"wait": self.wait})
            self.done.append(f"{member}: Patroni restarted")

    def patroni(self, fun):
        """A patroni module function, reaching the REST API as it runs."""
        return _call(self.members[:1], fun, kwarg={"pillar": self.patroni_pillar})[self.members[0]]

    def run(self, running, wanted):
        """The steps from ``running`` ({member: stage}) to ``wanted`` (tls or plain)."""
        self.serves = {m: "https" if s == "tls" else "http" for m, s in running.items()}
        self.wait_healthy("before the switch", all_peers=False)
        if wanted == "tls":
            for member in self.members:
                if running[member] == "plain":
                    self.stage(member, "bridge")
            moving = [m for m in self.members if running[m] != "tls"]
            for member in moving:
                if member == moving[-1]:
                    self.restart_patroni()
                self.move(member, "tls")
        else:
            moving = [m for m in self.members if running[m] == "tls"]
            for member in moving:
                if member == moving[-1]:
                    self.restart_patroni()
                self.move(member, "bridge")
            for member in self.members:
                self.stage(member, "plain")


def _refusal(switch, running):
    """Why the switch must not start (a member new to etcd, a Patroni not running, or REST APIs
    that disagree on TLS), else None; and the Patroni listing. Sets how Patroni is reached."""
    members = switch.members
    if None in running.values():
        new = sorted(m for m, s in running.items() if s is None)
        return (f"{', '.join(new)} have no etcd data yet while the others run {running}: switch "
                "the running members first, then add members"), None
    schemes = _call(members, "patroni.rest_scheme")
    if None in schemes.values() or len(set(schemes.values())) > 1:
        return (f"Patroni's REST API answers {schemes} (None: not at all): the switch restarts "
                "Patroni on every member in turn; bring every member's Patroni up on one scheme "
                "first (salt <member> service.reload patroni takes its config's)"), None
    rest_tls = set(schemes.values()).pop() == "https"
    switch.patroni_pillar = __utils__["pgcluster_orch.merged"](
        switch.pillar, {"pgcluster": {"patroni": {"tls": rest_tls}}})
    listing = switch.patroni("patroni.list")
    down = [m["name"] for m in listing["members"] if m["state"] not in ("running", "streaming")]
    if down:
        return (f"refused while Patroni is not running on {', '.join(down)}: the switch restarts "
                "etcd and Patroni on every member in turn"), listing
    return None, listing


def tls_switch(members, pillar=None, wait=DEFAULT_WAIT):
    """
    Bring etcd's TLS on every member to what the pillar (``pillar``: an override over it, as
    ``bin/deploy --pillar`` gives) says, under a running cluster (see the module's docstring);
    nothing when it is there. Refused, changing nothing, while a member is new to etcd or its
    Patroni is not running. Returns the steps done; on failure, ``Error`` names the step that
    failed and the steps done before it.

    CLI Example:

    .. code-block:: bash

        salt-run pgcluster_etcd.tls_switch members='[postgres-srv1, postgres-srv2, postgres-srv3]'
    """
    members = sorted(members)
    switch = _Switch(members, pillar, int(wait))
    paused = True
    try:
        stages = _call(members, "etcd_cluster.tls_stage", kwarg={"pillar": switch.pillar})
        wanted = {s["wanted"] for s in stages.values()}.pop()
        running = {m: s["running"] for m, s in stages.items()}
        if not any(s["pending"] for s in stages.values()):
            return {"switched": False, "comment": f"etcd runs {wanted} wherever it runs"}
        refusal, listing = _refusal(switch, running)
        if refusal:
            return {"Error": f"etcd's TLS: {refusal}"}
        paused = listing["paused"]
        if not paused:
            switch.patroni("patroni.pause")
        switch.run(running, wanted)
    except CommandExecutionError as exc:
        log.error("etcd's TLS switch failed: %s", exc)
        return {"Error": f"etcd's TLS: {exc} (done before: {', '.join(switch.done) or 'nothing'})"}
    finally:
        if not paused:
            # Out of maintenance mode, whatever happened: a paused cluster does not fail over.
            switch.patroni("patroni.resume")
    return {"switched": True, "to": wanted, "steps": switch.done}
