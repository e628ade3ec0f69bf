"""The web project's app: add a message and get its id, show a message by id.

A WSGI application (gunicorn on the web host, behind nginx). Writes go to the leader, reads
to the replicas (the leader when none is healthy): through HAProxy's ports 5000 and 5001, or
with no proxy, libpq finding them in a list of the members (pgcluster:webapp:data_path).
Connections are kept per worker and reopened after a failover. Every answer to bad input is a
4xx with a clear message; a write that finds no leader is a 503 with Retry-After. /healthz is
liveness (no database); /readyz answers 200 only when a primary takes writes and a reader answers.
/metrics is Prometheus's: every answer counted by method, route and status, its time in a
histogram, and the messages added. gunicorn's workers are separate processes: with
PROMETHEUS_MULTIPROC_DIR set (the service sets it) each writes its values to a file there and
/metrics sums every worker's; without it (the tests) the process's own default registry answers.

Configuration: a JSON file named by WEBAPP_CONFIG (default /etc/webapp/config.json):
{"writer": {dsn parts}, "reader": {dsn parts}, "spread_reads": false (true: shuffle the
 reader's hosts at each connection), "patroni": ["https://10.0.0.11:8008", ...],
 "patroni_ca": "/etc/pgcluster/tls/ca.crt" (the CA that verifies the https URLs),
 "csrf_secret": "..." (optional: without it the form's key is derived from the DB password)}.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import os
import random
import re
import ssl
import sys
import threading
import time
import urllib.request
import uuid
from urllib.parse import parse_qs, urlencode

import psycopg2
import psycopg2.extras

# Debian 12's python3-prometheus-client (0.16) on the web host; the tests run the one Salt
# brings into .venv (0.26): only API both have.
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

MAX_TEXT = 1000  # characters
MAX_BODY = 16 * 1024  # bytes
LATEST = 10
RETRY_AFTER = "2"
MAX_ID = 2**63 - 1  # the id column is a bigserial: a bigint
READY_TIMEOUT = 2.5  # seconds: /readyz answers within this whatever the servers do
CSRF_MAX_AGE = 12 * 3600  # seconds a form stays valid
# Patroni's roles as patronictl shows them.
ROLE_NAMES = {"leader": "Leader", "primary": "Leader", "sync_standby": "Sync Standby",
              "quorum_standby": "Quorum Standby", "replica": "Replica",
              "standby_leader": "Standby Leader"}
DIGITS_RE = re.compile(r"[0-9]+")  # always with fullmatch: "$" would let "1\n" through
# Control characters but tab, newline and carriage return: invisible in a page, terminal
# escapes in a log, and NUL cannot be stored in PostgreSQL's text at all.
CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
FIELDS = ("text", "idempotency_key")
JSON_TYPES = {bool: "true or false", int: "a number", float: "a number", type(None): "null",
              list: "an array", dict: "an object"}

# -- metrics ---------------------------------------------------------------------------------
# Labels come from fixed sets only, whatever a client sends: a scanner's paths and methods fall
# into "other" and cannot make new series.
ROUTES = {"/": "/", "/cgi-bin/db_app.cgi": "/",  # the original address serves the same page
          "/healthz": "/healthz", "/readyz": "/readyz", "/api/cluster": "/api/cluster",
          "/api/charts": "/api/charts", "/api/messages": "/api/messages", "/metrics": "/metrics"}
# The page's own scripts and styles, and uPlot (npm's uplot 1.6.32, MIT: static/uPlot.LICENSE),
# served from the app's folder: no CDN.
STATIC = {"/static/uPlot.iife.min.js": "application/javascript; charset=utf-8",
          "/static/uPlot.min.css": "text/css; charset=utf-8",
          "/static/live.js": "application/javascript; charset=utf-8"}
ROUTES.update(dict.fromkeys(STATIC, "/static/{file}"))
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MESSAGE_PREFIX = "/api/messages/"
MESSAGE_ROUTE = "/api/messages/{id}"
METHODS = {m: m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

REQUESTS = Counter("webapp_requests_total", "HTTP answers, by method, route template and status.",
                   ("method", "route", "status"))
DURATION = Histogram("webapp_request_duration_seconds", "Time to make an answer, by method and "
                     "route template (the app's own time, without nginx's).", ("method", "route"),
                     buckets=BUCKETS)
MESSAGES_ADDED = Counter("webapp_messages_added_total", "Messages inserted, from the API and "
                         "the form; a retried post that found its own row is not counted again.")

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Every worker's files, summed at each scrape; a registry of its own, so that this
    # process's values are not counted twice. It fails here, at the worker's start, when the
    # directory is missing, rather than at each request.
    EXPOSITION = CollectorRegistry()
    MultiProcessCollector(EXPOSITION)
else:
    EXPOSITION = REGISTRY

# (method, route, status) -> (its counter, its histogram): .labels() takes a lock and makes a
# tuple of str each time; a worker meets a few dozen combinations at most.
_SERIES: dict[tuple, tuple] = {}


def route_of(path: str) -> str:
    """The route template a path is answered by, "other" when none: PATH_INFO as the server
    gives it (the routes are ASCII, and no multi-byte UTF-8 sequence holds a "/")."""
    route = ROUTES.get(path)
    if route is not None:
        return route
    if path.startswith(MESSAGE_PREFIX) and "/" not in path[len(MESSAGE_PREFIX):]:
        return MESSAGE_ROUTE
    return "other"


def record(method: str, route: str, status: int, seconds: float) -> None:
    method = METHODS.get(method, "other")
    key = (method, route, status)
    series = _SERIES.get(key)
    if series is None:
        series = _SERIES[key] = (REQUESTS.labels(method, route, str(status)),
                                 DURATION.labels(method, route))
    series[0].inc()
    series[1].observe(seconds)


# -- charts ----------------------------------------------------------------------------------
# The page's charts over the last hour, from Prometheus (pgcluster:monitoring): each a range
# query, one series per label set. Rows written on the leader: what the cluster is asked to
# keep; the replicas' lag behind it; who led when (the member's row, a jump is a failover or a
# switchover).
CHART_MINUTES = 60
CHART_STEP = 15  # seconds between points: 240 per series
CHART_CACHE = 10.0  # seconds a worker reuses its last answer (several pages open)
CHARTS = {
    "writes": {
        "title": "Rows written per second (leader)", "unit": "rows/s",
        "query": 'sum(rate(pg_stat_database_tup_inserted{job="postgres"}[1m]) + '
                 'rate(pg_stat_database_tup_updated{job="postgres"}[1m]) + '
                 'rate(pg_stat_database_tup_deleted{job="postgres"}[1m]) '
                 'and on(instance) patroni_primary{job="patroni"} == 1)',
        "label": lambda labels: "writes"},
    "lag": {
        "title": "Replication lag (bytes left to replay)", "unit": "bytes",
        # Running replicas only (a stopped one reports position 0), never below 0 (the
        # leader's position and a replica's come from scrapes a moment apart).
        "query": 'clamp_min(scalar(max(patroni_xlog_location{job="patroni"})) - '
                 'patroni_xlog_replayed_location{job="patroni"}, 0) '
                 'and on(instance) patroni_replica{job="patroni"} == 1 '
                 'and on(instance) patroni_postgres_running{job="patroni"} == 1',
        "label": lambda labels: labels.get("instance", "?")},
    "leader": {
        "title": "Leader (a jump: failover or switchover)", "unit": "member",
        "query": 'patroni_primary{job="patroni"} == 1',
        "label": lambda labels: labels.get("instance", "?")},
}


def chart_data(answer: dict, label, start: int, end: int, step: int) -> dict:
    """A Prometheus range answer (its "data") as uPlot wants it: the shared times, and one
    list of values per series (null where the series has no point)."""
    times = list(range(start, end + 1, step))
    index = {t: i for i, t in enumerate(times)}
    series: dict[str, list] = {}
    for result in answer.get("result", []):
        values = series.setdefault(label(result.get("metric", {})), [None] * len(times))
        for stamp, value in result.get("values", []):
            i = index.get(int(float(stamp)))
            if i is not None:
                values[i] = round(float(value), 3)
    return {"times": times, "series": dict(sorted(series.items()))}


SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id bigserial PRIMARY KEY,
    text text NOT NULL CHECK (length(text) BETWEEN 1 AND 1000),
    created_at timestamptz NOT NULL DEFAULT now(),
    idempotency_key uuid UNIQUE
)
"""


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: list | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []
        self.form: dict | None = None  # what a failed form post re-shows


