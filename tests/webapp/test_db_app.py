"""The web app against a real PostgreSQL: the pages, the JSON API, bad input, a lost leader."""

from __future__ import annotations

import html
import json
import re
import uuid
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.webapp.conftest import call, config, csrf_token, db_app, dsn, form_post

# Any text at all, lone surrogates (what JSON's "\ud800" escapes make) and control characters
# included. st.text() never draws a surrogate, and even with every category allowed it almost
# never does: so some texts have surrogates mixed in, others control characters (never both:
# the check of one would hide a missing check of the other).
ANY_CHARACTER = st.characters(exclude_categories=())
PLAIN_CHARACTER = st.characters(exclude_categories=["Cs", "Cc"])


def any_text(max_size: int | None = None):
    def mixed(odd):
        return st.lists(st.one_of(PLAIN_CHARACTER, odd), max_size=max_size).map("".join)

    return st.one_of(st.text(ANY_CHARACTER, max_size=max_size),
                     mixed(st.characters(categories=["Cs"])),
                     # NUL, which PostgreSQL cannot store, and the ones text may hold, more often.
                     mixed(st.sampled_from("\x00\t\n\r") | st.characters(categories=["Cc"])),
                     st.text(PLAIN_CHARACTER, max_size=max_size))


def any_bytes(max_size: int | None = None):
    """A body as a broken client may send it: surrogates encoded as if they were characters."""
    return any_text(max_size).map(lambda s: s.encode("utf-8", "surrogatepass"))


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
    added = form_post(app, {"text": "from the form", "idempotency_key": uuid.uuid4()},
                      path="/cgi-bin/db_app.cgi")
    assert added.status == 200
    new_id = re.search(r"id='new-id'>(\d+)<", added.text).group(1)
    shown = call(app, "GET", f"/cgi-bin/db_app.cgi?id={new_id}")
    assert "from the form" in shown.text and shown.status == 200


def test_a_retried_post_inserts_once(app):
    key = str(uuid.uuid4())
    first = call(app, "POST", "/api/messages", {"text": "once"}, headers={"Idempotency-Key": key})
    again = call(app, "POST", "/api/messages", {"text": "once"}, headers={"Idempotency-Key": key})
    assert first.json()["id"] == again.json()["id"]
    assert form_post(app, {"text": "form once", "idempotency_key": key.replace("-", "")[:8]}).status == 400


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
        ("POST", "/api/messages", {"text": 42}, None, 400, "text must be a string, not a number"),
        ("POST", "/api/messages", {"text": None}, None, 400, "text must be a string, not null"),
        ("POST", "/api/messages", {"text": ["a"]}, None, 400, "text must be a string, not an array"),
        ("POST", "/api/messages", b'{"text": "\xff\xfe"}', "application/json", 400, "UTF-8"),
        ("POST", "/api/messages", b"{not json", "application/json", 400, "not valid JSON"),
        ("POST", "/api/messages", b"[1]", "application/json", 400, "JSON object"),
        ("POST", "/api/messages", b"[" * 5000, "application/json", 400, "nested too deeply"),
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


FORM = "application/x-www-form-urlencoded"
FIELDS = st.dictionaries(st.sampled_from(["text", "txt", "idempotency_key"]) | any_text(5),
                         st.one_of(any_text(), st.integers(), st.none()), max_size=3)
