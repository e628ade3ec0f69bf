"""
Patroni, seen and steered through its REST API from any minion that can reach the members.

The members and the REST API credentials come from pillar (``pgcluster``,
``pgcluster_credentials:restapi``), so ``salt web patroni.list`` works from the web host:
no ssh to a database host. A member that does not answer shows as such, after a short timeout.

CLI Example:

.. code-block:: bash

    salt web patroni.list
    salt web patroni.switchover candidate=postgres-srv2
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "patroni"
__func_alias__ = {"list_": "list"}
__outputter__ = {"list_": "patroni_list"}

DEFAULT_TIMEOUT = 2.0
ROLE_NAMES = {
    "leader": "Leader",
    "master": "Leader",
    "primary": "Leader",
    "standby_leader": "Standby Leader",
    "sync_standby": "Sync Standby",
    "quorum_standby": "Quorum Standby",
    "replica": "Replica",
}


def __virtual__():
    return __virtualname__


class _Answer:
    def __init__(self, status, body):
        self.status = status
        self.body = body

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def _cluster_config():
    return __salt__["pgcluster.config"]()


def _members():
    cfg = _cluster_config()
    port = cfg["patroni"]["restapi_port"]
    return {name: f"http://{cfg['members'][name]['address']}:{port}" for name in cfg["member_names"]}


def _auth_header():
    password = __salt__["pillar.get"]("pgcluster_credentials:restapi", unmask=True)
    if not password:
        raise CommandExecutionError(
            "no Patroni REST API password in pillar pgcluster_credentials:restapi for this minion"
        )
    token = base64.b64encode(f"patroni:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _request(url, method="GET", body=None, auth=False, timeout=DEFAULT_TIMEOUT):
    """One HTTP call; HTTP errors come back as answers, an unreachable API raises OSError."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if auth:
        headers.update(_auth_header())
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return _Answer(answer.status, answer.read().decode(errors="replace"))
    except urllib.error.HTTPError as exc:
        return _Answer(exc.code, exc.read().decode(errors="replace"))
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from None


def _first_answer(path, timeout):
    """GET path from the first member whose API answers; errors per member if none does."""
    errors = {}
    for name, url in _members().items():
        try:
            answer = _request(url + path, timeout=timeout)
        except OSError as exc:
            errors[name] = str(exc)
            continue
        if answer.status == 200 and answer.json() is not None:
            return name, answer.json(), errors
        errors[name] = f"HTTP {answer.status}"
    raise CommandExecutionError(
        "no Patroni REST API answered: "
        + "; ".join(f"{name}: {error}" for name, error in errors.items())
    )


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
        "role": ROLE_NAMES.get(member.get("role"), str(member.get("role", "")).title()),
        "state": member.get("state"),
        "timeline": member.get("timeline"),
        "lag_mb": _lag_mb(lag),
        "receive_lag_mb": _lag_mb(member.get("receive_lag", lag)),
        "replay_lag_mb": _lag_mb(member.get("replay_lag", lag)),
        "tags": member.get("tags", {}),
        "pending_restart": bool(member.get("pending_restart", False)),
    }


def _absent_member_state(name, errors, timeout):
    """Why a pillar member is missing from Patroni's view: its API is gone, or says why."""
    if name in errors:
        return "unreachable"
    try:
        answer = _request(_members()[name] + "/patroni", timeout=timeout)
    except OSError:
        return "unreachable"
    return (answer.json() or {}).get("state") or "stopped"


def cluster(timeout=DEFAULT_TIMEOUT):
    """
    Patroni's ``GET /cluster`` as it answers, from the first member that does.

    CLI Example:

    .. code-block:: bash

        salt web patroni.cluster
    """
    return _first_answer("/cluster", timeout)[1]


def list_(timeout=DEFAULT_TIMEOUT):
    """
    What ``patronictl list`` shows: the cluster's name and system identifier, whether it is
    paused, and one entry per member (``name``, ``host``, ``role``, ``state``, ``timeline``,
    ``lag_mb``, ``receive_lag_mb``, ``replay_lag_mb``, ``tags``, ``pending_restart``). A member of
    the pillar that Patroni does not list (Patroni stopped, host down) shows state
    ``unreachable`` or ``stopped``.

    CLI Example:

    .. code-block:: bash

        salt web patroni.list
        salt web patroni.list --out=json
    """
    cfg = _cluster_config()
    answered_by, data, errors = _first_answer("/cluster", timeout)
    rows = {m["name"]: _member_row(m) for m in data.get("members", [])}
    for name in cfg["member_names"]:
        if name not in rows:
            rows[name] = {
                "name": name, "host": cfg["members"][name]["address"], "role": "",
                "state": _absent_member_state(name, errors, timeout),
                "timeline": None, "lag_mb": None, "receive_lag_mb": None, "replay_lag_mb": None,
                "tags": {}, "pending_restart": False,
            }
    system_id = None
    for name in [answered_by, *cfg["member_names"]]:
        try:
            answer = _request(_members()[name] + "/patroni", timeout=timeout)
        except OSError:
            continue
        status = answer.json() or {}
        system_id = status.get("database_system_identifier")
        if system_id:
            break
    return {
        "cluster": data.get("scope", cfg["name"]),
        "system_identifier": system_id,
        "paused": bool(data.get("pause", False)),
        "members": [rows[name] for name in sorted(rows)],
    }


