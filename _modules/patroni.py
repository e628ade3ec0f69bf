"""
Patroni, seen and steered through its REST API from any minion that can reach the members.

The members and the REST API credentials come from pillar (``pgcluster``,
``pgcluster_credentials:restapi``), so ``salt web patroni.list`` works from the web host:
no ssh to a database host.

With ``pgcluster:patroni:tls`` the REST API is HTTPS: each member's certificate must be from
the cluster's CA (``pgcluster:tls``, its certificate on every host) and name its address.

Every member is asked at once (one thread each), so a member that does not answer costs one
``timeout`` (default 2 s) per call, not one per member; it then shows as such, with the error,
which names the member and the URL. Every wait is bounded: each function's docstring says how.

CLI Example:

.. code-block:: bash

    salt web patroni.list
    salt web patroni.switchover candidate=postgres-srv2
"""

from __future__ import annotations

import base64
import functools
import http.client
import json
import logging
import ssl
import time
import urllib.error
import urllib.request

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "patroni"
__func_alias__ = {"list_": "list"}
__outputter__ = {"list_": "patroni_list"}

DEFAULT_TIMEOUT = 2.0
# Actions wait longer than a probe: Patroni answers a switchover or failover once it is done
# (it polls for up to 20 s), a restart once PostgreSQL is up again.
SWITCHOVER_TIMEOUT = 30.0
RESTART_TIMEOUT = 60.0
CONFIG_TIMEOUT = 10.0

# patronictl's names for Patroni's roles, in patroni.list and patroni.health alike.
ROLE_NAMES = {
    "leader": "Leader",
    "master": "Leader",
    "primary": "Leader",
    "standby_leader": "Standby Leader",
    "sync_standby": "Sync Standby",
    "quorum_standby": "Quorum Standby",
    "replica": "Replica",
}
RUNNING_STATES = ("running", "streaming")
# What a member's Patroni names its etcd user with on every answer (pgcluster_render's
# PATRONI_ETCD_USER_HEADER, set in its config with pgcluster:etcd:auth).
ETCD_USER_HEADER = "X-Pgcluster-Etcd-User"


def __virtual__():
    if "pgcluster_rounds.at_once" not in __utils__:
        return (False, f"{__virtualname__}: the utils module pgcluster_rounds is not synced "
                       "(salt '*' saltutil.sync_all)")
    return __virtualname__


class _Answer:
    def __init__(self, status, body, headers=None):
        self.status = status
        self.body = body
        self.headers = headers or {}

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None


class _NoAnswer(CommandExecutionError):
    """A member's REST API did not answer: refused, timed out, closed, or not HTTP."""


def _cluster_config(fresh=True, pillar=None):
    # The master's pillar as it is now, not the minion's copy (a fixed mistake must not linger);
    # a state passes fresh=False to act on its run's pillar, override included; ``pillar``: an
    # override over the master's.
    if pillar:
        return __salt__["pgcluster.config"](fresh=True, pillar=pillar)
    return __salt__["pgcluster.config"](fresh=fresh)


def _members(fresh=True, pillar=None):
    """{member: its REST API's URL}; also prepares the TLS context the requests use (_tls)."""
    cfg = _cluster_config(fresh, pillar)
    __context__["patroni.tls"] = _tls_context(cfg)
    return dict(cfg["patroni"]["urls"])


def _tls():
    # Read here, in the caller's thread, and handed to _request: Salt's dunders are not
    # set in the threads of a round.
    return __context__.get("patroni.tls")


def _tls_context(cfg):
    """An SSL context that trusts only the cluster's CA (and checks the member's address in
    its certificate), or None for plain HTTP."""
    if not cfg["patroni"]["tls"]:
        return None
    ca_file = cfg["tls"]["ca_file"]
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise CommandExecutionError(
            f"the cluster's CA certificate {ca_file}, which verifies Patroni's REST API, "
            f"cannot be loaded: {_why(exc)} (salt/tls puts it there)") from exc


