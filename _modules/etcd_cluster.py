"""
The etcd cluster Patroni keeps its state in, read through etcd's v3 HTTP gateway (JSON over
HTTP, no client library). Named ``etcd_cluster``: Salt already has an ``etcd`` module (v2 API).

The endpoints come from pillar (``pgcluster``), so any minion that can reach the members works.
In the gateway's JSON, 64-bit numbers are strings and keys and values are base64.

With ``pgcluster:etcd:tls`` every call is HTTPS verified by the cluster's CA. With
``pgcluster:etcd:auth`` the calls that need a user take a token: reading Patroni's keys as
``reader``, removing them as ``patroni``, managing users as ``root`` (passwords from
``pgcluster_credentials:etcd_*``). Health, status and the member list need none in etcd 3.4, so
they work without a quorum.

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
import os
import re
import ssl
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


class _Unanswered(CommandExecutionError):
    """No endpoint of a call answered (each one's error in the message)."""


class _Refused(_NoAnswer):
    """etcd answered with an error of its own (``error``: its message, e.g. permission denied).
    A kind of _NoAnswer so that a round keeps it as that endpoint's result."""

    def __init__(self, message, error):
        super().__init__(message)
        self.error = error


def _config(fresh=True, pillar=None):
    # The master's pillar as it is now, not the minion's copy (a fixed mistake must not linger);
    # a state passes fresh=False to act on its run's pillar, override included.
    if pillar:
        return __salt__["pgcluster.config"](fresh=True, pillar=pillar)
    return __salt__["pgcluster.config"](fresh=fresh)


def _endpoints(endpoints=None, cfg=None):
    cfg = cfg or _config()
    if endpoints:
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        scheme = "https" if cfg["etcd"].get("tls") else "http"
        return [e if e.startswith("http") else f"{scheme}://{e}" for e in endpoints]
    return [cfg["etcd"]["urls"][n] for n in cfg["member_names"]]


def _tls(cfg):
    """The TLS context for etcd (trusting the cluster's CA), made in the caller's thread and
    handed to the round's; None without ``pgcluster:etcd:tls``."""
    if not cfg["etcd"].get("tls"):
        return None
    ca_file = cfg["tls"]["ca_file"]
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise CommandExecutionError(f"etcd's TLS: cannot load the cluster's CA {ca_file} "
                                    f"(salt/tls puts it on every cluster host): {_why(exc)}") from None


def _password(user):
    password = __salt__["pillar.get"](f"pgcluster_credentials:etcd_{user}", None, unmask=True)
    if not password:
        raise CommandExecutionError(f"etcd's {user} password: pillar pgcluster_credentials:"
                                    f"etcd_{user} is not given to this minion")
    return password


def _why(exc):
    # One line, short: a BadStatusLine carries whatever the peer sent.
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _method(path):
    # The v3 gateway takes POSTs with a JSON body; /health is a GET.
    return "POST" if path.startswith("/v3/") else "GET"


def _etcd_error(text):
    """etcd's own message in a gateway error ({"error": ..., "code": ...}), else None."""
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return None
    return error if isinstance(error, str) else None


def _call(endpoint, path, body=None, timeout=DEFAULT_TIMEOUT, *, tls=None, token=None):
    """
    One request to the endpoint; its JSON. etcd's own error raises ``_Refused``; anything else
    (refused, timed out, closed without an answer, not HTTP, another HTTP error, not JSON)
    ``_NoAnswer``; both name the URL. ``tls``: the context for https; ``token``: etcd's.
    """
    method = _method(path)
    data = json.dumps(body if body is not None else {}).encode() if method == "POST" else None
    url = endpoint + path
    headers = {"Content-Type": "application/json", **({"Authorization": token} if token else {})}
    try:
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=tls) as answer:
                text = answer.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace").strip()
            error = _etcd_error(text)
            if error:
                raise _Refused(f"etcd refused {method} {url}: {error}", error) from None
            reason = f"HTTP {exc.code}: {text}"
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


def _timed_call(endpoint, path, body, timeout, *, tls=None, token=None):
    started = time.monotonic()
    try:
        result = _call(endpoint, path, body, timeout, tls=tls, token=token)
    except _NoAnswer as exc:
        result = exc
    return result, round((time.monotonic() - started) * 1000, 1)


