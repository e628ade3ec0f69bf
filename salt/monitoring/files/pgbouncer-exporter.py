#!/usr/bin/python3
"""PgBouncer's statistics for Prometheus: SHOW POOLS and SHOW STATS of the admin console,
asked over the local socket at each scrape, under the names of the Prometheus community's
pgbouncer_exporter.

Debian 12's prometheus-pgbouncer-exporter (1.7) reads SHOW STATS columns PgBouncer 1.8 renamed
and stops at its start with Debian's own PgBouncer (1.18), hence this one. Managed by Salt
(salt/monitoring); the password comes from PGPASSFILE.

    pgbouncer-exporter --listen 10.0.0.11:9127 --port 6432 --user pgbouncer_stats
"""

from __future__ import annotations

import argparse
import http.server
import threading

import psycopg2

# SHOW POOLS column -> (metric, help); per database and user.
POOLS = {
    "cl_active": ("pgbouncer_pools_client_active_connections",
                  "Client connections linked to a server connection and able to process queries"),
    "cl_waiting": ("pgbouncer_pools_client_waiting_connections",
                   "Client connections waiting for a server connection"),
    "sv_active": ("pgbouncer_pools_server_active_connections",
                  "Server connections linked to a client"),
    "sv_idle": ("pgbouncer_pools_server_idle_connections",
                "Server connections unused and immediately usable for client queries"),
    "sv_used": ("pgbouncer_pools_server_used_connections",
                "Server connections idle longer than server_check_delay"),
    "sv_login": ("pgbouncer_pools_server_login_connections",
                 "Server connections currently logging in"),
}
# SHOW STATS column -> (metric, help, divisor); per database, counters since PgBouncer started.
STATS = {
    "total_xact_count": ("pgbouncer_stats_sql_transactions_pooled_total",
                         "SQL transactions pooled", 1),
    "total_query_count": ("pgbouncer_stats_queries_pooled_total", "SQL queries pooled", 1),
    "total_received": ("pgbouncer_stats_received_bytes_total",
                       "Bytes received from clients", 1),
    "total_sent": ("pgbouncer_stats_sent_bytes_total", "Bytes sent to clients", 1),
    "total_xact_time": ("pgbouncer_stats_sql_transactions_duration_seconds_total",
                        "Time spent in transactions", 1e6),
    "total_query_time": ("pgbouncer_stats_queries_duration_seconds_total",
                         "Time spent in queries", 1e6),
    "total_wait_time": ("pgbouncer_stats_client_wait_seconds_total",
                        "Time clients waited for a server", 1e6),
}


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: object, divisor: float = 1) -> str:
    """A column's value (int, or Decimal for PgBouncer's numeric columns) in full: Prometheus
    reads floats, and "%g" would keep six digits of a byte counter."""
    if divisor == 1 and float(value).is_integer():
        return str(int(value))
    return repr(float(value) / divisor)


def exposition(pools: list[dict], stats: list[dict], up: bool) -> str:
    """Prometheus's text format of SHOW POOLS and SHOW STATS rows (dicts by column)."""
    lines = ["# HELP pgbouncer_up Whether PgBouncer's admin console answered this scrape.",
             "# TYPE pgbouncer_up gauge", f"pgbouncer_up {int(up)}"]
    for column, (metric, text) in POOLS.items():
        lines += [f"# HELP {metric} {text}.", f"# TYPE {metric} gauge"]
        lines += [f'{metric}{{database="{_label(r["database"])}",user="{_label(r["user"])}"}} '
                  f"{_number(r[column])}" for r in pools if column in r]
    metric, text = "pgbouncer_pools_client_maxwait_seconds", "Age of the oldest waiting client"
    lines += [f"# HELP {metric} {text}.", f"# TYPE {metric} gauge"]
    lines += [f'{metric}{{database="{_label(r["database"])}",user="{_label(r["user"])}"}} '
              f"{_number(float(r['maxwait']) + float(r.get('maxwait_us', 0)) / 1e6)}"
              for r in pools if "maxwait" in r]
    for column, (metric, text, divisor) in STATS.items():
        lines += [f"# HELP {metric} {text}.", f"# TYPE {metric} counter"]
        lines += [f'{metric}{{database="{_label(r["database"])}"}} {_number(r[column], divisor)}'
                  for r in stats if column in r]
    return "\n".join(lines) + "\n"


def _show(cursor, what: str) -> list[dict]:
    cursor.execute(f"SHOW {what}")
    names = [column.name for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


# One scrape at a time: connect_timeout bounds the login only, and a PgBouncer that stalls
# after it would hold a thread and a connection per scrape. While one hangs, the others answer
# at once that PgBouncer does not (pgbouncer_up 0, the alert PgBouncerDown).
SCRAPING = threading.Lock()


def scrape(port: int, user: str) -> str:
    if not SCRAPING.acquire(blocking=False):
        return exposition([], [], up=False)
    try:
        return _scrape(port, user)
    finally:
        SCRAPING.release()


def _scrape(port: int, user: str) -> str:
    try:
        connection = psycopg2.connect(dbname="pgbouncer", user=user, port=port, connect_timeout=3)
    except psycopg2.Error:
        return exposition([], [], up=False)
    try:
        connection.autocommit = True  # the admin console has no transactions
        with connection.cursor() as cursor:
            return exposition(_show(cursor, "POOLS"), _show(cursor, "STATS"), up=True)
    except psycopg2.Error:
        return exposition([], [], up=False)
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="ADDRESS:PORT to serve /metrics on")
    parser.add_argument("--port", type=int, default=6432, help="PgBouncer's port (its socket)")
    parser.add_argument("--user", default="pgbouncer_stats", help="one of PgBouncer's stats_users")
    args = parser.parse_args()
    address, _, port = args.listen.rpartition(":")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/metrics":
                self.send_error(404, "only /metrics here")
                return
            body = scrape(args.port, args.user).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args):
            pass  # a line per scrape is noise

    http.server.ThreadingHTTPServer((address, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()