def _auth_header():
    password = __salt__["pillar.get"]("pgcluster_credentials:restapi", unmask=True)
    if not password:
        raise CommandExecutionError(
            "no Patroni REST API password in pillar pgcluster_credentials:restapi for this minion"
        )
    token = base64.b64encode(f"patroni:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _why(exc):
    # One line, short: a BadStatusLine carries whatever the peer sent.
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _request(name, url, method="GET", *, body=None, headers=None, timeout=DEFAULT_TIMEOUT,
             tls=None):
    """
    One HTTP exchange with member ``name``. Any HTTP status comes back as an answer; anything
    else (refused, timed out, closed without an answer, not HTTP, a certificate ``tls`` does
    not trust) raises ``_NoAnswer`` naming the member and the URL. ``timeout`` bounds each
    blocking socket operation.
    """
    headers = {"Accept": "application/json", **(headers or {})}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=tls) as answer:
                return _Answer(answer.status, answer.read().decode(errors="replace"),
                               answer.headers)
        except urllib.error.HTTPError as exc:
            return _Answer(exc.code, exc.read().decode(errors="replace"), exc.headers)
    except urllib.error.URLError as exc:
        reason = exc.reason if isinstance(exc.reason, str) else _why(exc.reason)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # OSError: refused, reset, timed out (TimeoutError); HTTPException: closed without an
        # answer (RemoteDisconnected), not HTTP (BadStatusLine), cut short (IncompleteRead).
        reason = _why(exc)
    raise _NoAnswer(f"{name}'s Patroni REST API did not answer {method} {url}: {reason}")


def _outcome(round_, key, name, url, method="GET"):
    """A call's answer from a round (pgcluster_rounds), or the ``_NoAnswer`` naming why not."""
    ended, value = round_.get(key)
    if ended or isinstance(value, _NoAnswer):
        return value
    if value is not None:
        raise value  # not a network error: a bug, shown as one
    return _NoAnswer(f"{name}'s Patroni REST API did not answer {method} {url}: "
                     f"no answer within {round_.timeout:g} s")


class _Round:
    """
    GET requests to several members sent at once (``pgcluster_rounds``): every result is there
    ``timeout`` + GRACE seconds after the start at the latest; a request still running then
    counts as no answer.
    """

    def __init__(self, requests, timeout):
        # requests: {key: (member name, url)}, all GET.
        self.requests = requests
        self.round = __utils__["pgcluster_rounds.at_once"](
            {key: functools.partial(_request, name, url, timeout=float(timeout), tls=_tls())
             for key, (name, url) in requests.items()}, timeout, "patroni-api")

    def result(self, key):
        """The answer for ``key``, or the ``_NoAnswer`` error; never waits past the deadline."""
        return _outcome(self.round, key, *self.requests[key])


def _good(answer, name="", url=""):
    """The JSON of a 200 answer, or why it is not one (naming the member and the URL)."""
    if isinstance(answer, Exception):
        return None, str(answer)
    data = answer.json()
    if answer.status != 200:
        return None, f"{name}'s Patroni REST API answered GET {url} with HTTP {answer.status}"
    if data is None:
        return None, f"{name}'s Patroni REST API answered GET {url} with HTTP 200 but not JSON"
    return data, None


def _first_good(round_, keys):
    """
    (member, JSON, errors): the first of ``keys`` ((path, member), in member order) that answered
    200 with JSON. All were asked at once; this waits for each in turn, so it returns as soon as
    the first member in order that answers has answered, and never after the round's deadline.
    """
    errors = {}
    for key in keys:
        data, error = _good(round_.result(key), *round_.requests[key])
        if error is None:
            return key[1], data, errors
        errors[key[1]] = error
    raise CommandExecutionError("no Patroni REST API answered: " + "; ".join(errors.values()))


def _first_answer(path, timeout, fresh=True):
    """GET ``path`` from every member at once; the first good answer in member order."""
    urls = _members(fresh)
    round_ = _Round({(path, name): (name, url + path) for name, url in urls.items()}, timeout)
    return _first_good(round_, [(path, name) for name in urls])


def _survey(timeout, paths=("/cluster", "/patroni"), fresh=True, pillar=None):
    """One round: every path of every member at once. Returns the round and the member URLs."""
    urls = _members(fresh, pillar)
    requests = {(path, name): (name, url + path) for path in paths for name, url in urls.items()}
    return _Round(requests, timeout), urls


def _role_name(role, status=None):
    """
    patronictl's name for a role, as ``/cluster`` gives it or as ``/patroni`` does (which calls a
    synchronous standby a replica with ``"sync_standby": true``).
    """
    if not role:
        return ""
    if role == "replica" and status:
        if status.get("sync_standby"):
            role = "sync_standby"
        elif status.get("quorum_standby"):
            role = "quorum_standby"
    return ROLE_NAMES.get(role, str(role).replace("_", " ").title())


def _lag_mb(value):
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value  # Patroni says "unknown" for a replica it cannot measure
    return round(value / 1048576, 1)


