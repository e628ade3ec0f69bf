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
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
import urllib.error
import urllib.request


def etcd(endpoint: str, path: str, body: dict | None = None, timeout: float = 2) -> dict:
    """One call to etcd's v3 JSON gateway."""
    request = urllib.request.Request(f"{endpoint}/v3/{path}", data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.load(answer)


def is_primary(patroni: str, ca: str | None) -> bool:
    """Whether Patroni here says it runs the primary (/primary 200, 503 otherwise). No answer,
    or a certificate the cluster's CA did not sign, raises: logged, not taken for a no."""
    tls = ssl.create_default_context(cafile=ca) if ca else None
    try:
        with urllib.request.urlopen(f"{patroni}/primary", timeout=2, context=tls) as answer:
            return answer.status == 200
    except urllib.error.HTTPError:
        return False


def check(local: str, patroni: str, ca: str | None = None) -> str | None:
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
        etcd(local, "maintenance/transfer-leadership", {"targetID": member["ID"]}, timeout=10)
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
    last = None
    while True:
        try:
            message = check(args.etcd, args.patroni, args.patroni_ca)
        except (urllib.error.URLError, OSError, KeyError, ValueError) as error:
            message = f"<4>cannot check etcd's leader: {error}"
        if message and message != last:  # a lasting problem is logged once
            print(message, file=sys.stderr, flush=True)
        last = message
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
