"""
The cluster's members as the pillar lists them (``pgcluster:members``): bin/deploy (the
orchestration orch.cluster) converges etcd's and Patroni's members to that list, one member at
a time, under the running cluster.

- ``leave``, before the hosts' firewalls follow the pillar: a member taken out of pillar is
  switched away from when it leads, its Patroni stopped (its PostgreSQL with it) until Patroni
  no longer lists it, then removed from etcd's member list; its etcd, PgBouncer and
  pgBackRest's server stopped and disabled, and its etcd data moved aside, so that the host can
  be deleted (``salt-cloud -d``) or come back later as a new member.
- ``join``, before the members-base step (etcd's state): a member new to the pillar is added
  to etcd's member list (``member add``) and its etcd started as a member of the running
  cluster; a member whose host was made again with the same name (etcd lists it, its host has
  no etcd data) is removed and added the same way. Patroni then clones it in the patroni
  step (from the backup repository when there is one), and the later steps put it in every
  host's firewall, pg_hba and HAProxy; no running member's PostgreSQL restarts.

Refused, before anything changes: more than one member changed at a time (etcd keeps its quorum
through one change, and a member that is not yet running counts in the quorum), or a change
while another member's etcd is unhealthy. On a new cluster (no etcd answers) both do nothing.

.. code-block:: bash

    salt-run pgcluster_members.plan members='[postgres-srv1, postgres-srv2, postgres-srv3]'
"""

from __future__ import annotations

import logging
import time

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "pgcluster_members"

# How long a member's etcd may take to be healthy with every peer, or Patroni to forget a
# stopped member (its key lives a ttl) or to switch over.
DEFAULT_WAIT = 180


def __virtual__():
    return __virtualname__


def _call(members, fun, args=(), kwarg=None):
    return __utils__["pgcluster_orch.call"](__opts__, members, fun, args, kwarg)


def _on_one(members, fun, args=(), kwarg=None):
    return __utils__["pgcluster_orch.on_one"](__opts__, members, fun, args, kwarg)


def _address(peer_urls):
    """The host of an etcd peer URL (``https://10.0.0.14:2380``)."""
    return peer_urls[0].split("://", 1)[-1].rsplit(":", 1)[0] if peer_urls else None


def changes(wanted, listed, has_data):
    """
    What converging etcd's members to the pillar's would do: ``leave`` (listed, not wanted),
    ``join`` (wanted, not listed, or added but never started) and ``replace`` (listed, has run,
    but its host has no etcd data: the host was made again), each a sorted list of names; and
    ``refusal``, why not (more than one change), or None. A member of a new cluster's initial
    list that never ran (no client URLs yet) is left to the members-base step, which starts it.

    ``wanted``: {pillar member: address}; ``listed``: etcd's member list (``name``,
    ``status``, ``peer_urls``, ``client_urls``); ``has_data``: {pillar member: whether its host
    has etcd data}.
    """
    addresses = {_address(row["peer_urls"]): row for row in listed}
    leave = sorted(row["name"] or _address(row["peer_urls"]) for row in listed
                   if _address(row["peer_urls"]) not in wanted.values())
    join, replace = [], []
    for name, address in sorted(wanted.items()):
        row = addresses.get(address)
        if row is None or row["status"] == "unstarted":
            join.append(name)
        elif has_data.get(name) is False and row.get("client_urls"):
            replace.append(name)
    changed = [*(f"removes {n}" for n in leave), *(f"adds {n}" for n in join),
               *(f"makes {n} again" for n in replace)]
    refusal = None
    if len(changed) > 1:
        refusal = (f"the pillar {', '.join(changed)} at once: etcd keeps its quorum through one "
                   "member changed at a time; change one, run bin/deploy, then the next")
    return {"leave": leave, "join": join, "replace": replace, "refusal": refusal}


def unlinked(report, members):
    """{member: the others of ``members`` it has no live raft link with}, from each member's
    ``linked`` in ``report`` (etcd_cluster.tls_switch_health). A link counts as live when
    either end has it up: a member that sent a message to a peer just before the peer crashed
    may see that send fail only once the peer is back, and then counts the peer down until a
    link is made again, although both links work and the peer counts it up; a link truly
    down is down at both ends."""
    return {m: [n for n in members if n != m and n not in report[m]["linked"]
                and m not in report[n]["linked"]] for m in members}