REQUESTS = st.one_of(
    # Anything at all.
    st.tuples(st.sampled_from(["GET", "POST", "PUT", "HEAD", "PATCH"]),
              st.one_of(st.sampled_from(["/", "/api/messages", "/api/messages/1", "/cgi-bin/db_app.cgi",
                                         "/healthz", "/readyz", "/api/cluster", "/?id=1",
                                         "/api/messages?limit=5"]),
                        any_text(30).map(lambda s: "/" + s)),
              st.one_of(st.binary(max_size=300), any_bytes(300), FIELDS),
              st.sampled_from(["application/json", FORM, "text/plain", ""])),
    # Posts that get past the checks of the request's shape to those of its text.
    st.tuples(st.just("POST"), st.just("/api/messages"), FIELDS, st.just("application/json")),
    st.tuples(st.just("POST"), st.sampled_from(["/", "/cgi-bin/db_app.cgi"]), FIELDS, st.just(FORM)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=REQUESTS)
def test_random_input_never_gets_a_5xx(app, request):
    method, path, body, content_type = request
    if isinstance(body, dict) and content_type == FORM:
        # As the page's form would send it, token included; surrogates as their UTF-8 bytes.
        body = urlencode({"csrf_token": app.csrf.token(), **body}, errors="surrogatepass")
    response = call(app, method, path, body, content_type)  # and never a traceback (see call)
    assert response.status < 500, (response.status, response.text[:300])


def test_without_a_leader_writes_get_503_and_work_again_after(app, postgres):
    token = csrf_token(call(app, "GET", "/").text)
    key = str(uuid.uuid4())
    text = f"while down {key}"
    postgres.stop()
    try:
        down = call(app, "POST", "/api/messages", {"text": "while down"})
        assert down.status == 503
        assert down.headers["Retry-After"] == "2"
        assert "retry" in down.json()["error"].lower()
        page = form_post(app, {"text": text, "idempotency_key": key}, token=token)
        assert page.status == 503 and "<html" in page.text
        # The form comes back as sent, with the same key: sending it again cannot add it twice.
        assert f'value="{text}"' in page.text
        assert f'name="idempotency_key" value="{key}"' in page.text
    finally:
        postgres.start()
    # No restart of the app: the next write reconnects.
    assert call(app, "POST", "/api/messages", {"text": "after"}).status == 201
    assert form_post(app, {"text": text, "idempotency_key": key}, token=csrf_token(page.text)).status == 200
    assert postgres.sql(f"select count(*) from messages where text = '{text}'", db="webapp") == "1"


def test_healthz(app):
    assert call(app, "GET", "/healthz").json() == {"status": "ok"}


# -- invalid Unicode and control characters ----------------------------------------------------


@pytest.mark.parametrize(("text", "codepoint", "position"),
                         [("\ud800", "U+D800", 1), ("ab\udfffc", "U+DFFF", 3)])
def test_a_lone_surrogate_in_json_is_a_400_that_names_it(app, text, codepoint, position):
    response = call(app, "POST", "/api/messages", {"text": text})  # sent as "\ud800": valid JSON
    assert response.status == 400, response.text
    assert response.json()["error"] == (f"The text is not valid Unicode: it holds a lone surrogate, "
                                        f"{codepoint}, at character {position}.")


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    [
        ("POST", "/", "text=%ED%A0%80", "The form is not valid UTF-8: bytes ED A0 80 at byte 1 encode a "
                                        "lone surrogate, which is not Unicode."),
        ("POST", "/", b"text=ok\xed\xb0\x80", "The form is not valid UTF-8: bytes ED B0 80 at byte 8 encode "
                                              "a lone surrogate, which is not Unicode."),
        ("POST", "/", b"text=%FFok", "The form is not valid UTF-8: invalid start byte (0xFF) at byte 1."),
        ("GET", "/?id=%ED%A0%80", None, "The query string is not valid UTF-8: bytes ED A0 80 at byte 1 "
                                        "encode a lone surrogate"),
        ("GET", "/?id=\ud800", None, "The query string is not valid UTF-8: bytes ED A0 80 at byte 4 encode "
                                     "a lone surrogate"),
        ("GET", "/api/messages?limit=%FF", None, "The query string is not valid UTF-8: invalid start byte"),
        ("GET", "/api/messages/%FF", None,
         "The path is not valid UTF-8: invalid start byte (0xFF) at byte 15"),
    ],
)
def test_invalid_utf8_in_a_form_query_or_path_is_a_400_that_names_it(app, method, path, body, message):
    response = call(app, method, path, body, "application/x-www-form-urlencoded" if body else None)
    assert response.status == 400, response.text
    assert html.escape(message) in response.text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a\x00b", "contains a NUL character (U+0000) at character 2, which the database cannot store"),
        ("\x1b[31mred", "the control character U+001B at character 1"),
        ("bell\x07", "the control character U+0007 at character 5"),
        ("next line\x85", "the control character U+0085 at character 10"),
        ("del\x7f", "the control character U+007F at character 4"),
    ],
)
def test_control_characters_are_a_400_that_names_them(app, text, message):
    response = call(app, "POST", "/api/messages", {"text": text})
    assert response.status == 400 and message in response.json()["error"], response.text
    page = form_post(app, {"text": text})
    assert page.status == 400 and message in page.text, page.text


def test_tabs_and_newlines_are_stored_as_sent(app):
    text = "line 1\n\tline 2\r\n"
    created = call(app, "POST", "/api/messages", {"text": text})
    assert created.status == 201, created.text
    assert call(app, "GET", f"/api/messages/{created.json()['id']}").json()["text"] == text


# -- ids -----------------------------------------------------------------------------------


def test_an_id_is_the_whole_path_segment(app):
    message_id = call(app, "POST", "/api/messages", {"text": "find me by id"}).json()["id"]
    assert call(app, "GET", f"/api/messages/{message_id}").status == 200
    for suffix in ("%0A", "%0D%0A", "%20", "%00", "%E2%80%8B"):
        response = call(app, "GET", f"/api/messages/{message_id}{suffix}")
        assert response.status == 400, (suffix, response.text)
        assert "positive whole number" in response.json()["error"]
    assert call(app, "GET", f"/?id={message_id}%0A").status == 400
    assert call(app, "GET", "/api/messages?limit=5%0A").status == 400