def _member_row(member):
    lag = member.get("lag")
    return {
        "name": member.get("name"),
        "host": member.get("host"),
        "role": _role_name(member.get("role")),
        "state": member.get("state"),
        "timeline": member.get("timeline"),
        "lag_mb": _lag_mb(lag),
        "receive_lag_mb": _lag_mb(member.get("receive_lag", lag)),
        "replay_lag_mb": _lag_mb(member.get("replay_lag", lag)),
        "tags": member.get("tags", {}),
        "pending_restart": bool(member.get("pending_restart", False)),
    }


def _absent_member_state(status):
    """Why a pillar member is missing from Patroni's view: its API is gone, or says why."""
    if isinstance(status, Exception):
        return "unreachable"
    return (status.json() or {}).get("state") or "stopped"


def _listing(round_, urls):
    """patroni.list's answer from a survey round (``/cluster`` and ``/patroni`` of every member)."""
    cfg = _cluster_config()
    answered_by, data, _errors = _first_good(round_, [("/cluster", name) for name in urls])
    rows = {m["name"]: _member_row(m) for m in data.get("members", [])}
    for name in cfg["member_names"]:
        if name not in rows:
            rows[name] = {
                "name": name, "host": cfg["members"][name]["address"], "role": "",
                "state": _absent_member_state(round_.result(("/patroni", name))),
                "timeline": None, "lag_mb": None, "receive_lag_mb": None, "replay_lag_mb": None,
                "tags": {}, "pending_restart": False,
            }
    system_id = None
    for name in [answered_by, *(n for n in urls if n != answered_by)]:
        status, _error = _good(round_.result(("/patroni", name)))
        system_id = (status or {}).get("database_system_identifier")
        if system_id:
            break
    return {
        "cluster": data.get("scope", cfg["name"]),
        "system_identifier": system_id,
        "paused": bool(data.get("pause", False)),
        "members": [rows[name] for name in sorted(rows)],
    }


def _leader_of(listing):
    for member in listing["members"]:
        if member["role"] in ("Leader", "Standby Leader"):
            return member["name"]
    return None


def cluster(timeout=DEFAULT_TIMEOUT):
    """
    Patroni's ``GET /cluster`` as it answers, from the first member (in member order) that does.
    Every member is asked at once: returns within ``timeout`` seconds.

    CLI Example:

    .. code-block:: bash

        salt web patroni.cluster
    """
    return _first_answer("/cluster", timeout)[1]


def list_(timeout=DEFAULT_TIMEOUT, pillar=None):
    """
    What ``patronictl list`` shows: the cluster's name and system identifier, whether it is
    paused, and one entry per member (``name``, ``host``, ``role``, ``state``, ``timeline``,
    ``lag_mb``, ``receive_lag_mb``, ``replay_lag_mb``, ``tags``, ``pending_restart``). A member of
    the pillar that Patroni does not list (Patroni stopped, host down) shows state
    ``unreachable`` or ``stopped``.

    Every member is asked at once: returns within ``timeout`` seconds, however many members
    do not answer.

    CLI Example:

    .. code-block:: bash

        salt web patroni.list
        salt web patroni.list --out=json
    """
    return _listing(*_survey(timeout, pillar=pillar))


def members(timeout=DEFAULT_TIMEOUT):
    """
    The members' names and roles, as a mapping. Returns within ``timeout`` seconds.

    CLI Example:

    .. code-block:: bash

        salt web patroni.members
    """
    return {m["name"]: m["role"] or m["state"] for m in list_(timeout)["members"]}


def leader(timeout=DEFAULT_TIMEOUT):
    """
    The leader's name, or None when the cluster has none. Returns within ``timeout`` seconds.

    CLI Example:

    .. code-block:: bash

        salt web patroni.leader
    """
    return _leader_of(list_(timeout))


def is_leader(member=None, timeout=DEFAULT_TIMEOUT, fresh=True):
    """
    Whether ``member`` (this minion by default) is the leader: its own Patroni answers
    ``GET /primary`` with 200, what HAProxy's check asks. False when it says otherwise or does
    not answer within ``timeout``. The states ask it when they run (``onlyif``), never while
    they render, with ``fresh=False``: the run's pillar (an override included) says how to
    reach Patroni, not the master's as it stands.

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 patroni.is_leader
        salt web patroni.is_leader postgres-srv2
    """
    member = member or __opts__["id"]
    urls = _members(fresh)
    if member not in urls:
        return False
    try:
        return _request(member, urls[member] + "/primary", timeout=timeout,
                        tls=_tls()).status == 200
    except _NoAnswer:
        return False


