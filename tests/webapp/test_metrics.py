"""The web app's Prometheus metrics: /metrics, what is counted and under which labels, and
gunicorn's multiprocess mode (several worker processes, one /metrics)."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import uuid
from types import SimpleNamespace

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO
from tests.webapp.conftest import call, config, db_app, form_post

Series = tuple[str, frozenset]


def scrape(app) -> dict[Series, float]:
    """Every sample /metrics answers, as {(name, labels): value}."""
    response = call(app, "GET", "/metrics")
    assert response.status == 200, response.text
    return samples(response.text)


def samples(text: str) -> dict[Series, float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def requests(method: str, route: str, status: int) -> Series:
    return "webapp_requests_total", frozenset({"method": method, "route": route,
                                               "status": str(status)}.items())


def delta(before: dict, after: dict, series: Series) -> float:
    return after.get(series, 0.0) - before.get(series, 0.0)


def test_metrics_answers_prometheus_text_format(app):
    call(app, "GET", "/healthz")
    response = call(app, "GET", "/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert "# TYPE webapp_requests_total counter" in response.text
    assert "# TYPE webapp_request_duration_seconds histogram" in response.text
    assert "# TYPE webapp_messages_added_total counter" in response.text
    assert requests("GET", "/healthz", 200) in samples(response.text)
    head = call(app, "HEAD", "/metrics")
    assert head.status == 200 and head.headers["Content-Type"] == CONTENT_TYPE_LATEST


def test_posting_to_metrics_is_a_405(app):
    response = call(app, "POST", "/metrics", b"x", "text/plain")
    assert response.status == 405
    assert response.headers["Allow"] == "GET, HEAD"
    after = scrape(app)
    assert after[requests("POST", "/metrics", 405)] >= 1


def test_every_answer_is_counted_under_its_route_template_and_real_status(app):
    before = scrape(app)
    assert call(app, "GET", "/").status == 200
    created = call(app, "POST", "/api/messages", {"text": "counted"})
    assert created.status == 201
    assert call(app, "GET", f"/api/messages/{created.json()['id']}").status == 200
    assert call(app, "GET", "/api/messages/abc").status == 400
    assert call(app, "GET", "/api/messages/99999999999").status == 404
    assert call(app, "POST", "/api/messages", b"{not json", "application/json").status == 400
    assert call(app, "GET", "/nowhere").status == 404
    assert call(app, "DELETE", "/healthz").status == 405
    assert call(app, "GET", "/api/messages?limit=0").status == 400
    after = scrape(app)
    expected = {
        ("GET", "/", 200): 1, ("POST", "/api/messages", 201): 1, ("GET", "/api/messages/{id}", 200): 1,
        ("GET", "/api/messages/{id}", 400): 1, ("GET", "/api/messages/{id}", 404): 1,
        ("POST", "/api/messages", 400): 1, ("GET", "other", 404): 1, ("DELETE", "/healthz", 405): 1,
        ("GET", "/api/messages", 400): 1,
        ("GET", "/metrics", 200): 1,  # the first scrape, counted once it had answered
    }
    changed = {key: value for key in after if key[0] == "webapp_requests_total"
               and (value := delta(before, after, key))}
    assert changed == {requests(*labels): count for labels, count in expected.items()}


def test_a_503_is_counted_as_a_503(closed_port):
    down = db_app.App(config({"host": "127.0.0.1", "port": closed_port, "dbname": "x", "user": "x",
                              "password": "x"}))
    before = scrape(down)
    assert call(down, "POST", "/api/messages", {"text": "nowhere to go"}).status == 503
    assert delta(before, scrape(down), requests("POST", "/api/messages", 503)) == 1


def test_unknown_paths_and_methods_make_no_new_series(app):
    call(app, "GET", "/probe-0")
    call(app, "BREW", "/probe-0")
    call(app, "BREW", "/healthz")
    call(app, "BREW", "/api/messages/1/x")
    series_before = set(scrape(app))
    cache_before = len(db_app._SERIES)
    for i in range(1, 200):
        assert call(app, "GET", f"/probe-{i}").status == 404
        assert call(app, "GET", f"/api/messages/{i}/x/{i}").status == 404
        assert call(app, "BREW", f"/probe-{i}").status == 404
        assert call(app, f"M{i}", "/healthz").status == 405
    text = call(app, "GET", "/metrics").text
    assert set(samples(text)) == series_before
    assert len(db_app._SERIES) == cache_before
    assert "probe" not in text and "BREW" not in text and "M17" not in text
    assert 'webapp_requests_total{method="other",route="other",status="404"}' in text
    assert 'webapp_requests_total{method="other",route="/healthz",status="405"}' in text


def test_the_histogram_observes_every_answer(app):
    before = scrape(app)
    for _ in range(5):
        call(app, "GET", "/healthz")
    after = scrape(app)
    labels = frozenset({"method": "GET", "route": "/healthz"}.items())
    assert delta(before, after, ("webapp_request_duration_seconds_count", labels)) == 5
    assert delta(before, after, ("webapp_request_duration_seconds_sum", labels)) > 0
    buckets = {dict(key[1])["le"]: value for key, value in after.items()
               if key[0] == "webapp_request_duration_seconds_bucket" and
               key[1] >= labels and len(key[1]) == 3}
    assert set(buckets) == {"0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
                            "1.0", "2.5", "5.0", "+Inf"}
    assert buckets["+Inf"] == after["webapp_request_duration_seconds_count", labels]


ADDED = ("webapp_messages_added_total", frozenset())


def test_messages_added_counts_inserts_only(app):
    key, form_key = str(uuid.uuid4()), str(uuid.uuid4())
    before = scrape(app)
    sent = call(app, "POST", "/api/messages", {"text": "added once"}, headers={"Idempotency-Key": key})
    assert sent.status == 201
    assert delta(before, scrape(app), ADDED) == 1
    # A retry finds the row it made: the same answer, no second insert, no second count.
    again = call(app, "POST", "/api/messages", {"text": "added once"}, headers={"Idempotency-Key": key})
    assert again.status == 201 and again.json()["id"] == sent.json()["id"]
    assert set(again.json()) == {"id", "text", "created_at", "server"}
    assert delta(before, scrape(app), ADDED) == 1
    spent = call(app, "POST", "/api/messages", {"text": "other"}, headers={"Idempotency-Key": key})
    assert spent.status == 422
    assert call(app, "POST", "/api/messages", {"text": ""}).status == 400
    assert delta(before, scrape(app), ADDED) == 1
    assert form_post(app, {"text": "from the form", "idempotency_key": form_key}).status == 200
    assert form_post(app, {"text": "from the form", "idempotency_key": form_key}).status == 200
    assert delta(before, scrape(app), ADDED) == 2


# --- several processes, as gunicorn's workers -------------------------------------------------

WORKER = """
import io, json, sys
sys.path.insert(0, sys.argv[1])
import db_app
app = db_app.App(json.loads(sys.argv[2]))
answers = []
for method, path, body in json.loads(sys.argv[3]):
    data = json.dumps(body).encode() if body is not None else b""
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "",
               "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(data)),
               "wsgi.input": io.BytesIO(data), "wsgi.errors": sys.stderr}
    got = {}
    payload = b"".join(app(environ, lambda status, headers: got.update(status=status)))
    answers.append([got["status"], payload.decode()])