def members(timeout=DEFAULT_TIMEOUT):
    """
    The members' names and roles, as a mapping.

    CLI Example:

    .. code-block:: bash

        salt web patroni.members
    """
    return {m["name"]: m["role"] or m["state"] for m in list_(timeout)["members"]}


def leader(timeout=DEFAULT_TIMEOUT):
    """
    The leader's name, or None when the cluster has none.

    CLI Example:

    .. code-block:: bash

        salt web patroni.leader
    """
    for member in list_(timeout)["members"]:
        if member["role"] in ("Leader", "Standby Leader"):
            return member["name"]
    return None


def health(max_lag_mb=None, timeout=DEFAULT_TIMEOUT):
    """
    Per member: the REST API answers, PostgreSQL runs, the replication lag; and whether the whole
    cluster is healthy (a leader, every member running or streaming, lag within ``max_lag_mb``,
    default Patroni's maximum_lag_on_failover).

    CLI Example:

    .. code-block:: bash

        salt web patroni.health
    """
    cfg = _cluster_config()
    if max_lag_mb is None:
        max_lag_mb = cfg["patroni"]["maximum_lag_on_failover"] / 1048576
    report = {}
    for name, url in _members().items():
        entry = {"rest_api": False, "postgresql": False, "role": None, "state": None,
                 "lag_mb": None, "error": None}
        try:
            answer = _request(url + "/patroni", timeout=timeout)
            entry["rest_api"] = True
            status = answer.json() or {}
            entry["state"] = status.get("state")
            entry["role"] = ROLE_NAMES.get(status.get("role"), status.get("role"))
            entry["postgresql"] = status.get("state") in ("running", "streaming")
            if answer.status != 200:
                entry["error"] = f"HTTP {answer.status}"
        except OSError as exc:
            entry["error"] = str(exc)
        report[name] = entry
    timelines = {}
    try:
        for member in list_(timeout)["members"]:
            if member["name"] in report:
                timelines[member["name"]] = member["timeline"]
                report[member["name"]]["state"] = member["state"] or report[member["name"]]["state"]
                if member["role"] != "Leader":
                    report[member["name"]]["lag_mb"] = member["lag_mb"]
    except CommandExecutionError as exc:
        log.debug("patroni.health: no cluster view: %s", exc)
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
    return {"healthy": healthy, "leader": leaders[0] if len(leaders) == 1 else None,
            "members": report}


def _check_member(name, cfg_members):
    if name not in cfg_members:
        raise CommandExecutionError(
            f"unknown member '{name}': the members are {', '.join(sorted(cfg_members))}"
        )


def _refusal(action, answer):
    message = answer.body.strip() or f"HTTP {answer.status}"
    raise CommandExecutionError(f"Patroni refused the {action} (HTTP {answer.status}): {message}")


def _post_to_leader(path, body, action, timeout):
    current = leader(timeout)
    if current is None:
        raise CommandExecutionError(f"no leader to ask for the {action}: the cluster has none")
    answer = _request(_members()[current] + path, method="POST", body=body, auth=True,
                      timeout=max(timeout, 30))
    if answer.status not in (200, 202):
        _refusal(action, answer)
    return current, answer.body.strip()


def switchover(candidate=None, scheduled_at=None, timeout=DEFAULT_TIMEOUT):
    """
    Planned switchover from the current leader to ``candidate`` (or to the healthiest replica
    Patroni picks), now or at ``scheduled_at`` (ISO 8601 with a time zone).

    CLI Example:

    .. code-block:: bash

        salt web patroni.switchover
        salt web patroni.switchover candidate=postgres-srv2
        salt web patroni.switchover candidate=postgres-srv2 scheduled_at=2026-12-01T03:00+00:00
    """
    roles = members(timeout)
    if candidate is not None:
        _check_member(candidate, roles)
        if roles[candidate] == "Leader":
            raise CommandExecutionError(f"{candidate} is already the leader")
    current = leader(timeout)
    if current is None:
        raise CommandExecutionError("no leader to switch over from: use patroni.failover")
    body = {"leader": current}
    if candidate:
        body["candidate"] = candidate
    if scheduled_at:
        body["scheduled_at"] = str(scheduled_at)
    old, message = _post_to_leader("/switchover", body, "switchover", timeout)
    return {"previous_leader": old, "candidate": candidate, "scheduled_at": scheduled_at,
            "message": message}