STATUS = {200: "OK", 201: "Created", 303: "See Other", 400: "Bad Request", 403: "Forbidden",
          404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
          415: "Unsupported Media Type", 422: "Unprocessable Content", 503: "Service Unavailable"}


def _shown(value, limit: int = 40) -> str:
    """A value quoted for a message: control characters and surrogates escaped, long ones cut."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(exc: UnicodeDecodeError) -> str:
    bad = exc.object[exc.start:exc.start + 3]
    # ED A0..BF xx is how a UTF-16 surrogate (U+D800-DFFF) would be encoded: never valid UTF-8.
    if len(bad) == 3 and bad[0] == 0xED and 0xA0 <= bad[1] <= 0xBF:
        return (f"bytes {bad.hex(' ').upper()} at byte {exc.start + 1} encode a lone surrogate, "
                f"which is not Unicode")
    return f"{exc.reason} (0x{bad[0]:02X}) at byte {exc.start + 1}"


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPError(400, f"{what} is not valid UTF-8: {_describe(exc)}.") from None


def _wsgi_text(value: str, what: str) -> str:
    """PEP 3333 hands the request's bytes over as latin-1 text; clients mean UTF-8."""
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:  # a server that decoded it already: check it all the same
        raw = value.encode("utf-8", "surrogatepass")
    return _utf8(raw, what)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def csrf_secret(config: dict) -> bytes:
    """The form tokens' key, the same in every gunicorn worker: the config's csrf_secret, else one
    derived from the database password (one-way, so neither key nor token tells the password)."""
    if config.get("csrf_secret"):
        return str(config["csrf_secret"]).encode("utf-8", "surrogatepass")
    seed = (config.get("writer") or {}).get("password")
    if not seed:
        sys.stderr.write("webapp: no csrf_secret and no database password in the config: the "
                         "form's tokens use a key anyone who knows the config can make\n")
        seed = json.dumps(config, sort_keys=True, default=str)
    return hmac.new(str(seed).encode("utf-8", "surrogatepass"), b"webapp csrf key v1",
                    hashlib.sha256).digest()