class _Members:
    """The live cluster's members and what the pillar wants of them."""

    def __init__(self, members, pillar, wait):
        self.members, self.pillar, self.wait = sorted(members), pillar or {}, int(wait)
        self.done = []
        self.model = _on_one(self.members, "pgcluster.config", kwarg={"pillar": self.pillar})

    def listed(self):
        """etcd's member list, or None when no member's etcd answers (a new cluster)."""
        try:
            return _on_one(self.members, "etcd_cluster.members")
        except CommandExecutionError as exc:
            log.info("pgcluster_members: no etcd member list: %s", exc)
            return None

    def has_data(self):
        """{member: whether its host has etcd data}; None for a host that does not answer."""
        data = f"{self.model['etcd']['data_dir']}/member"
        hosts = __utils__["pgcluster_orch.answering"](__opts__, self.members)
        found = _call(hosts, "file.directory_exists", [data]) if hosts else {}
        return {m: found.get(m) for m in self.members}

    def plan(self):
        listed = self.listed()
        if listed is None:
            return None, {"leave": [], "join": [], "replace": [], "refusal": None}
        wanted = {n: self.model["members"][n]["address"] for n in self.members}
        return listed, changes(wanted, listed, self.has_data())

    def etcd_healthy(self, why, members, linked=False):
        """Until each of ``members`` is healthy in etcd and, with ``linked``, has a live link
        with each other one of them (see ``unlinked``)."""
        deadline = time.monotonic() + self.wait
        while True:
            report = _on_one(self.members, "etcd_cluster.tls_switch_health",
                             kwarg={"pillar": self.pillar})
            missing = unlinked(report, members) if linked else {}
            wrong = [m for m in members if not report[m]["healthy"] or missing.get(m)]
            if not wrong:
                return
            if time.monotonic() > deadline:
                raise CommandExecutionError(f"{why}: etcd not healthy after {self.wait} s: " + "; ".join(
                    f"{m}: " + (f"no live link with {', '.join(missing[m])}" if missing.get(m)
                                else ' '.join(report[m]["errors"]) or "not healthy")
                    for m in wrong))
            time.sleep(1)

    def patroni_rows(self, pillar):
        listing = _on_one(self.members, "patroni.list", kwarg={"pillar": pillar})
        return {m["name"]: m for m in listing["members"]}

    def leave(self, name, address):
        """``name`` out of Patroni and etcd; its services stopped (when its host answers)."""
        others = [m for m in self.members if m != name]
        self.etcd_healthy(f"before {name} leaves", others)
        # Patroni reached with the leaving member as it still runs.
        with_it = __utils__["pgcluster_orch.merged"](
            self.pillar, {"pgcluster": {"members": {name: {"address": address}}}})
        host = __utils__["pgcluster_orch.answering"](__opts__, [name])
        rows = self.patroni_rows(with_it)
        if rows.get(name, {}).get("role") == "Leader":
            _on_one(others, "patroni.switchover", kwarg={"pillar": with_it})
            self.done.append(f"{name}: switched over from")
        if host:
            self.stop(name, [self.model["patroni"]["service"]])
        deadline = time.monotonic() + self.wait
        while name in self.patroni_rows(self.pillar):
            if time.monotonic() > deadline:
                raise CommandExecutionError(f"Patroni still lists {name} after {self.wait} s")
            time.sleep(2)
        _on_one(others, "etcd_cluster.member_remove", [name], {"pillar": self.pillar})
        self.done.append(f"{name}: out of etcd")
        if host:
            self.stop(name, self.services_after_etcd())
            self.move_data_aside(name)
        else:
            self.done.append(f"{name}: its host does not answer; nothing stopped there")

    def services_after_etcd(self):
        """What a leaving member still runs once out of etcd (PostgreSQL stopped with Patroni)."""
        m = self.model
        services = [m["etcd"]["leader_off_primary_service"], m["etcd"]["service"]]
        services += [m[c]["service"] for c in ("pgbouncer", "pgbackrest") if m[c]["enabled"]]
        return services

    def stop(self, host, services):
        for service in services:
            _call([host], "service.disable", [service])
            _call([host], "service.stop", [service])
        self.done.append(f"{host}: {', '.join(services)} stopped and disabled")

    def move_data_aside(self, host):
        """The host's etcd data renamed: a member removed from etcd can never use it again, and
        with it the host could not join as a new member."""
        data = self.model["etcd"]["data_dir"]
        if _call([host], "file.directory_exists", [data])[host]:
            aside = f"{data}.removed-{time.strftime('%Y%m%d%H%M%S')}"
            _call([host], "file.rename", [data, aside])
            self.done.append(f"{host}: etcd data moved to {aside}")

    def join(self, name, replace):
        """``name`` (made again when ``replace``) into etcd, its etcd started and connected."""
        others = [m for m in self.members if m != name]
        # etcd takes a member only when the member asked has had a live link with every other
        # for 5 s: the others linked with each other first (a link down shows here, named).
        self.etcd_healthy(f"before {name} joins", others, linked=True)
        if replace:
            _on_one(others, "etcd_cluster.member_remove", [name], {"pillar": self.pillar})
            self.done.append(f"{name}: its old member out of etcd")
        elif _call([name], "file.directory_exists", [self.model["etcd"]["data_dir"]])[name]:
            self.stop(name, [self.model["etcd"]["service"]])
            self.move_data_aside(name)
        added = _on_one(others, "etcd_cluster.member_add", [name], {"pillar": self.pillar})
        self.done.append(f"{name}: into etcd")
        __utils__["pgcluster_orch.state"](__opts__, [name], "etcd.member", {
            **self.pillar, "etcd_join": {"initial_cluster": added["initial_cluster"]}})
        self.etcd_healthy(f"{name} joining", self.members, linked=True)
        self.done.append(f"{name}: etcd running with {len(others)} peers")