def etcd_logins(timeout=DEFAULT_TIMEOUT, fresh=True):
    """
    The etcd user each member's running Patroni logs in with, as its REST API says:
    ``{member: {"etcd_user": "patroni"}}``, ``{"etcd_user": None}`` without one, or
    ``{"error": why}`` when it does not answer. What Patroni runs with, not what its config
    file holds: Patroni applies a reloaded file in its next loop, and etcd's authentication
    goes on only once every member's Patroni runs with its login (``etcd_cluster.auth_managed``).
    Every member is asked at once; returns within ``timeout`` seconds. ``fresh=False``: this
    run's pillar says how to reach Patroni (what a state passes).

    CLI Example:

    .. code-block:: bash

        salt web patroni.etcd_logins
    """
    # /patroni: Patroni adds its extra headers to answers with a body, not to /liveness's.
    round_, urls = _survey(timeout, paths=("/patroni",), fresh=fresh)
    logins = {}
    for name in urls:
        answer = round_.result(("/patroni", name))
        logins[name] = ({"error": str(answer)} if isinstance(answer, Exception)
                        else {"etcd_user": answer.headers.get(ETCD_USER_HEADER)})
    return logins


def health(max_lag_mb=None, timeout=DEFAULT_TIMEOUT, archive=True):
    """
    Per member: the REST API answers, PostgreSQL runs, the role (named as ``patroni.list`` names
    it), the state, the replication lag, the error of a member that does not answer; and whether
    the whole cluster is healthy (one leader, every replica streaming on the leader's timeline,
    lag within ``max_lag_mb``, default Patroni's maximum_lag_on_failover).

    With backups on, ``archive`` also says whether the leader's WAL reaches every repository
    (``ok`` false: completed segments wait to be archived, or the repository does not answer),
    asked of pgBackRest on this minion (a member or the repository host) within 5 s more;
    it does not change ``healthy``, which is about serving.

    Every member is asked at once: returns within ``timeout`` seconds (and the archive's 5).

    CLI Example:

    .. code-block:: bash

        salt web patroni.health
    """
    cfg = _cluster_config()
    if max_lag_mb is None:
        max_lag_mb = cfg["patroni"]["maximum_lag_on_failover"] / 1048576
    round_, urls = _survey(timeout)
    report = {}
    locations = {}
    for name in urls:
        entry = {"rest_api": False, "postgresql": False, "role": None, "state": None,
                 "lag_mb": None, "error": None}
        answer = round_.result(("/patroni", name))
        if isinstance(answer, Exception):
            entry["error"] = str(answer)
        else:
            entry["rest_api"] = True
            status = answer.json() or {}
            locations[name] = (status.get("xlog") or {}).get("location")
            entry["state"] = status.get("state")
            entry["role"] = _role_name(status.get("role"), status) or None
            entry["postgresql"] = status.get("state") in RUNNING_STATES
            if answer.status != 200:
                entry["error"] = f"HTTP {answer.status}"
        report[name] = entry
    timelines = {}
    try:
        listing = _listing(round_, urls)
    except CommandExecutionError as exc:
        log.debug("patroni.health: no cluster view: %s", exc)
        listing = {"members": []}
    for member in listing["members"]:
        entry = report.get(member["name"])
        if entry is None:
            continue
        timelines[member["name"]] = member["timeline"]
        entry["state"] = member["state"] or entry["state"]
        # The role as patroni.list shows it: the cluster's view (it knows the sync standby).
        entry["role"] = member["role"] or entry["role"]
        if member["role"] != "Leader":
            entry["lag_mb"] = member["lag_mb"]
    leaders = [n for n, e in report.items() if e["role"] == "Leader" and e["postgresql"]]
    # A replica is healthy when it streams from the leader's timeline: one that merely runs
    # (diverged, or waiting for pg_rewind) shows small lag but replicates nothing.
    healthy = len(leaders) == 1 and all(
        e["postgresql"]
        and (name in leaders or (e["state"] == "streaming"
                                 and timelines.get(name) == timelines.get(leaders[0])))
        and (e["lag_mb"] is None or (isinstance(e["lag_mb"], float) and e["lag_mb"] <= max_lag_mb))
        for name, e in report.items()
    )
    leader = leaders[0] if len(leaders) == 1 else None
    result = {"healthy": healthy, "leader": leader, "members": report}
    if archive and cfg["pgbackrest"]["enabled"]:
        result["archive"] = _archive(locations.get(leader))
    return result