print(json.dumps(answers))
"""


def worker(metrics_dir, requests_: list) -> subprocess.Popen:
    """A process of its own (PROMETHEUS_MULTIPROC_DIR is read when prometheus_client is
    imported) that answers requests_ through the app and prints the answers."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    return subprocess.Popen([sys.executable, "-c", WORKER, str(REPO / "webapp"), json.dumps(config()),
                             json.dumps(requests_)], env=env, stdout=subprocess.PIPE, text=True)


def answers(process: subprocess.Popen) -> list:
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    return json.loads(out)


def test_metrics_sums_every_worker_process(postgres, tmp_path):
    first = worker(tmp_path, [["GET", "/healthz", None], ["GET", "/healthz", None],
                              ["GET", "/nowhere", None]])
    second = worker(tmp_path, [["GET", "/healthz", None], ["POST", "/api/messages", {"text": "mp"}]])
    assert [status for status, _ in answers(first)] == ["200 OK", "200 OK", "404 Not Found"]
    assert [status for status, _ in answers(second)] == ["200 OK", "201 Created"]
    assert {p.name.split("_")[0] for p in tmp_path.iterdir()} == {"counter", "histogram"}
    (status, text), = answers(worker(tmp_path, [["GET", "/metrics", None]]))
    assert status == "200 OK"
    found = samples(text)
    assert found[requests("GET", "/healthz", 200)] == 3
    assert found[requests("GET", "other", 404)] == 1
    assert found[requests("POST", "/api/messages", 201)] == 1
    assert found[ADDED] == 1
    labels = frozenset({"method": "GET", "route": "/healthz"}.items())
    assert found["webapp_request_duration_seconds_count", labels] == 3


def test_gunicorns_hooks_empty_the_directory_and_mark_dead_workers(tmp_path, monkeypatch):
    hooks = runpy.run_path(str(REPO / "salt/webapp/files/gunicorn.conf.py"))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for name in ("counter_11.db", "histogram_11.db", "gauge_livesum_12.db", "gauge_all_12.db"):
        (tmp_path / name).write_bytes(b"")
    hooks["on_starting"](SimpleNamespace())
    assert list(tmp_path.iterdir()) == []
    for name in ("counter_12.db", "gauge_livesum_12.db", "gauge_liveall_12.db", "gauge_livesum_13.db"):
        (tmp_path / name).write_bytes(b"")
    hooks["child_exit"](SimpleNamespace(), SimpleNamespace(pid=12))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_12.db", "gauge_livesum_13.db"]
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    hooks["on_starting"](SimpleNamespace())  # outside multiprocess mode: nothing to do
    hooks["child_exit"](SimpleNamespace(), SimpleNamespace(pid=13))
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize("path", ["/", "/healthz", "/readyz", "/api/cluster", "/api/messages",
                                  "/api/messages/7", "/api/messages/", "/metrics"])
def test_each_route_has_its_template(path):
    expected = {"/api/messages/7": "/api/messages/{id}", "/api/messages/": "/api/messages/{id}"}
    assert db_app.route_of(path) == expected.get(path, path)


@pytest.mark.parametrize("path", ["/x", "/api/messages/1/", "/healthz/", "/metrics/x", "//",
                                  "/cgi-bin/other.cgi", "/API/messages"])
def test_anything_else_is_other(path):
    assert db_app.route_of(path) == "other"
