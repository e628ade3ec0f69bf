"""The web project's app: add a message and get its id, show a message by id.

A WSGI application (gunicorn on the web host, behind nginx). Writes go through HAProxy's
port 5000 (the leader), reads through 5001 (the replicas, the leader when none is healthy).
Connections are kept per worker and reopened after a failover. Every answer to bad input is a
4xx with a clear message; a write that finds no leader is a 503 with Retry-After.

Configuration: a JSON file named by WEBAPP_CONFIG (default /etc/webapp/config.json):
{"writer": {dsn parts}, "reader": {dsn parts}, "patroni": ["http://10.0.0.11:8008", ...]}.
"""

from __future__ import annotations

import html
import json
import os
import re
import threading
import urllib.request
import uuid
from urllib.parse import parse_qs

import psycopg2
import psycopg2.extras

MAX_TEXT = 1000  # characters
MAX_BODY = 16 * 1024  # bytes
LATEST = 10
RETRY_AFTER = "2"
# Patroni's roles as patronictl shows them.
ROLE_NAMES = {"leader": "Leader", "primary": "Leader", "sync_standby": "Sync Standby",
              "replica": "Replica", "standby_leader": "Standby Leader"}
ID_RE = re.compile(r"^[0-9]{1,18}$")

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


STATUS = {200: "OK", 201: "Created", 303: "See Other", 400: "Bad Request", 404: "Not Found",
          405: "Method Not Allowed", 413: "Payload Too Large", 415: "Unsupported Media Type",
          503: "Service Unavailable"}


