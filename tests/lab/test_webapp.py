"""The web app on the web host, through nginx, as a user reaches it: and the original task's
check: stop Patroni on the leader, then add a message."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

from tests.conftest import salt_json
from tests.lab.conftest import lab_exec, wait_healthy

WEB = "http://10.0.0.10"


def request(method: str, path: str, body: dict | None = None, headers: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(WEB + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def leader() -> str:
    listing = salt_json("web", "patroni.list", "-t", "60")["web"]
    return next(m["name"] for m in listing["members"] if m["role"] == "Leader")


def test_add_read_back_and_list_through_nginx(lab):
    status, _, body = request("POST", "/api/messages", {"text": "through nginx"})
    assert status == 201
    message = json.loads(body)
    status, _, body = request("GET", f"/api/messages/{message['id']}")
    assert status == 200 and json.loads(body)["text"] == "through nginx"
    status, _, body = request("GET", "/api/messages?limit=3")
    assert message["id"] in [m["id"] for m in json.loads(body)["messages"]]
    status, _, page = request("GET", "/cgi-bin/db_app.cgi")
    assert status == 200 and "Leader" in page and "postgres-srv" in page
    status, _, body = request("GET", "/api/cluster")
    roles = sorted(m["role"] for m in json.loads(body)["members"])
    assert roles == ["leader", "replica", "sync_standby"]


def test_bad_input_through_nginx_is_a_4xx(lab):
    assert request("GET", "/api/messages/abc")[0] == 400
    assert request("POST", "/api/messages", {"text": ""})[0] == 400
    assert request("GET", "/no/such/page")[0] == 404
    assert request("DELETE", "/api/messages/1")[0] == 405


def test_stop_patroni_on_the_leader_then_add_a_message(lab):
    """The original task's check, with every earlier message still there afterwards."""
    wait_healthy()
    before = [json.loads(request("POST", "/api/messages", {"text": f"before {i}"})[2])["id"]
              for i in range(3)]
    old = leader()
    lab_exec(old, "systemctl", "stop", "patroni")
    try:
        key = str(uuid.uuid4())
        deadline = time.monotonic() + 90
        statuses = []
        while True:
            status, headers, body = request("POST", "/api/messages", {"text": "after failover"},
                                            headers={"Idempotency-Key": key})
            statuses.append(status)
            if status == 201:
                break
            # While no leader takes writes: 503 with Retry-After, never a 500.
            assert status == 503, (status, body)
            assert headers.get("Retry-After")
            assert time.monotonic() < deadline, statuses
            time.sleep(0.5)
        new_id = json.loads(body)["id"]
        assert leader() != old
        for message_id in before:
            assert request("GET", f"/api/messages/{message_id}")[0] == 200
        assert request("GET", f"/api/messages/{new_id}")[0] == 200
        # The retried post inserted once.
        listed = json.loads(request("GET", "/api/messages?limit=20")[2])["messages"]
        assert [m["text"] for m in listed].count("after failover") == 1
    finally:
        lab_exec(old, "systemctl", "start", "patroni")
