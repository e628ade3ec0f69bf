"""/readyz against real servers: a primary, a real hot standby of it, a port nothing listens on
and one that accepts and then says nothing. /healthz needs none of them."""

from __future__ import annotations

import threading
import time

from tests.webapp.conftest import STANDBY_PORT, call, config, db_app, dsn


def test_readyz_is_200_with_a_primary_and_a_reader(app):
    ready = call(app, "GET", "/readyz")
    assert ready.status == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {"writer": "ok", "reader": "ok"}}


def test_readyz_is_503_when_the_writer_reaches_a_standby(standby):
    # A standby as the reader is fine; as the writer it would refuse every insert.
    app = db_app.App(config(writer=dsn(STANDBY_PORT), reader=dsn(STANDBY_PORT)))
    answer = call(app, "GET", "/readyz")
    assert answer.status == 503, answer.text
    body = answer.json()
    assert body["missing"] == ["writer"] and body["checks"]["reader"] == "ok"
    assert body["checks"]["writer"] == "reached a standby (pg_is_in_recovery() is true), not the primary"
    assert body["error"].startswith("Not ready: writer: reached a standby")


def test_readyz_is_503_naming_a_reader_that_is_down(postgres, closed_port):
    app = db_app.App(config(reader=dsn(closed_port)))
    answer = call(app, "GET", "/readyz")
    assert answer.status == 503, answer.text
    body = answer.json()
    assert body["missing"] == ["reader"] and body["checks"]["writer"] == "ok"
    assert body["checks"]["reader"].startswith("cannot connect: ")
    assert "refused" in body["checks"]["reader"]


def test_readyz_answers_within_a_few_seconds_when_a_server_hangs(postgres, silent_port):
    app = db_app.App(config(writer=dsn(silent_port)))
    answers = []
    # In a thread, so that a probe that hangs fails this test instead of hanging the run.
    probe = threading.Thread(target=lambda: answers.append(call(app, "GET", "/readyz")), daemon=True)
    started = time.monotonic()
    probe.start()
    probe.join(15)
    took = time.monotonic() - started
    assert answers, "/readyz did not answer within 15 s"
    assert took < 3.5, took
    assert answers[0].status == 503 and answers[0].json()["missing"] == ["writer"]


def test_healthz_is_liveness_only_and_needs_no_database(closed_port):
    down = db_app.App(config(dsn(closed_port), dsn(closed_port)))
    alive = call(down, "GET", "/healthz")
    assert alive.status == 200 and alive.json() == {"status": "ok"}
    ready = call(down, "GET", "/readyz")
    assert ready.status == 503 and ready.json()["missing"] == ["writer", "reader"]