class Database:
    """One connection per role (writer, reader) per worker thread, reopened when it breaks."""

    def __init__(self, writer: dict, reader: dict):
        self.params = {"writer": writer, "reader": reader}
        self.local = threading.local()
        self.schema_ready = False

    def _connect(self, role: str):
        conn = psycopg2.connect(connect_timeout=3, application_name=f"webapp-{role}",
                                **self.params[role])
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
        self.db = Database(config["writer"], config["reader"])
        self.patroni = config.get("patroni", [])

    # -- data ------------------------------------------------------------------------------

    def add(self, text: str, key: str | None) -> dict:
        text = self._valid_text(text)
        key = self._valid_key(key) or str(uuid.uuid4())
        try:
            # A retried post with the same key returns the row the first one made.
            return self.db.run(
                "writer",
                "INSERT INTO messages (text, idempotency_key) VALUES (%s, %s) "
                "ON CONFLICT (idempotency_key) DO UPDATE SET idempotency_key = EXCLUDED.idempotency_key "
                "RETURNING id, text, created_at, host(inet_server_addr()) AS server",
                (text, key),
            )
        except psycopg2.Error:
            raise HTTPError(503, "No database leader is reachable right now (a failover may be "
                                 "under way). Nothing was lost: retry in a few seconds.",
                            [("Retry-After", RETRY_AFTER)]) from None

    def get(self, message_id: str, role: str = "reader") -> dict:
        if not ID_RE.match(message_id or ""):
            raise HTTPError(400, f"The id must be a positive whole number, not {message_id!r}.")
        try:
            row = self.db.run(role, "SELECT id, text, created_at, host(inet_server_addr()) AS "
                                    "server FROM messages WHERE id = %s", (int(message_id),))
        except psycopg2.errors.UndefinedTable:
            row = None
        except psycopg2.Error:
            raise HTTPError(503, "No database server is reachable right now: retry in a few "
                                 "seconds.", [("Retry-After", RETRY_AFTER)]) from None
        if row is None:
            raise HTTPError(404, f"There is no message {message_id}.")
        return row

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
        for url in self.patroni:
            try:
                with urllib.request.urlopen(url + "/cluster", timeout=1) as answer:
                    data = json.loads(answer.read())
            except (OSError, ValueError):
                continue
            return {"scope": data.get("scope"), "members": [
                {"name": m.get("name"), "host": m.get("host"), "role": m.get("role"),
                 "state": m.get("state"), "lag": m.get("lag")} for m in data.get("members", [])]}
        return {"scope": None, "members": [], "error": "no Patroni REST API answered"}

    @staticmethod
    def _valid_text(text) -> str:
        if not isinstance(text, str) or not text.strip():
            raise HTTPError(400, "The message is empty: write some text.")
        if len(text) > MAX_TEXT:
            raise HTTPError(400, f"The message is {len(text)} characters long; the limit is "
                                 f"{MAX_TEXT}.")
        if "\x00" in text:
            raise HTTPError(400, "The message contains a NUL character.")
        return text

    @staticmethod
    def _valid_key(key) -> str | None:
        if key in (None, ""):
            return None
        try:
            return str(uuid.UUID(str(key)))
        except ValueError:
            raise HTTPError(400, "The idempotency key must be a UUID.") from None

    # -- HTTP ------------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        try:
            status, headers, body = self.route(environ)
        except HTTPError as exc:
            status, headers, body = self.error(environ, exc)
        except Exception:
            environ["wsgi.errors"].write("webapp: unexpected error\n")
            import traceback

            traceback.print_exc(file=environ["wsgi.errors"])
            status, headers, body = self.error(environ, HTTPError(503, "Something went wrong "
                                                                  "on our side: retry shortly.",
                                                                  [("Retry-After", RETRY_AFTER)]))
        payload = body.encode()
        start_response(f"{status} {STATUS.get(status, '')}".strip(),
                       [*headers, ("Content-Length", str(len(payload)))])
        return [payload]

    def route(self, environ):
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO") or "/"
        if path in ("/", "/cgi-bin/db_app.cgi"):
            return self.page(environ, method)
        if path == "/healthz":
            self._allow(method, "GET", "HEAD")
            return 200, [("Content-Type", "application/json")], json.dumps({"status": "ok"})
        if path == "/api/cluster":
            self._allow(method, "GET", "HEAD")
            return self.json(200, self.cluster())
        if path == "/api/messages":
            self._allow(method, "GET", "HEAD", "POST")
            if method == "POST":
                data = self.json_body(environ)
                key = environ.get("HTTP_IDEMPOTENCY_KEY") or data.get("idempotency_key")
                return self.json(201, self.add(data.get("text"), key))
            limit = parse_qs(environ.get("QUERY_STRING", "")).get("limit", [str(LATEST)])[0]
            if not ID_RE.match(limit) or not 1 <= int(limit) <= 100:
                raise HTTPError(400, "limit must be a whole number from 1 to 100.")
            return self.json(200, {"messages": self.latest(int(limit))})
        match = re.match(r"^/api/messages/([^/]*)$", path)
        if match:
            self._allow(method, "GET", "HEAD")
            return self.json(200, self.get(match.group(1)))
        raise HTTPError(404, f"There is no page {path}.")

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
        raw = self.read_body(environ)
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise HTTPError(400, "The request body is not valid UTF-8.") from None
        except ValueError:
            raise HTTPError(400, 'The request body is not valid JSON: send {"text": "..."}.') from None
        if not isinstance(data, dict):
            raise HTTPError(400, 'Send a JSON object: {"text": "..."}.')
        return data

    def form_body(self, environ) -> dict:
        raw = self.read_body(environ)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPError(400, "The form is not valid UTF-8.") from None
        try:
            fields = parse_qs(text, keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise HTTPError(400, "The form is not valid UTF-8.") from None
        return {k: v[0] for k, v in fields.items()}

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
        body = self.render(notice=f"<p class='error'>{html.escape(exc.message)}</p>",
                           status_code=exc.status)
        return exc.status, [("Content-Type", "text/html; charset=utf-8"), *headers], body

    # -- the page --------------------------------------------------------------------------

    def page(self, environ, method):
        self._allow(method, "GET", "HEAD", "POST")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        notice = ""
        if method == "POST":
            form = self.form_body(environ)
            row = self.add(form.get("text"), form.get("idempotency_key"))
            # Read your writes: shown from the leader that took it, not a lagging replica.
            notice = (f"<p class='added'>Message added with ID <b id='new-id'>{row['id']}</b> "
                      f"(written to {html.escape(row['server'] or '')}).</p>")
        elif query.get("id"):
            message_id = query["id"][0]
            row = self.get(message_id)
            notice = (f"<p class='found'>Message <b>{row['id']}</b>: "
                      f"<q id='found-text'>{html.escape(row['text'])}</q> "
                      f"(read from {html.escape(row['server'] or '')}).</p>")
        return 200, [("Content-Type", "text/html; charset=utf-8")], self.render(notice)

    def render(self, notice="", status_code=200):
        try:
            latest = self.latest()
            latest_html = "".join(
                f"<tr><td>{m['id']}</td><td>{html.escape(m['text'])}</td>"
                f"<td>{html.escape(str(m['created_at']))[:19]}</td></tr>" for m in latest)
            read_from = latest[0]["server"] if latest else ""
        except HTTPError as exc:
            latest_html = f"<tr><td colspan=3>{html.escape(exc.message)}</td></tr>"
            read_from = "none"
        cluster = self.cluster()
        members = "".join(
            f"<tr class='{html.escape(str(m['role']))}'><td>{html.escape(str(m['name']))}</td>"
            f"<td>{html.escape(str(m['host']))}</td>"
            f"<td>{html.escape(ROLE_NAMES.get(m['role'], str(m['role'])))}</td>"
            f"<td>{html.escape(str(m['state']))}</td>"
            f"<td>{'' if m.get('lag') is None else html.escape(str(m['lag']))}</td></tr>"
            for m in cluster["members"]) or "<tr><td colspan=5>no Patroni REST API answered</td></tr>"
        key = uuid.uuid4()
        return PAGE.format(notice=notice, key=key, latest=latest_html, members=members,
                           read_from=html.escape(read_from or ""), max_text=MAX_TEXT,
                           scope=html.escape(str(cluster.get("scope") or "")))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Messages</title>
<meta http-equiv="refresh" content="30">
<style>body{{font-family:sans-serif;max-width:50em;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .6em}}
.leader td{{background:#e6ffe6}}.error{{color:#b00}}.added,.found{{background:#eef}}</style>
</head><body>
<h1>Messages</h1>
{notice}
<form method="post" action="/"><input type="hidden" name="idempotency_key" value="{key}">
<label>New message <input name="text" id="text" maxlength="{max_text}" required></label>
<button type="submit" id="add">Add</button></form>
<form method="get" action="/"><label>Show message ID <input name="id" id="id" inputmode="numeric"
required></label> <button type="submit" id="show">Show</button></form>
<h2>Latest messages</h2><p>Read from <span id="read-from">{read_from}</span>.</p>
<table id="latest"><tr><th>ID</th><th>Text</th><th>Created</th></tr>{latest}</table>
<h2>Cluster {scope}</h2>
<table id="cluster"><tr><th>Member</th><th>Host</th><th>Role</th><th>State</th><th>Lag</th></tr>
{members}</table>
</body></html>
"""


def application(environ, start_response, _app: list = []):  # noqa: B006 - one App per worker
    if not _app:
        path = os.environ.get("WEBAPP_CONFIG", "/etc/webapp/config.json")
        with open(path) as fh:
            _app.append(App(json.load(fh)))
    return _app[0](environ, start_response)