def plan(members, pillar=None):
    """
    What ``leave`` and ``join`` would do now, changing nothing: ``leave``, ``join`` and
    ``replace`` (lists of names), ``refusal`` (or None), ``warnings`` (the model's), and
    ``new_cluster`` when no etcd answers.

    CLI Example:

    .. code-block:: bash

        salt-run pgcluster_members.plan members='[postgres-srv1, postgres-srv2, postgres-srv3]'
    """
    state = _Members(members, pillar, DEFAULT_WAIT)
    listed, change = state.plan()
    return {**change, "new_cluster": listed is None, "warnings": state.model["warnings"]}


def _run(step, members, pillar, wait, warn=False):
    done = []
    try:
        state = _Members(members, pillar, wait)
        done = state.done
        listed, change = state.plan()
        if change["refusal"]:
            return {"Error": f"members: {change['refusal']}"}
        step(state, listed, change)
    except CommandExecutionError as exc:
        log.error("pgcluster_members: %s", exc)
        return {"Error": f"members: {exc} (done before: {', '.join(done) or 'nothing'})"}
    result = ({"changed": True, "steps": done} if done
              else {"changed": False, "comment": "etcd's members are the pillar's"})
    return {**result, "warnings": state.model["warnings"]} if warn else result


def leave(members, pillar=None, wait=DEFAULT_WAIT):
    """
    Take out of Patroni and etcd the member etcd lists and the pillar does not (see the
    module's docstring); nothing when there is none. Returns the steps done; ``Error`` says why
    it was refused or where it failed.

    CLI Example:

    .. code-block:: bash

        salt-run pgcluster_members.leave members='[postgres-srv1, postgres-srv2, postgres-srv3]'
    """
    def step(state, listed, change):
        for name in change["leave"]:
            row = next(r for r in listed if (r["name"] or _address(r["peer_urls"])) == name)
            state.leave(name, _address(row["peer_urls"]))

    return _run(step, members, pillar, wait)


def join(members, pillar=None, wait=DEFAULT_WAIT):
    """
    Bring into etcd the member the pillar lists and etcd does not, or whose host was made again
    (see the module's docstring); nothing when there is none. Returns the steps done; ``Error``
    says why it was refused or where it failed.

    CLI Example:

    .. code-block:: bash

        salt-run pgcluster_members.join members='[postgres-srv1, postgres-srv2, postgres-srv3, postgres-srv4]'
    """
    def step(state, listed, change):
        if change["leave"]:
            raise CommandExecutionError(f"etcd still lists {', '.join(change['leave'])}, which "
                                        "the pillar does not: pgcluster_members.leave first")
        for name in change["join"]:
            state.join(name, replace=False)
        for name in change["replace"]:
            state.join(name, replace=True)

    return _run(step, members, pillar, wait, warn=True)