def failover(candidate, timeout=DEFAULT_TIMEOUT):
    """
    Failover to ``candidate``, for a cluster that has no healthy leader (or to force one).

    CLI Example:

    .. code-block:: bash

        salt web patroni.failover postgres-srv2
    """
    roles = members(timeout)
    _check_member(candidate, roles)
    if roles[candidate] == "Leader":
        raise CommandExecutionError(f"{candidate} is already the leader")
    errors = {}
    for name, url in _members().items():
        try:
            answer = _request(url + "/failover", method="POST", body={"candidate": candidate},
                              auth=True, timeout=max(timeout, 30))
        except OSError as exc:
            errors[name] = str(exc)
            continue
        if answer.status not in (200, 202):
            _refusal("failover", answer)
        return {"candidate": candidate, "message": answer.body.strip()}
    raise CommandExecutionError(f"no Patroni REST API answered: {errors}")


def _on_member(member, path, action, body, timeout):
    urls = _members()
    _check_member(member, urls)
    try:
        answer = _request(urls[member] + path, method="POST", body=body, auth=True,
                          timeout=max(timeout, 60))
    except OSError as exc:
        raise CommandExecutionError(f"{member}'s Patroni REST API does not answer: {exc}") from None
    if answer.status not in (200, 202):
        _refusal(f"{action} of {member}", answer)
    return answer.body.strip()


def restart(member="all", pending=False, timeout=DEFAULT_TIMEOUT):
    """
    Restart PostgreSQL on ``member`` through Patroni, or on every member (``all``) one by one.
    With ``pending=True`` only where a changed parameter needs it.

    CLI Example:

    .. code-block:: bash

        salt web patroni.restart postgres-srv3
        salt web patroni.restart all pending=True
    """
    body = {"restart_pending": True} if pending else {}
    names = sorted(_members()) if member == "all" else [member]
    return {name: _on_member(name, "/restart", "restart", body, timeout) for name in names}


def reinit(member, timeout=DEFAULT_TIMEOUT):
    """
    Rebuild a replica from the leader (``patronictl reinit``). Patroni refuses it on the leader.

    CLI Example:

    .. code-block:: bash

        salt web patroni.reinit postgres-srv3
    """
    return {member: _on_member(member, "/reinitialize", "reinitialize", {"force": True}, timeout)}


def _set_pause(value, timeout):
    errors = {}
    for name, url in _members().items():
        try:
            answer = _request(url + "/config", method="PATCH", body={"pause": value}, auth=True,
                              timeout=max(timeout, 10))
        except OSError as exc:
            errors[name] = str(exc)
            continue
        if answer.status != 200:
            _refusal("pause" if value else "resume", answer)
        return {"paused": value}
    raise CommandExecutionError(f"no Patroni REST API answered: {errors}")


def pause(timeout=DEFAULT_TIMEOUT):
    """
    Put the cluster in maintenance mode: Patroni stops managing PostgreSQL (no failover).

    CLI Example:

    .. code-block:: bash

        salt web patroni.pause
    """
    return _set_pause(True, timeout)


def resume(timeout=DEFAULT_TIMEOUT):
    """
    Leave maintenance mode.

    CLI Example:

    .. code-block:: bash

        salt web patroni.resume
    """
    return _set_pause(False, timeout)


def dynamic_config(timeout=DEFAULT_TIMEOUT):
    """
    The cluster-wide configuration Patroni keeps in etcd (``GET /config``).

    CLI Example:

    .. code-block:: bash

        salt web patroni.dynamic_config
    """
    return _first_answer("/config", timeout)[1]


def patch_config(changes, timeout=DEFAULT_TIMEOUT):
    """
    Change the cluster-wide configuration (``PATCH /config``); Patroni applies it on every
    member (reloading PostgreSQL; parameters that need a restart show as pending restart).

    CLI Example:

    .. code-block:: bash

        salt web patroni.patch_config '{"postgresql": {"parameters": {"work_mem": "8MB"}}}'
    """
    if isinstance(changes, str):
        changes = json.loads(changes)
    errors = {}
    for name, url in _members().items():
        try:
            answer = _request(url + "/config", method="PATCH", body=changes, auth=True,
                              timeout=max(timeout, 10))
        except OSError as exc:
            errors[name] = str(exc)
            continue
        if answer.status != 200:
            _refusal("configuration change", answer)
        return answer.json()
    raise CommandExecutionError(f"no Patroni REST API answered: {errors}")


def history(timeout=DEFAULT_TIMEOUT):
    """
    The cluster's timeline history: one entry per promotion.

    CLI Example:

    .. code-block:: bash

        salt web patroni.history
    """
    rows = _first_answer("/history", timeout)[1]
    keys = ("timeline", "lsn", "reason", "timestamp", "new_leader")
    return [dict(zip(keys, row, strict=False)) for row in rows]
