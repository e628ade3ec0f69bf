"""
The etcd cluster Patroni keeps its state in, read through etcd's v3 HTTP gateway (JSON over
HTTP, no client library). Named ``etcd_cluster``: Salt already has an ``etcd`` module (v2 API).

The endpoints come from pillar (``pgcluster``), so any minion that can reach the members works.
In the gateway's JSON, 64-bit numbers are strings and keys and values are base64.

CLI Example:

.. code-block:: bash

    salt web etcd_cluster.health
    salt web etcd_cluster.status
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request

from salt.exceptions import CommandExecutionError

__virtualname__ = "etcd_cluster"

DEFAULT_TIMEOUT = 2.0


def __virtual__():
    return __virtualname__


def _endpoints(endpoints=None):
    if endpoints:
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        return [e if e.startswith("http") else f"http://{e}" for e in endpoints]
    cfg = __salt__["pgcluster.config"]()
    return [f"http://{e}" for e in cfg["etcd"]["endpoints"]]


def _call(endpoint, path, body=None, timeout=DEFAULT_TIMEOUT):
    data = json.dumps(body if body is not None else {}).encode() if path.startswith("/v3/") else None
    request = urllib.request.Request(
        endpoint + path, data=data, method="POST" if data is not None else "GET",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read().decode())
    except urllib.error.HTTPError as exc:
        raise OSError(f"HTTP {exc.code}: {exc.read().decode(errors='replace').strip()}") from None
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from None
    except ValueError as exc:
        raise OSError(f"not JSON: {exc}") from None


def _hex(value):
    return format(int(value), "x") if value not in (None, "") else None


def health(endpoints=None, timeout=DEFAULT_TIMEOUT):
    """
    Each endpoint healthy or not (with the error), and whether a quorum is healthy.

    CLI Example:

    .. code-block:: bash

        salt web etcd_cluster.health
    """
    report = {}
    for endpoint in _endpoints(endpoints):
        started = time.monotonic()
        entry = {"healthy": False, "error": None, "took_ms": None}
        try:
            answer = _call(endpoint, "/health", timeout=timeout)
            entry["healthy"] = answer.get("health") == "true"
            if not entry["healthy"]:
                entry["error"] = answer.get("reason") or "etcd reports itself unhealthy"
        except OSError as exc:
            entry["error"] = str(exc)
        entry["took_ms"] = round((time.monotonic() - started) * 1000, 1)
        report[endpoint] = entry
    healthy = sum(1 for e in report.values() if e["healthy"])
    return {"quorum": healthy > len(report) / 2, "healthy": healthy, "total": len(report),
            "endpoints": report}


def members(endpoints=None, timeout=DEFAULT_TIMEOUT):
    """
    What ``etcdctl member list`` shows: id, status, name, peer and client URLs, learner.

    CLI Example:

    .. code-block:: bash

        salt web etcd_cluster.members
    """
    errors = {}
    for endpoint in _endpoints(endpoints):
        try:
            answer = _call(endpoint, "/v3/cluster/member/list", timeout=timeout)
        except OSError as exc:
            errors[endpoint] = str(exc)
            continue
        return [
            {
                "id": _hex(m.get("ID")),
                # A member added but never started has no name yet, as etcdctl shows it.
                "status": "started" if m.get("name") else "unstarted",
                "name": m.get("name", ""),
                "peer_urls": m.get("peerURLs", []),
                "client_urls": m.get("clientURLs", []),
                "is_learner": bool(m.get("isLearner", False)),
            }
            for m in answer.get("members", [])
        ]
    raise CommandExecutionError(f"no etcd endpoint answered: {errors}")


def status(endpoints=None, timeout=DEFAULT_TIMEOUT):
    """
    What ``etcdctl endpoint status --cluster`` shows, per member's client URL: member id,
    version, db size, is leader, raft term and index; or the error of one that does not answer.

    CLI Example:

    .. code-block:: bash

        salt web etcd_cluster.status
    """
    try:
        urls = [u for m in members(endpoints, timeout) for u in m["client_urls"]]
    except CommandExecutionError:
        urls = []
    rows = []
    for endpoint in dict.fromkeys(urls or _endpoints(endpoints)):
        try:
            answer = _call(endpoint, "/v3/maintenance/status", timeout=timeout)
        except OSError as exc:
            rows.append({"endpoint": endpoint, "error": str(exc)})
            continue
        header = answer.get("header", {})
        rows.append({
            "endpoint": endpoint,
            "id": _hex(header.get("member_id")),
            "version": answer.get("version"),
            "db_size": int(answer.get("dbSize", 0)),
            "is_leader": header.get("member_id") == answer.get("leader"),
            "is_learner": bool(answer.get("isLearner", False)),
            "raft_term": int(answer.get("raftTerm", 0)),
            "raft_index": int(answer.get("raftIndex", 0)),
            "raft_applied_index": int(answer.get("raftAppliedIndex", 0)),
            "errors": answer.get("errors", []),
        })
    return rows


def _b64(text):
    return base64.b64encode(text.encode()).decode()


def _prefix_end(prefix):
    # The smallest key after every key that starts with prefix (etcd's range_end).
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


def patroni_keys(scope=None, namespace="/service", endpoints=None, timeout=DEFAULT_TIMEOUT):
    """
    The keys Patroni keeps for the cluster (leader, members, config, history, sync, failsafe...),
    with JSON values decoded.

    CLI Example:

    .. code-block:: bash

        salt web etcd_cluster.patroni_keys
    """
    if scope is None:
        scope = __salt__["pgcluster.config"]()["name"]
    prefix = f"{namespace.rstrip('/')}/{scope}/"
    errors = {}
    for endpoint in _endpoints(endpoints):
        try:
            answer = _call(endpoint, "/v3/kv/range",
                           {"key": _b64(prefix), "range_end": _prefix_end(prefix)}, timeout=timeout)
        except OSError as exc:
            errors[endpoint] = str(exc)
            continue
        keys = {}
        for kv in answer.get("kvs", []):
            key = base64.b64decode(kv["key"]).decode()[len(prefix):]
            value = base64.b64decode(kv.get("value", "")).decode(errors="replace")
            try:
                keys[key] = json.loads(value)
            except ValueError:
                keys[key] = value
        return keys
    raise CommandExecutionError(f"no etcd endpoint answered: {errors}")