class _Round:
    """
    Requests to several endpoints sent at once (``pgcluster_rounds``): every result is there
    ``timeout`` + GRACE seconds after the start at the latest; a request still running then
    counts as no answer.
    """

    def __init__(self, requests, timeout, tls=None, token=None):
        # requests: {key: (endpoint, path, body)}; body None for {}.
        self.requests = requests
        self.round = __utils__["pgcluster_rounds.at_once"](
            {key: functools.partial(_timed_call, endpoint, path, body, float(timeout), tls=tls,
                                   token=token)
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
    When none answered well, etcd's own refusal (the first) is raised before any "no answer".
    """
    errors = {}
    refusals = []
    for key in keys:
        answer, _took = round_.result(key)
        if not isinstance(answer, Exception):
            return answer, errors
        errors[key[1]] = str(answer)
        if isinstance(answer, _Refused):
            refusals.append(answer)
    if refusals:
        raise refusals[0]
    raise _Unanswered("no etcd endpoint answered: " + "; ".join(errors.values()))


def _rpc(urls, path, body, timeout, *, tls=None, token=None):
    """Every endpoint at once: the first good answer in endpoint order (see _first_good)."""
    round_ = _Round({(path, e): (e, path, body) for e in urls}, timeout, tls, token)
    return _first_good(round_, [(path, e) for e in urls])[0]


def _token(urls, tls, user, timeout):
    """A token for ``user`` (every endpoint asked at once), or None while etcd's authentication
    is off. A wrong password raises etcd's refusal, naming the user."""
    body = {"name": user, "password": _password(user)}
    try:
        return _rpc(urls, "/v3/auth/authenticate", body, timeout, tls=tls)["token"]
    except _Refused as exc:
        if "authentication is not enabled" in exc.error:
            return None
        raise _Refused(f"etcd refused the user {user} (pgcluster_credentials:etcd_{user}): "
                       f"{exc.error}", exc.error) from None


def _ask_all(path, endpoints, timeout, body=None, user=None):
    """Every endpoint at once: the first good answer in endpoint order. ``user``: the etcd user
    to ask as, with ``pgcluster:etcd:auth``."""
    cfg = _config()
    urls = _endpoints(endpoints, cfg)
    tls = _tls(cfg)
    token = _token(urls, tls, user, timeout) if user and cfg["etcd"].get("auth") else None
    return _rpc(urls, path, body, timeout, tls=tls, token=token)


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
    cfg = _config()
    urls = _endpoints(endpoints, cfg)
    round_ = _Round({e: (e, "/health", None) for e in urls}, timeout, _tls(cfg))
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
    cfg = _config()
    asked = _endpoints(endpoints, cfg)
    tls = _tls(cfg)
    requests = {}
    for endpoint in asked:
        for path in ("/v3/cluster/member/list", "/v3/maintenance/status"):
            requests[(path, endpoint)] = (endpoint, path, None)
    round_ = _Round(requests, timeout, tls)
    try:
        answer = _first_good(round_, [("/v3/cluster/member/list", e) for e in asked])[0]
        urls = [u for m in _member_rows(answer) for u in m["client_urls"]]
    except CommandExecutionError:
        urls = []
    urls = list(dict.fromkeys(urls or asked))
    # A client URL that is not an endpoint asked (pillar names them otherwise): one more round.
    others = [u for u in urls if u not in asked]
    more = _Round({("/v3/maintenance/status", u): (u, "/v3/maintenance/status", None)
                   for u in others}, timeout, tls) if others else None
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
    seconds, twice that with ``pgcluster:etcd:auth`` (a round for the reader's token first).

    CLI Example:

    .. code-block:: bash

        salt web etcd_cluster.patroni_keys
    """
    if scope is None:
        scope = __salt__["pgcluster.config"](fresh=True)["name"]
    prefix = f"{namespace.rstrip('/')}/{scope}/"
    answer = _ask_all("/v3/kv/range", endpoints, timeout,
                      {"key": _b64(prefix), "range_end": _prefix_end(prefix)}, user="reader")
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
    Returns how many keys were removed. With ``pgcluster:etcd:auth`` it asks as ``patroni``,
    a round for the token first (within twice ``timeout``).

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 etcd_cluster.remove_patroni_keys
    """
    if scope is None:
        scope = __salt__["pgcluster.config"](fresh=True)["name"]
    prefix = f"{namespace.rstrip('/')}/{scope}/"
    answer = _ask_all("/v3/kv/deleterange", endpoints, timeout,
                      {"key": _b64(prefix), "range_end": _prefix_end(prefix)}, user="patroni")
    return {"removed": int(answer.get("deleted", 0)), "prefix": prefix}


# etcd's users besides root and what their role may do, on the cluster's prefix only.
ROLES = {"patroni": "READWRITE", "reader": "READ"}


def _write(urls, path, body, timeout, *, tls, token):
    """A change, sent once: to the first endpoint that answers, the next only when one does not
    (a change sent to all at once could land after the next one)."""
    errors = []
    for url in urls:
        try:
            return _call(url, path, body, timeout, tls=tls, token=token)
        except _Refused:
            raise
        except _NoAnswer as exc:
            errors.append(str(exc))
    raise _Unanswered("no etcd endpoint answered: " + "; ".join(errors))


def _refused_with(call, *needles):
    """call()'s answer, or None when etcd refused it with a message holding one of needles."""
    try:
        return call()
    except _Refused as exc:
        if any(n in exc.error for n in needles):
            return None
        raise


def _wanted_permissions(prefix, perm_type):
    return [{"permType": perm_type, "key": _b64(prefix), "range_end": _prefix_end(prefix)}]


class _Plan:
    """The steps that bring etcd's users and roles to what the pillar wants, done as they are
    found when ``apply`` (each change to one endpoint, in order)."""

    def __init__(self, cfg, timeout, apply):
        self.urls, self.tls, self.timeout, self.apply = _endpoints(None, cfg), _tls(cfg), timeout, apply
        self.prefix = cfg["etcd"]["prefix"]
        self.token = _token(self.urls, self.tls, "root", timeout)
        self.steps, self.done = [], []

    def step(self, what, path, body):
        self.steps.append(what)
        if not self.apply:
            return
        try:
            _write(self.urls, path, body, self.timeout, tls=self.tls, token=self.token)
        except CommandExecutionError as exc:
            done = "; ".join(self.done) or "nothing"
            raise CommandExecutionError(f"{what}: {exc} (done before it: {done})") from None
        self.done.append(what)

    def ask(self, path, body, missing):
        """A read; None when etcd says it has no such thing (``missing``, its message)."""
        return _refused_with(lambda: _rpc(self.urls, path, body, self.timeout, tls=self.tls,
                                          token=self.token), missing)

    def roles(self):
        for role in ("root", *ROLES):
            found = self.ask("/v3/auth/role/get", {"role": role}, "role name not found")
            if found is None:
                self.step(f"add role {role}", "/v3/auth/role/add", {"name": role})
                found = {}
            if role == "root":
                continue
            wanted = _wanted_permissions(self.prefix, ROLES[role])
            # etcd's JSON leaves out what is zero: READ, an empty range_end.
            have = [{"permType": p.get("permType", "READ"), "key": p.get("key"),
                     "range_end": p.get("range_end")} for p in found.get("perm", [])]
            for perm in have:
                if perm not in wanted:  # anything beyond the prefix, or another kind of access
                    key = base64.b64decode(perm["key"] or "").decode(errors="replace")
                    self.step(f"revoke from role {role} its {perm['permType']} on {key}",
                              "/v3/auth/role/revoke",
                              {"role": role, "key": perm["key"], "range_end": perm["range_end"]})
            for perm in wanted:
                if perm not in have:
                    self.step(f"grant role {role} {perm['permType']} on {self.prefix}",
                              "/v3/auth/role/grant", {"name": role, "perm": perm})

    def users(self):
        enabled = self.token is not None
        for user in ("root", *ROLES):
            found = self.ask("/v3/auth/user/get", {"name": user}, "user name not found")
            if found is None:
                self.step(f"add user {user}", "/v3/auth/user/add",
                          {"name": user, "password": _password(user)})
                found = {}
            elif not enabled or (user != "root" and _refused_with(
                    lambda user=user: _token(self.urls, self.tls, user, self.timeout),
                    "authentication failed") is None):
                # Its password is not the pillar's (or cannot be checked before auth is on).
                self.step(f"set user {user}'s password", "/v3/auth/user/changepw",
                          {"name": user, "password": _password(user)})
            for role in found.get("roles", []):
                if role != user:  # each user has the role of its name, and no other
                    self.step(f"revoke from user {user} role {role}", "/v3/auth/user/revoke",
                              {"name": user, "role": role})
            if user not in found.get("roles", []):
                self.step(f"grant user {user} role {user}", "/v3/auth/user/grant",
                          {"user": user, "role": user})


def auth_enabled(timeout=DEFAULT_TIMEOUT, fresh=True):
    """
    Whether etcd's authentication is on: etcd asks a client without a user for one. Every
    endpoint is asked at once; returns within ``timeout`` seconds, or raises when none answers.
    ``fresh=False``: this run's pillar says how to reach etcd (what a state passes).

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 etcd_cluster.auth_enabled
    """
    cfg = _config(fresh)
    body = {"key": _b64(cfg["etcd"]["prefix"]), "keys_only": True, "limit": 1}
    return _refused_with(lambda: _rpc(_endpoints(None, cfg), "/v3/kv/range", body, timeout,
                                      tls=_tls(cfg)), "user name is empty") is None


def auth_plan(timeout=DEFAULT_TIMEOUT, apply=False, enable=True, fresh=True, wait=0):
    """
    What etcd's authentication as ``pgcluster:etcd:auth`` wants takes from here. On: the root
    user (role root), a ``patroni`` user whose role reads and writes the cluster's prefix only,
    a ``reader`` user whose role only reads it, each with its password from pillar and no other
    role, then authentication on (unless ``enable=False``: the users and roles only, for a
    step that runs before Patroni has its login). Off: authentication off (as root). Returns
    the steps still to do (``[]``: nothing); with ``apply=True`` they are done, in that order
    (the state ``etcd_cluster.auth_managed`` does this); a step that fails says which were
    done before it. A root password etcd refuses raises, naming the pillar key. ``fresh``:
    the master's pillar as it is now (``False``: this minion's, a state run's override
    included).

    Every read asks every endpoint at once (each within ``timeout``); each change goes to one.
    While no endpoint answers, the plan is made again, a second apart, for up to ``wait``
    seconds (members that just formed the cluster may answer nothing for seconds while their
    hosts install packages: seen in the lab), then their errors raised.

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 etcd_cluster.auth_plan
    """
    cfg = _config(fresh)
    deadline = time.monotonic() + float(wait)
    while True:
        try:
            return _auth_steps(cfg, timeout, apply, enable)
        except _Unanswered:
            if time.monotonic() > deadline:
                raise
        time.sleep(1)


def _auth_steps(cfg, timeout, apply, enable):
    plan = _Plan(cfg, timeout, apply)
    if not cfg["etcd"]["auth"]:
        if plan.token is not None:
            plan.step("disable authentication", "/v3/auth/disable", {})
        return plan.steps
    plan.roles()
    plan.users()
    if plan.token is None and enable:
        plan.step("enable authentication", "/v3/auth/enable", {})
    return plan.steps


# Switching etcd's TLS under a running cluster (the runner pgcluster_etcd.tls_switch): members
# move one at a time, so for a while some serve https and some http, on the same ports.


def tls_stage(fresh=True, pillar=None):
    """
    What this member's etcd runs and what the pillar wants: ``running`` is ``tls``, ``plain``,
    ``bridge`` (plain listeners with the certificates that reach peers already on TLS: the
    halfway point of a switch) or None (no data yet: a new member starts as the pillar says),
    read from its environment file, which salt/etcd writes before each restart it makes;
    ``wanted`` is ``tls`` or ``plain`` (``pgcluster:etcd:tls``); ``pending``: a running etcd
    not as wanted, which only the switch may change. ``pillar``: an override, as
    ``bin/deploy --pillar`` gives.

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 etcd_cluster.tls_stage
    """
    cfg = _config(fresh, pillar)
    etcd = cfg["etcd"]
    wanted = "tls" if etcd["tls"] else "plain"
    member_dir = os.path.join(etcd["data_dir"], "member")
    if not (os.path.isdir(member_dir) and os.path.isfile(etcd["env_file"])):
        return {"running": None, "wanted": wanted, "pending": False}
    with open(etcd["env_file"], encoding="utf-8") as env:
        text = env.read()
    if 'ETCD_LISTEN_PEER_URLS="https://' in text:
        running = "tls"
    elif "ETCD_PEER_CERT_FILE=" in text:
        running = "bridge"
    else:
        running = "plain"
    return {"running": running, "wanted": wanted, "pending": running != wanted}


def _both_schemes(cfg):
    """Every member's client URL in both schemes, the pillar's first: mid-switch, either."""
    first, second = ("https", "http") if cfg["etcd"]["tls"] else ("http", "https")
    port = cfg["etcd"]["client_port"]
    return [f"{scheme}://{cfg['members'][name]['address']}:{port}"
            for scheme in (first, second) for name in cfg["member_names"]]


def _tls_if_any(cfg):
    """A context trusting the cluster's CA when this host has it (mid-switch some members serve
    https whatever the pillar says), else None."""
    if cfg["etcd"]["tls"] or os.path.isfile(cfg["tls"]["ca_file"]):
        return _tls({**cfg, "etcd": {**cfg["etcd"], "tls": True}})
    return None


def _metrics(url, tls, timeout):
    """A member's /metrics text; None when it does not answer."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=timeout, context=tls) as answer:
            return answer.read().decode(errors="replace")
    except (OSError, http.client.HTTPException, ValueError):
        return None


def _peer_series(text):
    """(this member's id, {peer id: (whether its link is active, how often it dropped)}) from a
    member's /metrics text."""
    local, peers = None, {}
    for line in text.splitlines():
        found = _PEER_SERIES.match(line)
        if found:
            metric, local, remote, value = found.groups()
            active, drops = peers.get(remote, (False, 0))
            if metric == "active_peers":
                active = float(value) > 0
            else:
                drops = int(float(value))
            peers[remote] = (active, drops)
    return local, peers


_PEER_SERIES = re.compile(r'etcd_network_(active_peers|disconnected_peers_total)'
                          r'\{Local="(\w+)",Remote="(\w+)"\} (\S+)$')


def _active_peers(url, tls, timeout):
    """The ids of the peers a member has a live raft connection with, from its /metrics'
    etcd_network_active_peers; None when it does not answer."""
    text = _metrics(url, tls, timeout)
    if text is None:
        return None
    return sorted(peer for peer, (up, _drops) in _peer_series(text)[1].items() if up)


def tls_switch_health(timeout=DEFAULT_TIMEOUT, pillar=None):
    """
    Each member during a TLS switch: whether it is healthy, the scheme it serves clients (None
    when it answers on neither), how many peers it has a live connection with (``peers``: a
    member that cannot dial a peer leaves that peer without one) and which (``linked``: their
    names), and its peer and client URLs in etcd's member list. Every member is asked on both
    schemes at once: returns within ``timeout`` seconds (twice that for the member list).

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 etcd_cluster.tls_switch_health
    """
    cfg = _config(True, pillar)
    urls = _both_schemes(cfg)
    tls = _tls_if_any(cfg)
    round_ = _Round({u: (u, "/health", None) for u in urls}, timeout, tls)
    peers = __utils__["pgcluster_rounds.at_once"](
        {u: functools.partial(_active_peers, u, tls, float(timeout)) for u in urls}, timeout,
        "etcd-metrics")
    try:
        listed = {m["name"]: m for m in _member_rows(
            _rpc(urls, "/v3/cluster/member/list", {}, timeout, tls=tls))}
    except CommandExecutionError:
        listed = {}
    names = {m["id"]: name for name, m in listed.items()}
    port = cfg["etcd"]["client_port"]
    report = {}
    for name in cfg["member_names"]:
        address = cfg["members"][name]["address"]
        entry = {"healthy": False, "serves": None, "peers": None, "linked": [], "errors": [],
                 "peer_urls": listed.get(name, {}).get("peer_urls", []),
                 "client_urls": listed.get(name, {}).get("client_urls", [])}
        answers = {scheme: round_.result(f"{scheme}://{address}:{port}")[0]
                   for scheme in ("https", "http")}
        served = [scheme for scheme, a in answers.items() if not isinstance(a, Exception)]
        if not served:
            entry["errors"] = [str(a) for a in answers.values()]
        else:
            scheme = entry["serves"] = served[0]
            active = peers.get(f"{scheme}://{address}:{port}")[1]
            if active is not None:
                entry["peers"] = len(active)
                entry["linked"] = sorted(names.get(peer, peer) for peer in active)
            entry["healthy"] = answers[scheme].get("health") == "true"
            if not entry["healthy"]:
                entry["errors"] = [answers[scheme].get("reason") or "etcd reports itself unhealthy"]
        report[name] = entry
    return report


def peer_scheme_set(scheme, timeout=DEFAULT_TIMEOUT, pillar=None):
    """
    Move this member's peer URL in etcd's member list to ``scheme`` (``https`` or ``http``), as
    ``etcdctl member update`` does: the other members dial it that way from now on, so its
    etcd must restart listening so right after (the runner pgcluster_etcd.tls_switch does
    both). Returns whether it changed. As root when etcd's authentication is on.

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 etcd_cluster.peer_scheme_set https
    """
    if scheme not in ("https", "http"):
        raise CommandExecutionError(f"peer_scheme_set: scheme must be https or http, not {scheme!r}")
    cfg = _config(True, pillar)
    me = __grains__["id"]
    if me not in cfg["members"]:
        raise CommandExecutionError(f"peer_scheme_set: {me} is no member of pgcluster:members")
    url = f"{scheme}://{cfg['members'][me]['address']}:{cfg['etcd']['peer_port']}"
    urls = _both_schemes(cfg)
    tls = _tls_if_any(cfg)
    answer = _rpc(urls, "/v3/cluster/member/list", {}, timeout, tls=tls)
    member = next((m for m in answer.get("members", []) if m.get("name") == me), None)
    if member is None:
        raise CommandExecutionError(f"peer_scheme_set: etcd's member list has no {me}")
    if member.get("peerURLs") == [url]:
        return {"changed": False, "peer_urls": [url]}
    token = _token(urls, tls, "root", timeout) if cfg["etcd"]["auth"] else None
    _write(urls, "/v3/cluster/member/update", {"ID": member["ID"], "peerURLs": [url]}, timeout,
           tls=tls, token=token)
    return {"changed": True, "peer_urls": [url]}


def _peer_url(cfg, name):
    scheme = "https" if cfg["etcd"]["tls"] else "http"
    return f"{scheme}://{cfg['members'][name]['address']}:{cfg['etcd']['peer_port']}"


def _named_rows(cfg, rows):
    """The member list's rows, an unstarted member (no name yet) named by the pillar member
    whose peer URL it has."""
    by_url = {_peer_url(cfg, n): n for n in cfg["member_names"]}
    for row in rows:
        if not row["name"]:
            row["name"] = next((by_url[u] for u in row["peer_urls"] if u in by_url), "")
    return rows


def _membership_write(urls, path, body, timeout, *, tls, token, wait):
    """A member list change. etcd refuses one ("unhealthy cluster") unless the member asked has
    seen every voting member's link come up at least 5 s ago. A link made again (an etcd
    restarted, a firewall reloaded) breaks that for a moment; and after a member crashed, a
    message sent to it before the crash may fail only once it is back, which leaves the sender
    counting it down (until a link is made again) although every link works: the members are
    asked in turn, then all again a second apart for up to ``wait`` seconds, then the last
    refusal raised with each member's peer links as they are then."""
    deadline = time.monotonic() + float(wait)
    while True:
        refusal, refused, unanswered = None, [], []
        for url in urls:
            try:
                return _write([url], path, body, timeout, tls=tls, token=token)
            except _Refused as exc:
                if "unhealthy cluster" not in exc.error:
                    raise
                refusal = exc
                refused.append(url)
            except _Unanswered as exc:
                unanswered.append(str(exc))
        if refusal is None:
            raise _Unanswered("; ".join(unanswered))
        if time.monotonic() > deadline:
            raise _Refused(f"etcd refused POST {path} at {', '.join(refused)} for {wait} s: "
                           f"{refusal.error} (peer links now: {_peer_links(urls, tls, timeout)})"
                           + "".join(f"; {u}" for u in unanswered), refusal.error)
        time.sleep(1)


def _peer_links(urls, tls, timeout):
    """Each member's raft links from its /metrics, named from the member list: "srv1: srv2 up,
    srv3 DOWN (dropped 4 times)"; a member that does not answer says so."""
    try:
        names = {row["id"]: row["name"] or row["peer_urls"][0]
                 for row in _member_rows(_rpc(urls, "/v3/cluster/member/list", {}, timeout, tls=tls))}
    except CommandExecutionError as exc:
        return f"unknown ({exc})"
    texts = __utils__["pgcluster_rounds.at_once"](
        {u: functools.partial(_metrics, u, tls, float(timeout)) for u in urls}, timeout,
        "etcd-metrics")
    reports = []
    for url in urls:
        text = texts.get(url)[1]
        if text is None:
            reports.append(f"{url} does not answer")
            continue
        local, peers = _peer_series(text)
        links = [f"{names[peer]} {'up' if up else 'DOWN'}" + (f" (dropped {drops} times)" if drops else "")
                 for peer, (up, drops) in sorted(peers.items(), key=lambda kv: names.get(kv[0], ""))
                 if peer in names]  # not a member removed before
        reports.append(f"{names.get(local, url)}: {', '.join(links) or 'no peer'}")
    return "; ".join(reports)


def member_add(name, timeout=DEFAULT_TIMEOUT, pillar=None, wait=15):
    """
    Add the pillar member ``name`` to the running etcd cluster with its peer URL from pillar,
    as ``etcdctl member add`` does, unless the member list has that URL already. Its etcd must
    then start as a member of an existing cluster, with ``initial_cluster`` (the runner
    pgcluster_members.join does both). Asked of the other members; as root when etcd's
    authentication is on. Returns whether it changed, the member's id and ``initial_cluster``.

    etcd refuses ("unhealthy cluster") until its leader has been connected to every member
    for 5 s: asked again for up to ``wait`` seconds, then its refusal raised.

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 etcd_cluster.member_add postgres-srv4
    """
    cfg = _config(True, pillar)
    if name not in cfg["members"]:
        raise CommandExecutionError(f"member_add: {name} is no member of pgcluster:members")
    url = _peer_url(cfg, name)
    urls = [u for n, u in cfg["etcd"]["urls"].items() if n != name]
    tls = _tls(cfg)
    rows = _member_rows(_rpc(urls, "/v3/cluster/member/list", {}, timeout, tls=tls))
    changed = not any(url in row["peer_urls"] for row in rows)
    if changed:
        token = _token(urls, tls, "root", timeout) if cfg["etcd"]["auth"] else None
        answer = _membership_write(urls, "/v3/cluster/member/add", {"peerURLs": [url]},
                                   timeout, tls=tls, token=token, wait=wait)
        rows = _member_rows(answer)
    rows = _named_rows(cfg, rows)
    unnamed = [row["peer_urls"] for row in rows if not row["name"]]
    if unnamed:
        raise CommandExecutionError(f"member_add: etcd lists members added but never started "
                                    f"that are no pillar member: {unnamed}")
    mine = next(row for row in rows if url in row["peer_urls"])
    initial = ",".join(f"{row['name']}={row['peer_urls'][0]}"
                       for row in sorted(rows, key=lambda r: r["name"]))
    return {"changed": changed, "id": mine["id"], "initial_cluster": initial}


def member_remove(name, timeout=DEFAULT_TIMEOUT, pillar=None, wait=15):
    """
    Remove the member ``name`` from etcd's member list, as ``etcdctl member remove`` does
    (``name``: as etcd lists it, or a pillar member added but never started); nothing when it
    is not there. Its etcd stops serving at once. Asked of the pillar's members; as root when
    etcd's authentication is on. Returns whether it changed and the member's id.

    etcd refuses ("unhealthy cluster") while the members left would not have a quorum of
    peers connected for 5 s: asked again for up to ``wait`` seconds, then its refusal raised.

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 etcd_cluster.member_remove postgres-srv4
    """
    cfg = _config(True, pillar)
    urls = [u for n, u in cfg["etcd"]["urls"].items() if n != name]
    tls = _tls(cfg)
    answer = _rpc(urls, "/v3/cluster/member/list", {}, timeout, tls=tls)
    rows = _named_rows(cfg, _member_rows(answer))
    row = next((r for r in rows if r["name"] == name), None)
    if row is None:
        return {"changed": False, "id": None}
    token = _token(urls, tls, "root", timeout) if cfg["etcd"]["auth"] else None
    _membership_write(urls, "/v3/cluster/member/remove", {"ID": str(int(row["id"], 16))},
                      timeout, tls=tls, token=token, wait=wait)
    return {"changed": True, "id": row["id"]}
