"""The form's CSRF token: stateless, good in every gunicorn worker, and the JSON API without one."""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlencode

from tests.webapp.conftest import call, config, csrf_token, db_app, form_post

FORM = "application/x-www-form-urlencoded"


def count(app, postgres, text: str) -> str:
    app.db.run("writer", "SELECT 1")  # the first write makes the table: this may be the first
    return postgres.sql(f"select count(*) from messages where text = '{text}'", db="webapp")


def test_a_form_post_needs_a_good_token_from_the_page(app, postgres):
    text = f"csrf {uuid.uuid4()}"
    fields = {"text": text, "idempotency_key": str(uuid.uuid4())}
    refused = [
        ("without its security token", call(app, "POST", "/", urlencode(fields), FORM)),
        ("not valid", form_post(app, fields, token="x")),
        ("not valid", form_post(app, fields, token=f"{int(time.time())}." + "0" * 64)),  # forged
        ("not valid", form_post(app, fields, token=app.csrf.token(now=time.time() + 3600))),
        ("has expired", form_post(app, fields, token=app.csrf.token(now=time.time() - 13 * 3600))),
    ]
    for message, answer in refused:
        assert answer.status == 403, (message, answer.text)
        assert message in answer.text and "reload the page" in answer.text
        # Not filled in again: another site's text must not come back with a good token.
        assert text not in answer.text
    assert count(app, postgres, text) == "0"
    assert form_post(app, fields, path="/cgi-bin/db_app.cgi").status == 200
    assert count(app, postgres, text) == "1"


def test_the_json_api_needs_no_token(app):
    answer = call(app, "POST", "/api/messages", {"text": "no token needed"},
                  headers={"Origin": "http://elsewhere.example"})
    assert answer.status == 201, answer.text


def test_a_token_from_one_worker_is_good_in_another(postgres):
    # gunicorn's workers each make their own App from the same config file.
    one, two = db_app.App(config()), db_app.App(config())
    token = csrf_token(call(one, "GET", "/").text)
    assert form_post(two, {"text": "page from one, post to two"}, token=token).status == 200


def test_the_configs_csrf_secret_is_the_key_when_present(postgres):
    token = db_app.App(config(csrf_secret="a" * 32)).csrf.token()
    same = db_app.App(config(csrf_secret="a" * 32))
    assert form_post(same, {"text": "same secret"}, token=token).status == 200
    for other in (config(csrf_secret="b" * 32), config()):
        answer = form_post(db_app.App(other), {"text": "other secret"}, token=token)
        assert answer.status == 403 and "not valid" in answer.text