def _archive(location):
    """How far the archive trails the leader's WAL position (pgbackrest.archive_lag)."""
    if location is None:
        return {"ok": None, "error": "no leader's WAL position to compare with"}
    if "pgbackrest.archive_lag" not in __salt__:
        here = __opts__.get("id", "this minion")
        return {"ok": None, "error": f"pgBackRest is not on {here}: ask a member or the "
                                     "backup repository host"}
    try:
        return __salt__["pgbackrest.archive_lag"](location)
    except CommandExecutionError as exc:
        return {"ok": False, "error": str(exc)}


def _check_member(name, cfg_members):
    if name not in cfg_members:
        raise CommandExecutionError(
            f"unknown member '{name}': the members are {', '.join(sorted(cfg_members))}"
        )


def _refusal_text(action, answer):
    message = answer.body.strip() or f"HTTP {answer.status}"
    return f"Patroni refused the {action} (HTTP {answer.status}): {message}"


def _refusal(action, answer):
    raise CommandExecutionError(_refusal_text(action, answer))


def _post(name, url, body, timeout, method="POST"):
    """
    One authenticated write to member ``name``; returns within ``timeout`` + GRACE seconds.
    Raises ``_NoAnswer`` (naming the member and the URL) when it does not answer.
    """
    call = functools.partial(_request, name, url, method, body=body, headers=_auth_header(),
                             timeout=float(timeout), tls=_tls())
    round_ = __utils__["pgcluster_rounds.at_once"]({name: call}, timeout, "patroni-api")
    answer = _outcome(round_, name, name, url, method)
    if isinstance(answer, _NoAnswer):
        raise answer
    return answer


def _truthy(value):
    return value is True or str(value).lower() in ("on", "true", "yes", "1")


def _synchronous_mode(round_, urls, rows):
    """
    "on" when Patroni switches over only to the synchronous standby (synchronous_mode on, not
    quorum commit), "quorum", or None. From the dynamic config (GET /config); from the roles in
    /cluster when no member answered it.
    """
    try:
        config = _first_good(round_, [("/config", name) for name in urls])[1]
    except CommandExecutionError:
        roles = {row["role"] for row in rows.values()}
        return "quorum" if "Quorum Standby" in roles else "on" if "Sync Standby" in roles else None
    value = config.get("synchronous_mode")
    if str(value).lower() == "quorum":
        return "quorum"
    return "on" if _truthy(value) else None


def _nofailover(tags):
    # Patroni's rule: nofailover when set wins, else failover_priority <= 0.
    if tags.get("nofailover") is not None:
        return _truthy(tags["nofailover"])
    try:
        return int(tags["failover_priority"]) <= 0
    except (KeyError, TypeError, ValueError):
        return False


def _not_a_candidate(row, sync_mode):
    """Why Patroni would not switch over to this replica, or None when it would."""
    name = row["name"]
    if row["state"] not in RUNNING_STATES:
        return f"{name} is {row['state'] or 'in no known state'}: Patroni promotes only a running replica"
    if _nofailover(row.get("tags") or {}):
        return f"{name} is tagged nofailover: Patroni never promotes it"
    if sync_mode == "on" and row["role"] != "Sync Standby":
        return (f"{name} is an asynchronous replica; with synchronous_mode Patroni switches over "
                "only to the synchronous standby")
    return None


def _candidate_refusal(candidate, rows, current, sync_mode):
    """The message refusing ``candidate`` (naming the valid candidates), or None."""
    why = _not_a_candidate(rows[candidate], sync_mode)
    if why is None:
        return None
    valid = [n for n, row in sorted(rows.items())
             if n != current and _not_a_candidate(row, sync_mode) is None]
    if sync_mode == "on" and "asynchronous replica" in why:
        return f"{why}: {', '.join(valid) or 'none is streaming now'}"
    return f"{why}; valid candidates: {', '.join(valid) or 'none now'}"


