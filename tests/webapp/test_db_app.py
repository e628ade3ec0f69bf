"""The web app against a real PostgreSQL: the pages, the JSON API, bad input, a lost leader."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.webapp.conftest import call


def test_add_then_read_back_and_list(app):
    created = call(app, "POST", "/api/messages", {"text": "hello, cluster"})
    assert created.status == 201
    message = created.json()
    assert message["text"] == "hello, cluster" and message["id"] > 0
    got = call(app, "GET", f"/api/messages/{message['id']}")
    assert got.status == 200
    assert {"id", "text", "created_at", "server"} <= set(got.json())
    assert got.json()["text"] == "hello, cluster"
    listed = call(app, "GET", "/api/messages?limit=5").json()["messages"]
    assert listed[0]["id"] == message["id"]


def test_the_original_address_adds_and_shows_messages(app):
    added = call(app, "POST", "/cgi-bin/db_app.cgi", f"text=from+the+form&idempotency_key={uuid.uuid4()}",
                 "application/x-www-form-urlencoded")
    assert added.status == 200
    new_id = re.search(r"id='new-id'>(\d+)<", added.text).group(1)
    shown = call(app, "GET", f"/cgi-bin/db_app.cgi?id={new_id}")
    assert "from the form" in shown.text and shown.status == 200


def test_a_retried_post_inserts_once(app):
    key = str(uuid.uuid4())
    first = call(app, "POST", "/api/messages", {"text": "once"}, headers={"Idempotency-Key": key})
    again = call(app, "POST", "/api/messages", {"text": "once"}, headers={"Idempotency-Key": key})
    assert first.json()["id"] == again.json()["id"]
    form = f"text=form+once&idempotency_key={key.replace('-', '')[:8]}"
    assert call(app, "POST", "/", form, "application/x-www-form-urlencoded").status == 400


def test_sql_injection_is_stored_and_shown_literally(app, postgres):
    evil = "'); DROP TABLE messages; -- <script>alert(1)</script>"
    message = call(app, "POST", "/api/messages", {"text": evil}).json()
    assert call(app, "GET", f"/api/messages/{message['id']}").json()["text"] == evil
    page = call(app, "GET", f"/?id={message['id']}").text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert postgres.sql("select count(*) from messages", db="webapp") != "0"


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type", "status", "message"),
    [
        ("POST", "/api/messages", {"text": ""}, None, 400, "empty"),
        ("POST", "/api/messages", {"text": "   "}, None, 400, "empty"),
        ("POST", "/api/messages", {"text": "x" * 1001}, None, 400, "the limit is 1000"),
        ("POST", "/api/messages", {"text": 42}, None, 400, "empty"),
        ("POST", "/api/messages", b'{"text": "\xff\xfe"}', "application/json", 400, "UTF-8"),
        ("POST", "/api/messages", b"{not json", "application/json", 400, "not valid JSON"),
        ("POST", "/api/messages", b"[1]", "application/json", 400, "JSON object"),
        ("POST", "/api/messages", b"text=hi", "text/plain", 415, "JSON"),
        ("POST", "/api/messages", {"text": "x" * 20000}, None, 413, "limit is 16384"),
        ("POST", "/", b"text=%ff%fe", "application/x-www-form-urlencoded", 400, "UTF-8"),
        ("GET", "/api/messages/abc", None, None, 400, "positive whole number"),
        ("GET", "/api/messages/-1", None, None, 400, "positive whole number"),
        ("GET", "/api/messages/99999999999", None, None, 404, "no message"),
        ("GET", "/?id=1%200", None, None, 400, "positive whole number"),
        ("GET", "/api/messages?limit=0", None, None, 400, "limit"),
        ("GET", "/nowhere", None, None, 404, "no page"),
        ("DELETE", "/api/messages/1", None, None, 405, "not allowed"),
        ("PUT", "/", None, None, 405, "not allowed"),
    ],
)
def test_bad_input_gets_a_clear_4xx(app, method, path, body, content_type, status, message):
    response = call(app, method, path, body, content_type)
    assert response.status == status
    assert message.lower() in response.text.lower()
    if status == 405:
        assert "Allow" in response.headers


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "HEAD", "PATCH"]),
    path=st.one_of(st.sampled_from(["/", "/api/messages", "/api/messages/1", "/cgi-bin/db_app.cgi",
                                    "/healthz", "/api/cluster"]),
                   st.text(max_size=30).map(lambda s: "/" + s)),
    body=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                   st.dictionaries(st.text(max_size=5), st.one_of(st.text(), st.integers(), st.none()),
                                   max_size=3)),
    content_type=st.sampled_from(["application/json", "application/x-www-form-urlencoded",
                                  "text/plain", ""]),
)
def test_random_input_never_gets_a_5xx(app, method, path, body, content_type):
    response = call(app, method, path, body, content_type)
    assert response.status < 500, (response.status, response.text[:300])


def test_without_a_leader_writes_get_503_and_work_again_after(app, postgres):
    postgres.stop()
    try:
        down = call(app, "POST", "/api/messages", {"text": "while down"})
        assert down.status == 503
        assert down.headers["Retry-After"] == "2"
        assert "retry" in down.json()["error"].lower()
        page = call(app, "POST", "/", "text=while+down", "application/x-www-form-urlencoded")
        assert page.status == 503 and "<html" in page.text
    finally:
        postgres.start()
    # No restart of the app: the next write reconnects.
    assert call(app, "POST", "/api/messages", {"text": "after"}).status == 201


def test_healthz(app):
    assert call(app, "GET", "/healthz").json() == {"status": "ok"}
