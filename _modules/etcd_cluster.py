"""
The etcd cluster Patroni keeps its state in, read through etcd's v3 HTTP gateway (JSON over
HTTP, no client library). Named ``etcd_cluster``: Salt already has an ``etcd`` module (v2 API).

The endpoints come from pillar (``pgcluster``), so any minion that can reach the members works.
In the gateway's JSON, 64-bit numbers are strings and keys and values are base64.

Every endpoint is asked at once (one thread each), so an endpoint that does not answer costs one
``timeout`` (default 2 s) per call, not one per endpoint; its error names its URL. Every wait is
bounded: each function's docstring says how.

CLI Example:

.. code-block:: bash

    salt web etcd_cluster.health
    salt web etcd_cluster.status
"""

from __future__ import annotations

import base64
import functools
import http.client
import json
import time
import urllib.error
import urllib.request

from salt.exceptions import CommandExecutionError

__virtualname__ = "etcd_cluster"

DEFAULT_TIMEOUT = 2.0


def __virtual__():
    if "pgcluster_rounds.at_once" not in __utils__:
        return (False, f"{__virtualname__}: the utils module pgcluster_rounds is not synced "
                       "(salt '*' saltutil.sync_all)")
    return __virtualname__


class _NoAnswer(CommandExecutionError):
    """An etcd endpoint did not answer, or not with what the gateway answers."""


def _endpoints(endpoints=None):
    if endpoints:
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        return [e if e.startswith("http") else f"http://{e}" for e in endpoints]
    # The master's pillar as it is now, not the minion's copy (a fixed mistake must not linger).
    cfg = __salt__["pgcluster.config"](fresh=True)
    return [f"http://{e}" for e in cfg["etcd"]["endpoints"]]


def _why(exc):
    # One line, short: a BadStatusLine carries whatever the peer sent.
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _method(path):
    # The v3 gateway takes POSTs with a JSON body; /health is a GET.
    return "POST" if path.startswith("/v3/") else "GET"


def _call(endpoint, path, body=None, timeout=DEFAULT_TIMEOUT):
    """
    One request to the endpoint; its JSON. Anything else (refused, timed out, closed without an
    answer, not HTTP, an HTTP error, not JSON) raises ``_NoAnswer`` naming the URL.
    """
    method = _method(path)
    data = json.dumps(body if body is not None else {}).encode() if method == "POST" else None
    url = endpoint + path
    try:
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                text = answer.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code}: {exc.read().decode(errors='replace').strip()}"
        else:
            try:
                return json.loads(text)
            except ValueError as exc:
                reason = f"not JSON: {exc}"
    except urllib.error.URLError as exc:
        reason = exc.reason if isinstance(exc.reason, str) else _why(exc.reason)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # OSError: refused, reset, timed out (TimeoutError); HTTPException: closed without an
        # answer (RemoteDisconnected), not HTTP (BadStatusLine), cut short (IncompleteRead).
        reason = _why(exc)
    raise _NoAnswer(f"etcd did not answer {method} {url}: {reason}")


def _timed_call(endpoint, path, body, timeout):
    started = time.monotonic()
    try:
        result = _call(endpoint, path, body, timeout)
    except _NoAnswer as exc:
        result = exc
    return result, round((time.monotonic() - started) * 1000, 1)


class _Round:
    """
    Requests to several endpoints sent at once (``pgcluster_rounds``): every result is there
    ``timeout`` + GRACE seconds after the start at the latest; a request still running then
    counts as no answer.
    """

    def __init__(self, requests, timeout):
        # requests: {key: (endpoint, path, body)}; body None for {}.
        self.requests = requests
        self.round = __utils__["pgcluster_rounds.at_once"](
            {key: functools.partial(_timed_call, endpoint, path, body, float(timeout))
             for key, (endpoint, path, body) in requests.items()}, timeout, "etcd-api")

    def result(self, key):
        """(JSON or the ``_NoAnswer`` error, milliseconds taken); never waits past the deadline."""
        ended, value = self.round.get(key)
        if ended:
            return value
        if value is not None:
            raise value  # not a network error: a bug, shown as one
        endpoint, path, _body = self.requests[key]
        return _NoAnswer(f"etcd did not answer {_method(path)} {endpoint + path}: "
                         f"no answer within {self.round.timeout:g} s"), None


def _first_good(round_, keys):
    """
    (JSON, errors): the first of ``keys`` ((path, endpoint), in endpoint order) that answered.
    All were asked at once; this waits for each in turn, never after the round's deadline.
    """
    errors = {}
    for key in keys:
        answer, _took = round_.result(key)
        if not isinstance(answer, Exception):
            return answer, errors
        errors[key[1]] = str(answer)
    raise CommandExecutionError("no etcd endpoint answered: " + "; ".join(errors.values()))


def _ask_all(path, endpoints, timeout, body=None):
    """Every endpoint at once: the first good answer in endpoint order."""
    urls = _endpoints(endpoints)
    round_ = _Round({(path, e): (e, path, body) for e in urls}, timeout)
    return _first_good(round_, [(path, e) for e in urls])[0]


