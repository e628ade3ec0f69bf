"""The page's live part: its charts of the last hour, asked of a real Prometheus (Debian's, on
loopback, its data made by promtool from a switchover half an hour ago), the static files it
loads, and what the app answers when there is no Prometheus to ask."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.webapp.conftest import call, config, db_app

MEMBERS = ("postgres-srv1", "postgres-srv2", "postgres-srv3")
STEP = 15


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _series(now: int) -> str:
    """An hour of a cluster's metrics in OpenMetrics: srv1 leads, then srv2 (a switchover 30
    minutes ago, srv1's PostgreSQL stopped for 5 minutes after it); the leader writes 10 rows a
    second; srv3 replays 4 KiB behind; srv2, while a replica, reports a position a scrape
    ahead of the leader's (scrapes are a moment apart)."""
    lines = []
    start, switch = now - 3600, now - 1800
    for name in ("patroni_primary", "patroni_replica", "patroni_postgres_running",
                 "patroni_xlog_location", "patroni_xlog_replayed_location",
                 "pg_stat_database_tup_inserted", "pg_stat_database_tup_updated",
                 "pg_stat_database_tup_deleted"):
        lines.append(f"# TYPE {name} gauge")
        for member in MEMBERS:
            job = "postgres" if name.startswith("pg_") else "patroni"
            for t in range(start, now + 1, STEP):
                leader = ("postgres-srv1" if t < switch else "postgres-srv2") == member
                position = (t - start) * 1000
                stopped = member == "postgres-srv1" and switch <= t < switch + 300
                behind = {"postgres-srv3": 4096, "postgres-srv2": -1000}.get(member, 0)
                value = {
                    "patroni_primary": int(leader), "patroni_replica": int(not leader),
                    "patroni_postgres_running": int(not stopped),
                    "patroni_xlog_location": position if leader else 0,
                    "patroni_xlog_replayed_location":
                        0 if leader or stopped else position - behind,
                    "pg_stat_database_tup_inserted": 10 * (t - start),
                }.get(name, 0)
                labels = f'job="{job}",instance="{member}"' + (
                    ',datname="webapp"' if job == "postgres" else "")
                lines.append(f"{name}{{{labels}}} {value} {t}")
    return "\n".join(lines) + "\n# EOF\n"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    for tool in ("prometheus", "promtool"):
        assert shutil.which(tool), f"{tool} is not installed: make apt installs it"
    tmp = tmp_path_factory.mktemp("prometheus")
    now = int(time.time()) // STEP * STEP
    (tmp / "series.om").write_text(_series(now))
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", tmp / "series.om",
                    tmp / "data"], check=True, capture_output=True, timeout=120)
    (tmp / "prometheus.yml").write_text("global: {}\n")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        ["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "Prometheus did not start"
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _points(values: list) -> int:
    return sum(v is not None for v in values)


def test_the_charts_show_the_hours_writes_lag_and_who_led(prometheus):
    charts = db_app.App(config(prometheus=prometheus)).charts()["charts"]
    assert set(charts) == {"writes", "lag", "leader"}
    times = charts["leader"]["times"]
    assert times == sorted(times) and times[1] - times[0] == db_app.CHART_STEP
    # Who led: srv1 the first half hour, srv2 since; never both at once.
    leader = charts["leader"]["series"]
    assert set(leader) == {"postgres-srv1", "postgres-srv2"}
    srv1 = [i for i, v in enumerate(leader["postgres-srv1"]) if v is not None]
    srv2 = [i for i, v in enumerate(leader["postgres-srv2"]) if v is not None]
    assert srv1 and srv2 and max(srv1) < min(srv2)
    # The replicas' lag: srv3 4 KiB behind; srv2 "ahead" shows 0, not less; srv1 while its
    # PostgreSQL is stopped (position 0) shows nothing, not the leader's whole WAL.
    lag = charts["lag"]["series"]
    assert set(lag) == {"postgres-srv1", "postgres-srv2", "postgres-srv3"}
    assert max(v for v in lag["postgres-srv3"] if v is not None) == 4096
    assert {v for v in lag["postgres-srv2"] if v is not None} == {0}
    assert max(v for v in lag["postgres-srv1"] if v is not None) == 0
    switch = min(srv2)  # srv1's PostgreSQL is stopped for 5 minutes from here
    assert all(v is None for v in lag["postgres-srv1"][switch + 2:switch + 300 // STEP - 1])
    assert _points(lag["postgres-srv1"][switch + 300 // STEP + 5:]) > 0
    # 10 rows a second on whichever member leads, one series.
    writes = charts["writes"]["series"]["writes"]
    assert _points(writes) > 100
    # (the first minute's rates have fewer samples to go on)
    values = sorted(v for v in writes if v is not None)
    assert values[len(values) // 2] == pytest.approx(10) and values[-1] == pytest.approx(10)


def test_the_charts_api_answers_json_and_is_counted(prometheus):
    app = db_app.App(config(prometheus=prometheus))
    status, _, body = _call(app, "/api/charts")
    assert status == 200 and '"charts"' in body
    _, _, metrics = _call(app, "/metrics")
    assert 'route="/api/charts",status="200"' in metrics


def test_without_monitoring_the_charts_say_so_with_a_503(prometheus):
    status, _, body = _call(db_app.App(config()), "/api/charts")
    assert status == 503 and "monitoring is off" in body


def test_a_prometheus_that_does_not_answer_is_named_not_a_server_error():
    url = f"http://127.0.0.1:{_free_port()}"
    status, _, body = _call(db_app.App(config(prometheus=url)), "/api/charts")
    assert status == 503 and url in body and "Traceback" not in body


@pytest.mark.parametrize(("path", "kind", "needle"), [
    ("/static/uPlot.iife.min.js", "application/javascript", "uPlot"),
    ("/static/uPlot.min.css", "text/css", ".uplot"),
    ("/static/live.js", "application/javascript", "/api/charts"),
])
def test_the_page_loads_its_scripts_from_the_app_no_cdn(path, kind, needle):
    status, headers, body = _call(db_app.App(config()), path)
    assert status == 200 and headers["Content-Type"].startswith(kind)
    assert needle in body


def test_the_page_refers_to_no_other_site():
    page = db_app.PAGE
    assert "http://" not in page and "https://" not in page and "//" not in page.replace(
        "http-equiv", "")



def _call(app, path: str) -> tuple[str, dict, str]:
    answer = call(app, "GET", path)
    return answer.status, dict(answer.headers), answer.body.decode()