def switchover(candidate=None, scheduled_at=None, timeout=DEFAULT_TIMEOUT, pillar=None):
    """
    Planned switchover from the current leader to ``candidate``, now or at ``scheduled_at`` (ISO
    8601 with a time zone). Without a candidate Patroni picks one (with synchronous_mode, the
    synchronous standby).

    A candidate Patroni would refuse is refused here first, before Patroni is asked, with the
    valid candidates: the leader itself, an unknown member, one that is not running or
    streaming, one tagged nofailover, and, with synchronous_mode, any but the synchronous standby.

    Returns within ``timeout`` (asking every member at once) plus 30 s or ``timeout``, whichever
    is longer (Patroni answers once the switchover is done). ``pillar``: an override over the
    master's (the runner pgcluster_members names a leader it is taking out of pillar so).

    CLI Example:

    .. code-block:: bash

        salt web patroni.switchover
        salt web patroni.switchover candidate=postgres-srv2
        salt web patroni.switchover candidate=postgres-srv2 scheduled_at=2026-12-01T03:00+00:00
    """
    round_, urls = _survey(timeout, ("/cluster", "/patroni", "/config"), pillar=pillar)
    listing = _listing(round_, urls)
    rows = {m["name"]: m for m in listing["members"]}
    current = _leader_of(listing)
    if candidate is not None:
        _check_member(candidate, rows)
        if candidate == current:
            raise CommandExecutionError(f"{candidate} is already the leader")
    if current is None:
        raise CommandExecutionError("no leader to switch over from: use patroni.failover")
    if candidate is not None:
        refusal = _candidate_refusal(candidate, rows, current, _synchronous_mode(round_, urls, rows))
        if refusal:
            raise CommandExecutionError(refusal)
    body = {"leader": current}
    if candidate:
        body["candidate"] = candidate
    if scheduled_at:
        body["scheduled_at"] = str(scheduled_at)
    answer = _post(current, urls[current] + "/switchover", body, max(timeout, SWITCHOVER_TIMEOUT))
    if answer.status not in (200, 202):
        _refusal("switchover", answer)
    return {"previous_leader": current, "candidate": candidate, "scheduled_at": scheduled_at,
            "message": answer.body.strip()}


def _answering(round_, urls):
    """The members whose API answered ``/patroni`` in the round, the leader first."""
    answered = {}
    for name in urls:
        answer = round_.result(("/patroni", name))
        if not isinstance(answer, Exception):
            answered[name] = (answer.json() or {}).get("role")
    return sorted(answered, key=lambda n: (answered[n] not in ("primary", "master"), n))


def failover(candidate, timeout=DEFAULT_TIMEOUT):
    """
    Failover to ``candidate``, for a cluster that has no healthy leader (or to force one).

    Returns within ``timeout`` (asking every member at once) plus 30 s or ``timeout``, whichever
    is longer.

    CLI Example:

    .. code-block:: bash

        salt web patroni.failover postgres-srv2
    """
    round_, urls = _survey(timeout)
    roles = {m["name"]: m["role"] or m["state"] for m in _listing(round_, urls)["members"]}
    _check_member(candidate, roles)
    if roles[candidate] == "Leader":
        raise CommandExecutionError(f"{candidate} is already the leader")
    answering = _answering(round_, urls)
    if not answering:
        raise CommandExecutionError("no Patroni REST API answered: nobody to ask for the failover")
    name = answering[0]
    answer = _post(name, urls[name] + "/failover", {"candidate": candidate},
                   max(timeout, SWITCHOVER_TIMEOUT))
    if answer.status not in (200, 202):
        _refusal("failover", answer)
    return {"candidate": candidate, "message": answer.body.strip()}


def _on_member(member, path, action, body, timeout):
    urls = _members()
    _check_member(member, urls)
    answer = _post(member, urls[member] + path, body, max(timeout, RESTART_TIMEOUT))
    if answer.status not in (200, 202):
        _refusal(f"{action} of {member}", answer)
    return answer.body.strip()