@pytest.mark.parametrize(
    ("message_id", "status", "message"),
    [
        (str(2**63 - 1), 404, "There is no message 9223372036854775807."),
        (str(2**63), 400,
         "The id '9223372036854775808' is out of range: ids go from 1 to 9223372036854775807."),
        ("0" * 30 + str(2**63), 400, "is out of range"),
        ("9" * 5000, 400, "is out of range"),
        ("0", 400, "positive whole number"),
    ],
)
def test_an_id_too_large_for_the_column_is_out_of_range(app, message_id, status, message):
    response = call(app, "GET", f"/api/messages/{message_id}")
    assert response.status == status, response.text
    assert message in response.json()["error"]
    assert call(app, "GET", f"/?id={message_id}").status == status


# -- idempotency keys ------------------------------------------------------------------------


def test_a_key_used_again_for_another_text_is_a_422_and_inserts_nothing(app, postgres):
    key = str(uuid.uuid4())
    first = call(app, "POST", "/api/messages", {"text": f"first {key}"}, headers={"Idempotency-Key": key})
    assert first.status == 201
    again = call(app, "POST", "/api/messages", {"text": f"first {key}"}, headers={"Idempotency-Key": key})
    assert again.status == 201 and again.json()["id"] == first.json()["id"]
    other = call(app, "POST", "/api/messages", {"text": f"second {key}"}, headers={"Idempotency-Key": key})
    assert other.status == 422, other.text
    assert other.json()["error"] == (f"The idempotency key {key} was already used for another message "
                                     f"(ID {first.json()['id']}): send a new key for a new message.")
    body_key = call(app, "POST", "/api/messages", {"text": f"third {key}", "idempotency_key": key})
    assert body_key.status == 422
    assert postgres.sql(f"select text from messages where idempotency_key = '{key}'", db="webapp") == \
        f"first {key}"


def test_a_form_sent_again_with_other_text_is_a_422_and_a_renewed_form(app):
    key = str(uuid.uuid4())
    assert form_post(app, {"text": "form first", "idempotency_key": key}).status == 200
    other = form_post(app, {"text": "form <second>", "idempotency_key": key})
    assert other.status == 422, other.text
    assert "already used to add another message" in other.text
    assert 'value="form &lt;second&gt;"' in other.text
    renewed = re.search(r'name="idempotency_key" value="([^"]+)"', other.text).group(1)
    assert renewed != key
    resent = form_post(app, {"text": "form <second>", "idempotency_key": renewed},
                       token=csrf_token(other.text))
    assert resent.status == 200, resent.text


# -- messages that say what is wrong -----------------------------------------------------------


def test_a_missing_text_field_is_named(app):
    misspelt = call(app, "POST", "/api/messages", {"txt": "a"})
    assert misspelt.status == 400
    assert misspelt.json()["error"] == \
        'The field "text" is missing (unknown field: \'txt\'): send {"text": "..."}.'
    nothing = call(app, "POST", "/api/messages", {})
    assert nothing.json()["error"] == 'The field "text" is missing: send {"text": "..."}.'
    form = form_post(app, {"txt": "a"})
    assert form.status == 400 and "The field &quot;text&quot; is missing" in form.text


def test_with_no_messages_the_page_says_so(postgres):
    postgres.sql("CREATE DATABASE webapp_empty OWNER webapp")
    empty = db_app.App(config(dsn(dbname="webapp_empty"), dsn(dbname="webapp_empty")))
    for _ in ("before the schema exists", "after"):
        page = call(empty, "GET", "/")
        assert page.status == 200
        assert "No messages yet." in page.text and "Read from" not in page.text
        empty.db.run("writer", "SELECT 1")  # makes the table


def test_a_failed_form_comes_back_with_the_text_typed_and_the_error(app):
    text = '<b>"too long"</b> ' + "x" * 1000
    page = form_post(app, {"text": text})
    assert page.status == 400
    assert "The message is 1018 characters long; the limit is 1000." in page.text
    assert f'value="{html.escape(text)}"' in page.text
    assert "<b>" not in page.text
    assert 'http-equiv="refresh"' not in page.text  # a reload would lose the text
    assert 'http-equiv="refresh"' in call(app, "GET", "/").text


# -- properties --------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=any_text(1100))
def test_any_text_is_stored_as_sent_or_refused_with_a_400(app, text):
    response = call(app, "POST", "/api/messages", {"text": text})
    assert response.status in (201, 400), (response.status, response.text[:300])
    if response.status == 201:
        # What the JSON says: "\ud800\udc00" is a valid pair, U+10000, not two lone halves.
        sent = json.loads(json.dumps(text))
        assert call(app, "GET", f"/api/messages/{response.json()['id']}").json()["text"] == sent


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=any_text(300))
def test_any_text_in_the_form_gets_a_page_not_a_5xx(app, text):
    response = form_post(app, {"text": text}, token=app.csrf.token())
    assert response.status in (200, 400), (response.status, response.text[:300])
    assert "<form" in response.text
