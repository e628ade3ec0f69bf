#!/usr/bin/python3
"""Keep etcd's raft leader off the host where PostgreSQL is the primary.

Managed by Salt (etcd state); runs on every database member as etcd-leader-off-primary.service.
When the primary's host dies while it also holds etcd's leadership, etcd must first elect a new
leader, and a new etcd leader renews every lease to its full ttl: Patroni's leader key then
outlives the dead primary by 2-3 s more, and so does the write outage (bench/failover.py shows
it in the "lock free" phase). Handing the leadership to another member beforehand is a routine
etcd operation (`etcdctl move-leader`) that takes milliseconds.

Every few seconds: if Patroni here answers /primary with 200 and this host's etcd is the
leader, move the leadership to the first other member whose etcd answers.

With etcd's TLS and authentication on, it reads what etcdctl reads from its environment (the
state gives it the members' etcdctl.env): ETCDCTL_CACERT, and ETCDCTL_USER (root:password;
moving the leadership is root's).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request


class Etcd:
    """etcd's v3 JSON gateway, verified by the CA and with root's token when they are set."""

    def __init__(self, env: dict[str, str]):
        self.ca = env.get("ETCDCTL_CACERT")
        user = env.get("ETCDCTL_USER") or ""
        self.user, _, self.password = user.partition(":")
        self.token: str | None = None

    def _tls(self) -> ssl.SSLContext | None:
        # Made for every call: a CA replaced on disk is read without a restart.
        return ssl.create_default_context(cafile=self.ca) if self.ca else None

    def _post(self, url: str, body: dict, timeout: float, token: str | None) -> dict:
        headers = {"Content-Type": "application/json", **({"Authorization": token} if token else {})}
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(request, timeout=timeout, context=self._tls()) as answer:
            return json.load(answer)

    def _login(self, endpoint: str, timeout: float) -> str | None:
        try:
            return self._post(f"{endpoint}/v3/auth/authenticate",
                              {"name": self.user, "password": self.password}, timeout, None)["token"]
        except urllib.error.HTTPError as error:
            if b"authentication is not enabled" in error.read():
                return None  # a first deployment, before the bootstrap member turns it on
            raise

    def __call__(self, endpoint: str, path: str, body: dict | None = None,
                 timeout: float = 2, as_user: bool = False) -> dict:
        """One call; as_user: under the user's token (asked for again once when etcd refuses
        it). Status and the member list need none."""
        url = f"{endpoint}/v3/{path}"
        for attempt in (1, 2):
            token = None
            if as_user and self.user:
                if self.token is None:
                    self.token = self._login(endpoint, timeout)
                token = self.token
            try:
                return self._post(url, body or {}, timeout, token)
            except urllib.error.HTTPError as error:
                if attempt == 2 or token is None or error.code not in (400, 401):
                    raise
                self.token = None  # expired (etcd's simple tokens last 5 minutes unused)
        raise AssertionError("unreachable")


def is_primary(patroni: str, ca: str | None) -> bool:
    """Whether Patroni here says it runs the primary (/primary 200, 503 otherwise). No answer,
    or a certificate the cluster's CA did not sign, raises: logged, not taken for a no."""
    tls = ssl.create_default_context(cafile=ca) if ca else None
    try:
        with urllib.request.urlopen(f"{patroni}/primary", timeout=2, context=tls) as answer:
            return answer.status == 200
    except urllib.error.HTTPError:
        return False


def check(etcd: Etcd, local: str, patroni: str, ca: str | None = None) -> str | None:
    """Move the leadership away if needed; what was done, for the journal."""
    if not is_primary(patroni, ca):
        return None
    status = etcd(local, "maintenance/status")
    me = status["header"]["member_id"]
    if status["leader"] != me:
        return None
    members = etcd(local, "cluster/member/list")["members"]
    names = {m["ID"]: m.get("name") or m["ID"] for m in members}
    for member in members:
        if member["ID"] == me or not member.get("clientURLs"):
            continue
        try:
            etcd(member["clientURLs"][0], "maintenance/status")
        except (urllib.error.URLError, OSError):
            continue
        etcd(local, "maintenance/transfer-leadership", {"targetID": member["ID"]}, timeout=10,
             as_user=True)
        return (f"<5>moved etcd's leadership from {names[me]} to {names[member['ID']]}: "
                "PostgreSQL's primary runs here")
    return "<4>etcd's leader runs with PostgreSQL's primary here, and no other member answers"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--etcd", required=True, help="this host's etcd client URL")
    parser.add_argument("--patroni", required=True, help="this host's Patroni REST API URL")
    parser.add_argument("--patroni-ca", help="the CA certificate that verifies an https --patroni")
    parser.add_argument("--interval", type=float, default=5)
    args = parser.parse_args()
    client = Etcd(dict(os.environ))
    last = None
    while True:
        try:
            message = check(client, args.etcd, args.patroni, args.patroni_ca)
        except (urllib.error.URLError, OSError, KeyError, ValueError) as error:
            message = f"<4>cannot check etcd's leader: {error}"
        if message and message != last:  # a lasting problem is logged once
            print(message, file=sys.stderr, flush=True)
        last = message
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