def restart(member="all", pending=False, timeout=DEFAULT_TIMEOUT):
    """
    Restart PostgreSQL on ``member`` through Patroni, or on every member (``all``) one by one.
    With ``pending=True`` only where a changed parameter needs it.

    Returns every member's outcome, ``{member: {"outcome": ..., "message": ...}}``, the outcome
    one of ``ok``, ``skipped`` (``pending=True`` and nothing pending there), ``refused`` (Patroni's
    message passed on) or ``unreachable``. A refusal does not stop the others. When any member
    was refused or unreachable the call fails (retcode 1) with the outcomes as its output.

    Returns within 60 s (or ``timeout`` if longer) per member.

    CLI Example:

    .. code-block:: bash

        salt web patroni.restart postgres-srv3
        salt web patroni.restart all pending=True
    """
    urls = _members()
    names = sorted(urls) if member == "all" else [member]
    for name in names:
        _check_member(name, urls)
    body = {"restart_pending": True} if pending else {}
    report = {}
    for name in names:
        try:
            answer = _post(name, urls[name] + "/restart", body, max(timeout, RESTART_TIMEOUT))
        except _NoAnswer as exc:
            report[name] = {"outcome": "unreachable", "message": str(exc)}
            continue
        message = answer.body.strip() or f"HTTP {answer.status}"
        if answer.status in (200, 202):
            report[name] = {"outcome": "ok", "message": message}
        elif pending and answer.status == 503 and "restart conditions are not satisfied" in message:
            # Patroni's answer to restart_pending where no restart is pending.
            report[name] = {"outcome": "skipped", "message": f"no restart pending ({message})"}
        else:
            report[name] = {"outcome": "refused",
                            "message": _refusal_text(f"restart of {name}", answer)}
    if any(entry["outcome"] in ("refused", "unreachable") for entry in report.values()):
        __context__["retcode"] = 1
    return report


def reinit(member, timeout=DEFAULT_TIMEOUT):
    """
    Rebuild a replica from the leader (``patronictl reinit``). Patroni refuses it on the leader.
    Returns within 60 s (or ``timeout`` if longer).

    CLI Example:

    .. code-block:: bash

        salt web patroni.reinit postgres-srv3
    """
    return {member: _on_member(member, "/reinitialize", "reinitialize", {"force": True}, timeout)}


def _patch_config(changes, action, timeout, fresh=True, pillar=None):
    """PATCH /config on a member that answers (the leader if it does); the new config."""
    round_, urls = _survey(timeout, ("/patroni",), fresh, pillar)
    answering = _answering(round_, urls)
    if not answering:
        errors = "; ".join(str(round_.result(("/patroni", name))) for name in urls)
        raise CommandExecutionError(f"no Patroni REST API answered: {errors}")
    name = answering[0]
    answer = _post(name, urls[name] + "/config", changes, max(timeout, CONFIG_TIMEOUT),
                   method="PATCH")
    if answer.status != 200:
        _refusal(action, answer)
    return answer.json()


def pause(timeout=DEFAULT_TIMEOUT, pillar=None):
    """
    Put the cluster in maintenance mode: Patroni stops managing PostgreSQL (no failover).
    Returns within ``timeout`` (finding a member that answers, the leader first) plus 10 s or
    ``timeout``, whichever is longer.

    CLI Example:

    .. code-block:: bash

        salt web patroni.pause
    """
    _patch_config({"pause": True}, "pause", timeout, pillar=pillar)
    return {"paused": True}


def resume(timeout=DEFAULT_TIMEOUT, pillar=None):
    """
    Leave maintenance mode. Returns within ``timeout`` plus 10 s or ``timeout``, whichever is
    longer.

    CLI Example:

    .. code-block:: bash

        salt web patroni.resume
    """
    _patch_config({"pause": False}, "resume", timeout, pillar=pillar)
    return {"paused": False}


def _own_status(cfg, timeout):
    """(this member's /patroni, the scheme its REST API answered on), or (None, None) while it
    does not answer. Asked on https (verified by the cluster's CA), then on http: what this
    Patroni runs, which a switch under way may make other than the pillar says (a read that
    sends no credentials)."""
    me = __grains__["id"]
    address, port = cfg["members"][me]["address"], cfg["patroni"]["restapi_port"]
    try:
        tls = _tls_context({**cfg, "patroni": {**cfg["patroni"], "tls": True}})
    except CommandExecutionError:  # no CA on this host: no TLS anywhere
        tls = None
    for scheme in ("https", "http") if tls else ("http",):
        try:
            answer = _request(me, f"{scheme}://{address}:{port}/patroni", timeout=timeout,
                              tls=tls if scheme == "https" else None)
        except _NoAnswer:
            continue
        if answer.status in (200, 503) and isinstance(answer.json(), dict):
            return answer.json(), scheme
    return None, None


def rest_scheme(timeout=DEFAULT_TIMEOUT):
    """
    The scheme this member's Patroni REST API answers on now (``https``, ``http``, or None
    when it does not answer), whatever the pillar says.

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 patroni.rest_scheme
    """
    cfg = _cluster_config(True)
    if __grains__["id"] not in cfg["members"]:
        raise CommandExecutionError(f"rest_scheme: {__grains__['id']} is no member of "
                                    "pgcluster:members")
    return _own_status(cfg, timeout)[1]