def _hex(value):
    return format(int(value), "x") if value not in (None, "") else None


def health(endpoints=None, timeout=DEFAULT_TIMEOUT):
    """
    Each endpoint healthy or not (with the error), and whether a quorum is healthy.
    Every endpoint is asked at once: returns within ``timeout`` seconds.

    CLI Example:

    .. code-block:: bash

        salt web etcd_cluster.health
    """
    urls = _endpoints(endpoints)
    round_ = _Round({e: (e, "/health", None) for e in urls}, timeout)
    report = {}
    for endpoint in urls:
        answer, took_ms = round_.result(endpoint)
        entry = {"healthy": False, "error": None, "took_ms": took_ms}
        if isinstance(answer, Exception):
            entry["error"] = str(answer)
        else:
            entry["healthy"] = answer.get("health") == "true"
            if not entry["healthy"]:
                entry["error"] = answer.get("reason") or "etcd reports itself unhealthy"
        report[endpoint] = entry
    healthy = sum(1 for e in report.values() if e["healthy"])
    return {"quorum": healthy > len(report) / 2, "healthy": healthy, "total": len(report),
            "endpoints": report}


def _member_rows(answer):
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


def members(endpoints=None, timeout=DEFAULT_TIMEOUT):
    """
    What ``etcdctl member list`` shows: id, status, name, peer and client URLs, learner.
    Every endpoint is asked at once: returns within ``timeout`` seconds.

    CLI Example:

    .. code-block:: bash

        salt web etcd_cluster.members
    """
    return _member_rows(_ask_all("/v3/cluster/member/list", endpoints, timeout))


def _status_row(endpoint, answer):
    if isinstance(answer, Exception):
        return {"endpoint": endpoint, "error": str(answer)}
    header = answer.get("header", {})
    return {
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
    }


def status(endpoints=None, timeout=DEFAULT_TIMEOUT):
    """
    What ``etcdctl endpoint status --cluster`` shows, per member's client URL: member id,
    version, db size, is leader, raft term and index; or the error of one that does not answer.

    The member list and every endpoint's status are asked at once: returns within ``timeout``
    seconds, or twice that when the members' client URLs are not the endpoints asked.

    CLI Example:

    .. code-block:: bash

        salt web etcd_cluster.status
    """
    asked = _endpoints(endpoints)
    requests = {}
    for endpoint in asked:
        for path in ("/v3/cluster/member/list", "/v3/maintenance/status"):
            requests[(path, endpoint)] = (endpoint, path, None)
    round_ = _Round(requests, timeout)
    try:
        answer = _first_good(round_, [("/v3/cluster/member/list", e) for e in asked])[0]
        urls = [u for m in _member_rows(answer) for u in m["client_urls"]]
    except CommandExecutionError:
        urls = []
    urls = list(dict.fromkeys(urls or asked))
    # A client URL that is not an endpoint asked (pillar names them otherwise): one more round.
    others = [u for u in urls if u not in asked]
    more = _Round({("/v3/maintenance/status", u): (u, "/v3/maintenance/status", None)
                   for u in others}, timeout) if others else None
    rows = []
    for url in urls:
        answer, _took = (round_ if url in asked else more).result(("/v3/maintenance/status", url))
        rows.append(_status_row(url, answer))
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
    with JSON values decoded, by their name under the cluster's prefix (``leader``, ``config``,
    ``members/postgres-srv1``...). Every endpoint is asked at once: returns within ``timeout``
    seconds.

    CLI Example:

    .. code-block:: bash

        salt web etcd_cluster.patroni_keys
    """
    if scope is None:
        scope = __salt__["pgcluster.config"](fresh=True)["name"]
    prefix = f"{namespace.rstrip('/')}/{scope}/"
    answer = _ask_all("/v3/kv/range", endpoints, timeout,
                      {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
    keys = {}
    for kv in answer.get("kvs", []):
        key = base64.b64decode(kv["key"]).decode()[len(prefix):]
        value = base64.b64decode(kv.get("value", "")).decode(errors="replace")
        try:
            keys[key] = json.loads(value)
        except ValueError:
            keys[key] = value
    return keys


def remove_patroni_keys(scope=None, namespace="/service", endpoints=None, timeout=DEFAULT_TIMEOUT):
    """
    Remove every key Patroni keeps for the cluster (what ``patronictl remove`` does), so that
    the next Patroni to start bootstraps the cluster anew. Only for a cluster whose every
    Patroni is stopped: ``orch.restore`` does this between stopping them and the restore.
    Returns how many keys were removed.

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 etcd_cluster.remove_patroni_keys
    """
    if scope is None:
        scope = __salt__["pgcluster.config"](fresh=True)["name"]
    prefix = f"{namespace.rstrip('/')}/{scope}/"
    answer = _ask_all("/v3/kv/deleterange", endpoints, timeout,
                      {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
    return {"removed": int(answer.get("deleted", 0)), "prefix": prefix}