class Csrf:
    """Stateless form tokens, "<unix time>.<HMAC-SHA256 of it>": nothing kept between requests,
    valid in every worker, and a page on another site cannot read one from ours."""

    def __init__(self, secret: bytes):
        self.secret = secret

    def _mac(self, stamp: str) -> bytes:
        return hmac.new(self.secret, b"webapp-form:" + stamp.encode(), hashlib.sha256).hexdigest().encode()

    def token(self, now: float | None = None) -> str:
        stamp = str(int(time.time() if now is None else now))
        return f"{stamp}.{self._mac(stamp).decode()}"

    def check(self, token) -> None:
        if not token:
            raise HTTPError(403, "The form was sent without its security token: reload the page "
                                 "and send it again.")
        stamp, _, mac = str(token).partition(".")
        age = time.time() - int(stamp) if DIGITS_RE.fullmatch(stamp) and len(stamp) <= 12 else None
        if age is None or age < -60 or not hmac.compare_digest(
                mac.encode("utf-8", "surrogatepass"), self._mac(stamp)):
            raise HTTPError(403, "The form's security token is not valid (was the form made by "
                                 "another site?): reload the page and send it again.")
        if age > CSRF_MAX_AGE:
            raise HTTPError(403, f"The form has expired (it is more than {CSRF_MAX_AGE // 3600} "
                                 f"hours old): reload the page and send it again.")


def _shuffled_hosts(params: dict) -> dict:
    """libpq's host list in a new random order (and its port list with it, when there is one
    port per host)."""
    hosts, ports = str(params["host"]).split(","), str(params["port"]).split(",")
    order = random.sample(range(len(hosts)), len(hosts))
    shuffled = {"host": ",".join(hosts[i] for i in order)}
    if len(ports) == len(hosts):
        shuffled["port"] = ",".join(ports[i] for i in order)
    return shuffled


class Database:
    """One connection per role (writer, reader) per worker thread, reopened when it breaks.
    With ``spread_reads`` (a reader with several hosts, libpq choosing a standby among them),
    each new reader connection tries the hosts in a new order, so that the readers spread over
    the standbys (libpq's own load_balance_hosts needs libpq 16)."""

    def __init__(self, writer: dict, reader: dict, spread_reads: bool = False):
        self.params = {"writer": writer, "reader": reader}
        self.spread_reads = spread_reads
        self.local = threading.local()
        self.schema_ready = False

    def _connect(self, role: str):
        params = self.params[role]
        if role == "reader" and self.spread_reads:
            params = {**params, **_shuffled_hosts(params)}
        conn = psycopg2.connect(connect_timeout=3, application_name=f"webapp-{role}", **params)
        conn.autocommit = True
        return conn

    def run(self, role: str, sql: str, args: tuple = (), fetch: str = "one"):
        """Run one statement; on a broken connection retry once on a fresh one (a failover)."""
        for attempt in (1, 2):
            conn = getattr(self.local, role, None)
            try:
                if conn is None or conn.closed:
                    conn = self._connect(role)
                    setattr(self.local, role, conn)
                if role == "writer" and not self.schema_ready:
                    self._migrate(conn)
                with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                    cur.execute(sql, args)
                    return cur.fetchone() if fetch == "one" else cur.fetchall()
            except (psycopg2.OperationalError, psycopg2.InterfaceError,
                    psycopg2.errors.ReadOnlySqlTransaction, psycopg2.errors.AdminShutdown):
                self._drop(role)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _drop(self, role: str) -> None:
        conn = getattr(self.local, role, None)
        setattr(self.local, role, None)
        if conn is not None:
            try:
                conn.close()
            except psycopg2.Error:
                pass

    def _migrate(self, conn) -> None:
        # Once per worker; the advisory lock makes concurrent first runs wait for each other.
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(4242)")
            cur.execute(SCHEMA)
        conn.autocommit = True
        self.schema_ready = True