def daemon_restarted(wait=120, timeout=DEFAULT_TIMEOUT):
    """
    Restart this member's Patroni daemon and leave its PostgreSQL running: for a setting Patroni
    reads only when it starts (etcd's endpoints and TLS). Only in maintenance mode (Patroni
    stops PostgreSQL when it stops otherwise): refused unless this member's Patroni says the
    cluster is paused (it learns it in its next loop, so this waits for that first). Returns
    once the new Patroni has reached etcd (``dcs_last_seen`` after the restart), or raises
    after ``wait`` seconds.

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 patroni.daemon_restarted
    """
    cfg = _cluster_config(True)
    me = __grains__["id"]
    if me not in cfg["members"]:
        raise CommandExecutionError(f"daemon_restarted: {me} is no member of pgcluster:members")
    deadline = time.monotonic() + float(wait)
    status, _scheme = _own_status(cfg, timeout)
    while not (status or {}).get("pause"):
        if time.monotonic() > deadline:
            raise CommandExecutionError(
                f"daemon_restarted: {me}'s Patroni does not say the cluster is paused after "
                f"{wait} s (patroni.pause first): restarting it would stop PostgreSQL")
        time.sleep(1)
        status, _scheme = _own_status(cfg, timeout)
    started = time.time()
    if not __salt__["service.restart"](cfg["patroni"]["service"]):
        raise CommandExecutionError(f"daemon_restarted: systemd could not restart "
                                    f"{cfg['patroni']['service']} on {me}")
    while True:
        status, scheme = _own_status(cfg, timeout)
        if status and float(status.get("dcs_last_seen") or 0) >= started:
            return {"restarted": me, "state": status.get("state"), "rest": scheme,
                    "took_s": round(time.time() - started, 1)}
        if time.monotonic() > deadline:
            raise CommandExecutionError(
                f"daemon_restarted: {me}'s Patroni has not reached etcd {wait} s after its "
                f"restart (last answer: {status})")
        time.sleep(0.5)


def dynamic_config(timeout=DEFAULT_TIMEOUT, fresh=True):
    """
    The cluster-wide configuration Patroni keeps in etcd (``GET /config``).
    Returns within ``timeout`` seconds. ``fresh=False``: Patroni reached as this minion's
    pillar says (a state run's, override included), not as the master's says now.

    CLI Example:

    .. code-block:: bash

        salt web patroni.dynamic_config
    """
    return _first_answer("/config", timeout, fresh)[1]


def patch_config(changes, timeout=DEFAULT_TIMEOUT, fresh=True):
    """
    Change the cluster-wide configuration (``PATCH /config``); Patroni applies it on every
    member (reloading PostgreSQL; parameters that need a restart show as pending restart).
    Returns within ``timeout`` (finding a member that answers, the leader first) plus 10 s or
    ``timeout``, whichever is longer. ``fresh``: as for ``dynamic_config``.

    CLI Example:

    .. code-block:: bash

        salt web patroni.patch_config '{"postgresql": {"parameters": {"work_mem": "8MB"}}}'
    """
    if isinstance(changes, str):
        changes = json.loads(changes)
    return _patch_config(changes, "configuration change", timeout, fresh)


def history(timeout=DEFAULT_TIMEOUT):
    """
    The cluster's timeline history: one entry per promotion (``timeline``, ``lsn``, ``reason``,
    ``timestamp``, ``new_leader``). Returns within ``timeout`` seconds.

    CLI Example:

    .. code-block:: bash

        salt web patroni.history
    """
    rows = _first_answer("/history", timeout)[1]
    keys = ("timeline", "lsn", "reason", "timestamp", "new_leader")
    return [dict(zip(keys, row, strict=False)) for row in rows]


def wait_healthy(timeout=300, max_lag_mb=None):
    """
    Wait until ``patroni.health`` says the cluster is healthy (one leader, every replica
    streaming on its timeline); raise, with the last report, after ``timeout`` seconds. For
    orchestrations that must not go on before.

    CLI Example:

    .. code-block:: bash

        salt web patroni.wait_healthy timeout=120
    """
    deadline = time.monotonic() + float(timeout)
    while True:
        report = health(max_lag_mb=max_lag_mb)
        if report.get("healthy"):
            return report
        if time.monotonic() > deadline:
            members = {n: (e.get("role"), e.get("state"), e.get("error"))
                       for n, e in report.get("members", {}).items()}
            raise CommandExecutionError(f"the cluster is not healthy after {timeout} s: {members}")
        time.sleep(2)
