"""The web app on the web host, through nginx, as a user reaches it: and the original task's
check: stop Patroni on the leader, then add a message, on each of the app's data paths."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

from lab.cluster import cluster, leader, salt
from tests.lab.conftest import lab_exec, wait_healthy

WEB = cluster().url


def request(method: str, path: str, body: dict | None = None, headers: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(WEB + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def post_and_drop_the_answer(body: dict, key: str) -> None:
    """A POST whose answer is lost: the whole request is sent, then the connection closed
    without reading a byte back (the app still runs it: nginx has handed it on)."""
    url = urllib.parse.urlsplit(WEB)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request("POST", "/api/messages", json.dumps(body).encode(),
                     {"Content-Type": "application/json", "Idempotency-Key": key})
    finally:
        conn.close()


def count_after_replay(text: str) -> int:
    """How many of the latest messages have this text, read once the replica that answers has
    replayed every write made so far: a marker is written last, and replay keeps commit order,
    so an answer that holds the marker holds every row committed before it."""
    status, _, body = request("POST", "/api/messages", {"text": f"marker {uuid.uuid4()}"})
    assert status == 201, body
    marker = json.loads(body)["id"]
    deadline = time.monotonic() + 30
    while True:
        listed = json.loads(request("GET", "/api/messages?limit=100")[2])["messages"]
        if marker in [m["id"] for m in listed]:
            return [m["text"] for m in listed].count(text)
        assert time.monotonic() < deadline, "the marker never reached the replica that answers reads"
        time.sleep(0.2)


def test_add_read_back_and_list_through_nginx(lab):
    wait_healthy(settled=True)
    status, _, body = request("POST", "/api/messages", {"text": "through nginx"})
    assert status == 201
    message = json.loads(body)
    status, _, body = request("GET", f"/api/messages/{message['id']}")
    assert status == 200 and json.loads(body)["text"] == "through nginx"
    status, _, body = request("GET", "/api/messages?limit=3")
    assert message["id"] in [m["id"] for m in json.loads(body)["messages"]]
    status, _, page = request("GET", "/cgi-bin/db_app.cgi")
    assert status == 200 and "Leader" in page and all(m in page for m in cluster().members)
    status, _, body = request("GET", "/api/cluster")
    roles = sorted(m["role"] for m in json.loads(body)["members"])
    assert roles == sorted(r.lower().replace(" ", "_") for r in cluster().settled_roles)


def test_bad_input_through_nginx_is_a_4xx(lab):
    assert request("GET", "/api/messages/abc")[0] == 400
    assert request("POST", "/api/messages", {"text": ""})[0] == 400
    assert request("GET", "/no/such/page")[0] == 404
    assert request("DELETE", "/api/messages/1")[0] == 405
    # gunicorn %-decodes the path: a newline after the id is not part of a number.
    status, _, body = request("GET", "/api/messages/1%0A")
    assert status == 400 and "positive whole number" in json.loads(body)["error"], body
    # json.dumps sends it as "\ud800": valid JSON, not valid Unicode.
    status, _, body = request("POST", "/api/messages", {"text": "\ud800"})
    assert status == 400 and "lone surrogate" in json.loads(body)["error"], body


def test_healthz_and_readyz_on_the_healthy_lab(lab):
    wait_healthy()
    status, _, body = request("GET", "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    # The app's writer reaches a primary (pg_is_in_recovery() false) and its reader answers.
    status, _, body = request("GET", "/readyz")
    assert status == 200, body
    assert json.loads(body) == {"status": "ready", "checks": {"writer": "ok", "reader": "ok"}}


def test_a_retried_post_inserts_once(lab):
    """Retries after an answer came back, after one was lost, and one with other text."""
    wait_healthy()
    key = str(uuid.uuid4())
    text = f"retried {key}"
    status, _, body = request("POST", "/api/messages", {"text": text}, headers={"Idempotency-Key": key})
    assert status == 201, body
    first = json.loads(body)
    for _ in range(2):
        status, _, body = request("POST", "/api/messages", {"text": text}, headers={"Idempotency-Key": key})
        assert status == 201 and json.loads(body)["id"] == first["id"], body
    status, _, body = request("POST", "/api/messages", {"text": f"other {key}"},
                              headers={"Idempotency-Key": key})
    assert status == 422 and "already used for another message" in json.loads(body)["error"], body
    assert count_after_replay(text) == 1
    assert count_after_replay(f"other {key}") == 0

    # The answer lost on the way back: the client cannot tell whether it was stored, and sends
    # it again with the same key (maybe while the first is still running).
    key = str(uuid.uuid4())
    text = f"answer lost {key}"
    post_and_drop_the_answer({"text": text}, key)
    status, _, body = request("POST", "/api/messages", {"text": text}, headers={"Idempotency-Key": key})
    assert status == 201, body
    status, _, again = request("POST", "/api/messages", {"text": text}, headers={"Idempotency-Key": key})
    assert status == 201 and json.loads(again)["id"] == json.loads(body)["id"], again
    assert count_after_replay(text) == 1


def _apply_data_path(path: str | None) -> None:
    """pgcluster:webapp:data_path as ``path`` (None: the pillar's own) on the members' pg_hba
    (patroni) and the web app."""
    args = ["pillar=" + json.dumps({"pgcluster": {"webapp": {"data_path": path}}})] if path else []
    c = cluster()
    for target, sls in ((",".join(c.members), "patroni"), (c.web, "webapp")):
        result = salt("-L", target, "state.sls", sls, *args, timeout=300, check=True)
        failed = [s["comment"] for ret in result.values() for s in ret.values() if not s["result"]]
        assert len(result) == len(target.split(",")) and not failed, failed or result


@pytest.fixture(params=["haproxy", "libpq"])
def data_path(lab, request):
    """The app on each data path; on libpq with HAProxy stopped, which it must not need."""
    if request.param == cluster().model["webapp"]["data_path"]:
        yield request.param
        return
    _apply_data_path(request.param)
    if request.param == "libpq":
        lab_exec(cluster().web, "systemctl", "stop", "haproxy")
    try:
        yield request.param
    finally:
        lab_exec(cluster().web, "systemctl", "start", "haproxy")
        _apply_data_path(None)


def test_stop_patroni_on_the_leader_then_add_a_message(data_path):
    """The original task's check, with every earlier message still there afterwards."""
    wait_healthy()
    deadline = time.monotonic() + 30
    while request("GET", "/readyz")[0] != 200:  # the app just restarted on its data path
        assert time.monotonic() < deadline, request("GET", "/readyz")
        time.sleep(0.5)
    before = [json.loads(request("POST", "/api/messages", {"text": f"before {i}"})[2])["id"]
              for i in range(3)]
    old = leader()
    lab_exec(old, "systemctl", "stop", "patroni")
    try:
        key = str(uuid.uuid4())
        text = f"after failover {key}"
        deadline = time.monotonic() + 90
        statuses = []
        while True:
            status, headers, body = request("POST", "/api/messages", {"text": text},
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
        # Retried after it was taken, on the new leader: the same row, nothing inserted.
        status, _, body = request("POST", "/api/messages", {"text": text}, headers={"Idempotency-Key": key})
        assert status == 201 and json.loads(body)["id"] == new_id, (status, body)
        assert count_after_replay(text) == 1
    finally:
        lab_exec(old, "systemctl", "start", "patroni")