class App:
    def __init__(self, config: dict):
        self.db = Database(config["writer"], config["reader"], config.get("spread_reads", False))
        self.patroni = config.get("patroni", [])
        self.patroni_ca = config.get("patroni_ca")
        self.csrf = Csrf(csrf_secret(config))
        self.prometheus = config.get("prometheus")  # its URL; none: monitoring is off
        self._charts: tuple[float, dict] | None = None
        self._static: dict[str, bytes] = {}

    # -- data ------------------------------------------------------------------------------

    def add(self, text, key, form: bool = False) -> dict:
        text = self._valid_text(text)
        key = self._valid_key(key) or str(uuid.uuid4())
        try:
            # A retried post with the same key returns the row the first one made. xmax is 0
            # only in a row this statement inserted: the conflict's update leaves its lock there.
            row = self.db.run(
                "writer",
                "INSERT INTO messages (text, idempotency_key) VALUES (%s, %s) "
                "ON CONFLICT (idempotency_key) DO UPDATE SET idempotency_key = EXCLUDED.idempotency_key "
                "RETURNING id, text, created_at, host(inet_server_addr()) AS server, "
                "xmax = 0 AS inserted",
                (text, key),
            )
        except psycopg2.Error:
            raise HTTPError(503, "No database leader is reachable right now (a failover may be "
                                 "under way). Nothing was lost: retry in a few seconds.",
                            [("Retry-After", RETRY_AFTER)]) from None
        if row["text"] != text:
            # Not a retry but a second message under a spent key: answering with the first row
            # would tell the client its new text was stored.
            if form:
                raise HTTPError(422, f"This form was already used to add another message (ID "
                                     f"{row['id']}); it has been renewed: press Add again to add "
                                     f"this text.")
            raise HTTPError(422, f"The idempotency key {key} was already used for another message "
                                 f"(ID {row['id']}): send a new key for a new message.")
        if row.pop("inserted"):
            MESSAGES_ADDED.inc()
        return row

    def get(self, message_id: str) -> dict:
        """The message from a replica; one a replica does not have yet (it replays the
        leader's WAL a moment later, or lags) from the leader, so that an id just returned
        by a write is found. 404 only when the leader has none either; 503 when no leader
        answers to say so (as a write would wait for it: at most the writer's connect and
        keepalive timeouts)."""
        number = self._valid_id(message_id)
        row = self._message("reader", number)
        if row is None:
            try:
                row = self._message("writer", number)
            except HTTPError:
                raise HTTPError(503, f"Message {number} is not on the replica that answered, and "
                                     "no leader answers to look for it there: retry in a few "
                                     "seconds.", [("Retry-After", RETRY_AFTER)]) from None
        if row is None:
            raise HTTPError(404, f"There is no message {number}.")
        return row

    def _message(self, role: str, number: int) -> dict | None:
        try:
            return self.db.run(role, "SELECT id, text, created_at, host(inet_server_addr()) AS "
                                     "server FROM messages WHERE id = %s", (number,))
        except psycopg2.errors.UndefinedTable:
            return None
        except psycopg2.Error:
            raise HTTPError(503, "No database server is reachable right now: retry in a few "
                                 "seconds.", [("Retry-After", RETRY_AFTER)]) from None

    def latest(self, limit: int = LATEST) -> list:
        try:
            return self.db.run("reader", "SELECT id, text, created_at, host(inet_server_addr()) "
                                         "AS server FROM messages ORDER BY id DESC LIMIT %s",
                               (limit,), fetch="all")
        except psycopg2.errors.UndefinedTable:
            return []
        except psycopg2.Error:
            raise HTTPError(503, "No database server is reachable right now: retry in a few "
                                 "seconds.", [("Retry-After", RETRY_AFTER)]) from None

    def cluster(self) -> dict:
        try:
            # Patroni's REST API over HTTPS: only the cluster's CA is trusted (read each time,
            # as libpq reads sslrootcert: a renewed CA needs no restart).
            tls = ssl.create_default_context(cafile=self.patroni_ca) if self.patroni_ca else None
        except (OSError, ssl.SSLError) as exc:
            return {"scope": None, "members": [],
                    "error": f"the cluster's CA {self.patroni_ca} cannot be loaded: {exc}"}
        for url in self.patroni:
            try:
                with urllib.request.urlopen(url + "/cluster", timeout=1, context=tls) as answer:
                    data = json.loads(answer.read())
            except (OSError, ValueError):
                continue
            return {"scope": data.get("scope"), "members": [
                {"name": m.get("name"), "host": m.get("host"), "role": m.get("role"),
                 "role_name": ROLE_NAMES.get(m.get("role"), str(m.get("role"))),
                 "state": m.get("state"), "timeline": m.get("timeline"), "lag": m.get("lag")}
                for m in data.get("members", [])]}
        return {"scope": None, "members": [], "error": "no Patroni REST API answered"}

    def charts(self) -> dict:
        """The page's charts (CHARTS) over the last hour, from Prometheus's HTTP API."""
        if not self.prometheus:
            raise HTTPError(503, "No charts: monitoring is off (pgcluster:monitoring), so the "
                                 "app has no Prometheus to ask.")
        now = time.monotonic()
        if self._charts and now - self._charts[0] < CHART_CACHE:
            return self._charts[1]
        end = int(time.time()) // CHART_STEP * CHART_STEP
        start = end - CHART_MINUTES * 60
        charts = {}
        for name, chart in CHARTS.items():
            query = urlencode({"query": chart["query"], "start": start, "end": end,
                               "step": CHART_STEP})
            url = f"{self.prometheus}/api/v1/query_range?{query}"
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    data = json.loads(answer.read())["data"]
            except (OSError, ValueError, KeyError) as exc:
                raise HTTPError(503, f"No charts: Prometheus at {self.prometheus} did not "
                                     f"answer ({_first_line(exc)}).",
                                [("Retry-After", RETRY_AFTER)]) from None
            charts[name] = {"title": chart["title"], "unit": chart["unit"],
                            **chart_data(data, chart["label"], start, end, CHART_STEP)}
        result = {"minutes": CHART_MINUTES, "step": CHART_STEP, "charts": charts}
        self._charts = (now, result)
        return result

    def static(self, path: str):
        if path not in self._static:
            with open(os.path.join(STATIC_DIR, path.rpartition("/")[2]), "rb") as fh:
                self._static[path] = fh.read()
        return 200, [("Content-Type", STATIC[path]), ("Cache-Control", "max-age=3600")], \
            self._static[path]

    def readiness(self) -> tuple[int, dict]:
        """Both roles checked at once on fresh connections, each in a thread so that a server
        that accepts and then says nothing cannot hold the probe past READY_TIMEOUT."""
        results: dict[str, str] = {}
        threads = [threading.Thread(target=self._probe, args=(role, results), daemon=True)
                   for role in ("writer", "reader")]
        deadline = time.monotonic() + READY_TIMEOUT
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        checks = {role: results.get(role, f"no answer within {READY_TIMEOUT:g} s")
                  for role in ("writer", "reader")}
        missing = [role for role, state in checks.items() if state != "ok"]
        if not missing:
            return 200, {"status": "ready", "checks": checks}
        return 503, {"status": "not ready", "missing": missing, "checks": checks,
                     "error": "Not ready: " + "; ".join(f"{role}: {checks[role]}" for role in missing)}

    def _probe(self, role: str, results: dict) -> None:
        # The join in readiness() bounds the answer; these timeouts free the thread too.
        params = {**self.db.params[role], "connect_timeout": 2,  # libpq's least
                  "application_name": f"webapp-readyz-{role}"}
        try:
            conn = psycopg2.connect(**params)
        except psycopg2.Error as exc:
            results[role] = f"cannot connect: {_first_line(exc)}"
            return
        try:
            with conn.cursor() as cur:
                # SET LOCAL, not "options": PgBouncer pools sessions and ignores startup options.
                cur.execute("SET LOCAL statement_timeout = 1500")
                cur.execute("SELECT pg_is_in_recovery()")
                standby = cur.fetchone()[0]
            conn.rollback()
            # The writer's port must lead to the primary: a standby there refuses every write.
            results[role] = ("reached a standby (pg_is_in_recovery() is true), not the primary"
                             if role == "writer" and standby else "ok")
        except psycopg2.Error as exc:
            results[role] = f"query failed: {_first_line(exc)}"
        finally:
            conn.close()

    @staticmethod
    def _text_field(data: dict):
        if "text" in data:
            return data["text"]
        unknown = [_shown(name) for name in data if name not in FIELDS]
        hint = f" (unknown field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)})" if unknown else ""
        raise HTTPError(400, f'The field "text" is missing{hint}: send {{"text": "..."}}.')

    @staticmethod
    def _valid_text(text) -> str:
        if not isinstance(text, str):
            raise HTTPError(400, f"text must be a string, not {JSON_TYPES.get(type(text), 'that')}.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON's "\ud800" escapes make these
            raise HTTPError(400, f"The text is not valid Unicode: it holds a lone surrogate, "
                                 f"U+{ord(text[exc.start]):04X}, at character {exc.start + 1}.") from None
        if not text.strip():
            raise HTTPError(400, "The message is empty: write some text.")
        if len(text) > MAX_TEXT:
            raise HTTPError(400, f"The message is {len(text)} characters long; the limit is "
                                 f"{MAX_TEXT}.")
        control = CONTROL_RE.search(text)
        if control and control.group() == "\x00":
            raise HTTPError(400, f"The message contains a NUL character (U+0000) at character "
                                 f"{control.start() + 1}, which the database cannot store.")
        if control:
            raise HTTPError(400, f"The message contains the control character "
                                 f"U+{ord(control.group()):04X} at character {control.start() + 1}; "
                                 f"of those only tab, newline and carriage return are allowed.")
        return text

    @staticmethod
    def _valid_key(key) -> str | None:
        if key in (None, ""):
            return None
        try:
            return str(uuid.UUID(str(key)))
        except ValueError:
            raise HTTPError(400, "The idempotency key must be a UUID.") from None

    @staticmethod
    def _valid_id(value: str) -> int:
        if not DIGITS_RE.fullmatch(value or "") or not value.strip("0"):
            raise HTTPError(400, f"The id must be a positive whole number, not {_shown(value)}.")
        digits = value.lstrip("0")
        if len(digits) > len(str(MAX_ID)) or int(digits) > MAX_ID:
            raise HTTPError(400, f"The id {_shown(value)} is out of range: ids go from 1 to {MAX_ID}.")
        return int(digits)

    # -- HTTP ------------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        route = route_of(environ.get("PATH_INFO") or "/")
        try:
            status, headers, body = self.route(environ, route)
        except HTTPError as exc:
            status, headers, body = self.error(environ, exc)
        except Exception:
            environ["wsgi.errors"].write("webapp: unexpected error\n")
            import traceback

            traceback.print_exc(file=environ["wsgi.errors"])
            status, headers, body = self.error(environ, HTTPError(503, "Something went wrong "
                                                                  "on our side: retry shortly.",
                                                                  [("Retry-After", RETRY_AFTER)]))
        # "replace": a stray surrogate in a page must not turn the answer into a server error.
        payload = body if isinstance(body, bytes) else body.encode("utf-8", "replace")
        start_response(f"{status} {STATUS.get(status, '')}".strip(),
                       [*headers, ("Content-Length", str(len(payload)))])
        record(environ.get("REQUEST_METHOD", ""), route, status, time.perf_counter() - started)
        return [payload]

    def route(self, environ, route: str):
        """The answer to a request of the route route_of() found for its path."""
        method = environ["REQUEST_METHOD"]
        path = _wsgi_text(environ.get("PATH_INFO") or "/", "The path")
        if route == "/":
            return self.page(environ, method)
        if route == "/api/messages":
            return self.messages(environ, method)
        if route == "other":
            raise HTTPError(404, f"There is no page {_shown(path)}.")
        self._allow(method, "GET", "HEAD")  # every other route only reads
        return self.read(route, path)

    def read(self, route: str, path: str):
        if route == "/healthz":
            # Liveness only: a database outage must not make the orchestrator restart the app.
            return 200, [("Content-Type", "application/json")], json.dumps({"status": "ok"})
        if route == "/readyz":
            return self.json(*self.readiness())
        if route in ("/api/cluster", "/api/charts"):
            return self.json(200, self.cluster() if route == "/api/cluster" else self.charts())
        if route == "/static/{file}":
            return self.static(path)
        if route == "/metrics":
            return 200, [("Content-Type", CONTENT_TYPE_LATEST)], generate_latest(EXPOSITION)
        return self.json(200, self.get(path[len(MESSAGE_PREFIX):]))  # MESSAGE_ROUTE

    def messages(self, environ, method):
        self._allow(method, "GET", "HEAD", "POST")
        if method == "POST":
            # No CSRF token here: a cross-site form cannot send application/json.
            data = self.json_body(environ)
            key = environ.get("HTTP_IDEMPOTENCY_KEY") or data.get("idempotency_key")
            return self.json(201, self.add(self._text_field(data), key))
        limit = self.query(environ).get("limit", str(LATEST))
        if not DIGITS_RE.fullmatch(limit) or len(limit) > 3 or not 1 <= int(limit) <= 100:
            raise HTTPError(400, "limit must be a whole number from 1 to 100.")
        return self.json(200, {"messages": self.latest(int(limit))})

    @staticmethod
    def _allow(method, *allowed):
        if method not in allowed:
            raise HTTPError(405, f"{method} is not allowed here; use {', '.join(allowed)}.",
                            [("Allow", ", ".join(allowed))])

    @staticmethod
    def read_body(environ) -> bytes:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise HTTPError(400, "Content-Length is not a number.") from None
        if length > MAX_BODY:
            raise HTTPError(413, f"The request body is {length} bytes; the limit is {MAX_BODY}.")
        return environ["wsgi.input"].read(length) if length > 0 else b""

    def json_body(self, environ) -> dict:
        if not environ.get("CONTENT_TYPE", "").startswith("application/json"):
            raise HTTPError(415, "Send the message as JSON (Content-Type: application/json).")
        text = _utf8(self.read_body(environ), "The request body")
        try:
            data = json.loads(text)
        except RecursionError:  # "[[[[..." within 16 KiB is enough to reach the limit
            raise HTTPError(400, "The request body's JSON is nested too deeply.") from None
        except ValueError:
            raise HTTPError(400, 'The request body is not valid JSON: send {"text": "..."}.') from None
        if not isinstance(data, dict):
            raise HTTPError(400, 'Send a JSON object: {"text": "..."}.')
        return data

    @staticmethod
    def _fields(text: str, what: str, **options) -> dict:
        try:
            fields = parse_qs(text, errors="strict", **options)
        except UnicodeDecodeError as exc:  # a %-escape that is not UTF-8
            raise HTTPError(400, f"{what} is not valid UTF-8: {_describe(exc)}.") from None
        return {k: v[0] for k, v in fields.items()}

    def form_body(self, environ) -> dict:
        return self._fields(_utf8(self.read_body(environ), "The form"), "The form",
                            keep_blank_values=True)

    def query(self, environ) -> dict:
        return self._fields(_wsgi_text(environ.get("QUERY_STRING", ""), "The query string"),
                            "The query string")

    @staticmethod
    def json(status, data):
        return status, [("Content-Type", "application/json")], json.dumps(data, default=str)

    def wants_json(self, environ) -> bool:
        return (environ.get("PATH_INFO") or "").startswith("/api/") or \
            "application/json" in environ.get("HTTP_ACCEPT", "")

    def error(self, environ, exc: HTTPError):
        headers = list(exc.headers)
        if self.wants_json(environ):
            return exc.status, [("Content-Type", "application/json"), *headers], \
                json.dumps({"error": exc.message})
        form = exc.form or {}
        body = self.render(notice=f"<p class='error'>{html.escape(exc.message)}</p>",
                           text=form.get("text", ""), key=form.get("key"))
        return exc.status, [("Content-Type", "text/html; charset=utf-8"), *headers], body

    # -- the page --------------------------------------------------------------------------

    def page(self, environ, method):
        self._allow(method, "GET", "HEAD", "POST")
        notice = ""
        if method == "POST":
            form = self.form_body(environ)
            # Checked first, and a refused form is not re-filled: another site's text must
            # not come back in our form with a good token, one click from being posted.
            self.csrf.check(form.get("csrf_token"))
            try:
                row = self.add(self._text_field(form), form.get("idempotency_key"), form=True)
            except HTTPError as exc:
                exc.form = {"text": form.get("text", ""), "key": self._refill_key(form, exc)}
                raise
            # Read your writes: shown from the leader that took it, not a lagging replica.
            notice = (f"<p class='added'>Message added with ID <b id='new-id'>{row['id']}</b> "
                      f"(written to {html.escape(row['server'] or '')}).</p>")
        elif message_id := self.query(environ).get("id"):
            row = self.get(message_id)
            notice = (f"<p class='found'>Message <b>{row['id']}</b>: "
                      f"<q id='found-text'>{html.escape(row['text'])}</q> "
                      f"(read from {html.escape(row['server'] or '')}).</p>")
        return 200, [("Content-Type", "text/html; charset=utf-8")], self.render(notice)

    def _refill_key(self, form: dict, exc: HTTPError) -> str | None:
        """The key a re-shown form keeps: the same one, so sending it again after a 503 whose
        insert did happen adds nothing twice; a new one after a 422 (that key is spent)."""
        if exc.status == 422:
            return None
        try:
            return self._valid_key(form.get("idempotency_key"))
        except HTTPError:
            return None

    def _latest_html(self) -> str:
        try:
            latest = self.latest()
        except HTTPError as exc:
            return f"<p class='error'>The latest messages cannot be read: {html.escape(exc.message)}</p>"
        if not latest:
            return "<p id='no-messages'>No messages yet.</p>"
        rows = "".join(
            f"<tr><td>{m['id']}</td><td>{html.escape(m['text'])}</td>"
            f"<td>{html.escape(str(m['created_at']))[:19]}</td></tr>" for m in latest)
        return (f"<p>Read from <span id=\"read-from\">{html.escape(latest[0]['server'] or 'a local socket')}"
                f"</span>.</p>\n<table id=\"latest\"><tr><th>ID</th><th>Text</th><th>Created</th></tr>"
                f"{rows}</table>")

    def render(self, notice="", text="", key=None):
        cluster = self.cluster()
        members = "".join(
            f"<tr class='{html.escape(str(m['role']))}'><td>{html.escape(str(m['name']))}</td>"
            f"<td>{html.escape(str(m['host']))}</td>"
            f"<td>{html.escape(ROLE_NAMES.get(m['role'], str(m['role'])))}</td>"
            f"<td>{html.escape(str(m['state']))}</td>"
            f"<td>{'' if m.get('timeline') is None else html.escape(str(m['timeline']))}</td>"
            f"<td>{'' if m.get('lag') is None else html.escape(str(m['lag']))}</td></tr>"
            for m in cluster["members"]) or "<tr><td colspan=6>no Patroni REST API answered</td></tr>"
        text = text if isinstance(text, str) else ""
        # Without scripts the page reloads itself, unless it re-shows what was typed (a reload
        # would lose it); with them (static/live.js) the cluster and the charts refresh alone.
        refresh = "" if text else '<noscript><meta http-equiv="refresh" content="30"></noscript>'
        return PAGE.format(notice=notice, key=key or uuid.uuid4(), csrf=self.csrf.token(),
                           text=html.escape(text), refresh=refresh,
                           latest=self._latest_html(), members=members, max_text=MAX_TEXT,
                           scope=html.escape(str(cluster.get("scope") or "")))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Messages</title>
{refresh}
<link rel="stylesheet" href="/static/uPlot.min.css">
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .6em}}
.leader td{{background:#e6ffe6}}.error{{color:#b00}}.added,.found{{background:#eef}}
#charts{{display:flex;flex-wrap:wrap;gap:1em}}.chart h3{{font-size:1em;margin:.5em 0}}
.updated{{color:#666;font-size:.85em}}</style>
<script src="/static/uPlot.iife.min.js" defer></script><script src="/static/live.js" defer></script>
</head><body>
<h1>Messages</h1>
{notice}
<form method="post" action="/"><input type="hidden" name="idempotency_key" value="{key}">
<input type="hidden" name="csrf_token" value="{csrf}">
<label>New message <input name="text" id="text" maxlength="{max_text}" value="{text}" required></label>
<button type="submit" id="add">Add</button></form>
<form method="get" action="/"><label>Show message ID <input name="id" id="id" inputmode="numeric"
required></label> <button type="submit" id="show">Show</button></form>
<h2>Latest messages</h2>
{latest}
<h2>Cluster <span id="scope">{scope}</span></h2>
<table id="cluster"><thead><tr><th>Member</th><th>Host</th><th>Role</th><th>State</th><th>TL</th>
<th>Lag</th></tr></thead><tbody id="members">
{members}</tbody></table>
<p class="updated" id="cluster-updated"></p>
<h2>The last hour</h2>
<p class="updated" id="charts-status">Charts load with scripts on.</p>
<div id="charts"></div>
</body></html>
"""


def application(environ, start_response, _app: list = []):  # noqa: B006 - one App per worker
    if not _app:
        path = os.environ.get("WEBAPP_CONFIG", "/etc/webapp/config.json")
        with open(path) as fh:
            _app.append(App(json.load(fh)))
    return _app[0](environ, start_response)
