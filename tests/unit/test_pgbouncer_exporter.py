"""The project's PgBouncer exporter (salt/monitoring/files/pgbouncer-exporter.py): SHOW POOLS
and SHOW STATS rows, as PgBouncer 1.18's admin console gives them, in Prometheus's text
format, checked by promtool's own parser."""

from __future__ import annotations

import shutil
import subprocess
from decimal import Decimal

import pytest

from tests.unit.conftest import load_module

exporter = load_module("salt/monitoring/files/pgbouncer-exporter.py")

# Columns and types as psycopg2 gives them from PgBouncer 1.18 (numeric columns as Decimal).
POOLS = [{"database": "webapp", "user": "webapp", "cl_active": 3, "cl_waiting": 1,
          "cl_cancel_req": 0, "sv_active": 2, "sv_idle": 5, "sv_used": 0, "sv_tested": 0,
          "sv_login": 0, "maxwait": 1, "maxwait_us": 250000, "pool_mode": "transaction"},
         {"database": "pgbouncer", "user": "pgbouncer", "cl_active": 1, "cl_waiting": 0,
          "sv_active": 0, "sv_idle": 0, "sv_used": 0, "sv_login": 0, "maxwait": 0,
          "maxwait_us": 0}]
STATS = [{"database": "webapp", "total_xact_count": Decimal(123456789),
          "total_query_count": Decimal(223456789), "total_received": Decimal(9876543210),
          "total_sent": Decimal(19876543210), "total_xact_time": Decimal(2500000),
          "total_query_time": Decimal(1500000), "total_wait_time": Decimal(250)}]


def samples(text: str) -> dict[str, str]:
    return {line.rpartition(" ")[0]: line.rpartition(" ")[2]
            for line in text.splitlines() if line and not line.startswith("#")}


def test_pools_and_stats_are_exposed_in_full_under_the_community_exporters_names():
    found = samples(exporter.exposition(POOLS, STATS, up=True))
    assert found["pgbouncer_up"] == "1"
    assert found['pgbouncer_pools_client_active_connections{database="webapp",user="webapp"}'] == "3"
    assert found['pgbouncer_pools_client_waiting_connections{database="webapp",user="webapp"}'] == "1"
    assert found['pgbouncer_pools_client_maxwait_seconds{database="webapp",user="webapp"}'] == "1.25"
    # Counters in full (not six significant digits), times in seconds.
    assert found['pgbouncer_stats_received_bytes_total{database="webapp"}'] == "9876543210"
    assert found['pgbouncer_stats_sql_transactions_pooled_total{database="webapp"}'] == "123456789"
    assert found['pgbouncer_stats_sql_transactions_duration_seconds_total{database="webapp"}'] == "2.5"
    assert found['pgbouncer_stats_client_wait_seconds_total{database="webapp"}'] == "0.00025"


def test_a_pgbouncer_that_does_not_answer_is_up_0_and_nothing_else():
    found = samples(exporter.exposition([], [], up=False))
    assert found == {"pgbouncer_up": "0"}


def test_promtool_parses_the_exposition(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: make apt installs it (Debian's prometheus)"
    text = exporter.exposition(POOLS, STATS, up=True)
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                            text=True, check=False)
    # promtool's lint may only advise (exit 3 is "lint problems"); a parse error is exit 1.
    assert result.returncode in (0, 3), result.stderr + result.stdout
    assert "error while linting" not in result.stderr, result.stderr


@pytest.mark.parametrize("name", ['we"ird', "back\\slash", "new\nline"])
def test_label_values_are_escaped(name):
    text = exporter.exposition([{**POOLS[0], "database": name}], [], up=True)
    assert "\n" + 'pgbouncer_pools_client_active_connections{database="' in text
    line = next(line for line in text.splitlines() if line.startswith(
        "pgbouncer_pools_client_active_connections"))
    assert line.count('"') - line.count('\\"') == 4, line


def test_a_scrape_while_another_hangs_answers_at_once_that_pgbouncer_does_not(monkeypatch):
    asked = []
    monkeypatch.setattr(exporter, "_scrape", lambda port, user: asked.append(port) or "")
    exporter.SCRAPING.acquire()  # a scrape stuck in PgBouncer's admin console
    try:
        assert samples(exporter.scrape(6432, "pgbouncer_stats")) == {"pgbouncer_up": "0"}
        assert asked == []  # PgBouncer was not asked a second time
    finally:
        exporter.SCRAPING.release()
    exporter.scrape(6432, "pgbouncer_stats")
    assert asked == [6432]
