"""A real PostgreSQL 15 for the web app's tests, started from Debian's binaries in a temporary
folder (no mock), a real hot standby of it, and a way to call the WSGI app as a server would."""

from __future__ import annotations

import io
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlencode

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "webapp"))
import db_app

BIN = Path("/usr/lib/postgresql/15/bin")
PORT = 15432
STANDBY_PORT = 15433
PASSWORD = "webapp-test-password"


class PostgreSQL:
    """A primary, or with primary= a hot standby streaming from it (pg_is_in_recovery() true)."""

    def __init__(self, port: int = PORT, primary: PostgreSQL | None = None):
        if not (BIN / "postgres").exists():
            pytest.skip("PostgreSQL 15 is not installed (make deps installs it)")
        self.port = port
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.dir = Path(tempfile.mkdtemp(prefix="webapp-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, self.user)
        self.data = self.dir / "data"
        if primary is not None:
            self._as_user(BIN / "pg_basebackup", "-D", self.data, "-R", "-c", "fast", "-d",
                          f"host=127.0.0.1 port={primary.port} user=postgres password={PASSWORD}")
            self.start()
            return
        self._as_user(BIN / "initdb", "-D", self.data, "-U", "postgres", "-A", "scram-sha-256",
                      "--pwfile", self._pwfile(), "-E", "UTF8", "--locale", "C.UTF-8")
        self.start()
        self.sql(f"CREATE ROLE webapp LOGIN PASSWORD {_literal(PASSWORD)}")
        self.sql("CREATE DATABASE webapp OWNER webapp")

    def _pwfile(self) -> Path:
        path = self.dir / "pw"
        path.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(path, self.user)
        return path

    def _as_user(self, *cmd):
        prefix = ["runuser", "-u", self.user, "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *map(str, cmd)], check=True, capture_output=True, text=True)

    def start(self):
        self._as_user(BIN / "pg_ctl", "-D", self.data, "-w", "-l", self.dir / "log", "-o",
                      f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir}",
                      "start")

    def stop(self):
        self._as_user(BIN / "pg_ctl", "-D", self.data, "-w", "-m", "fast", "stop")

    def sql(self, statement: str, db: str = "postgres") -> str:
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        return subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db,
                               "-XAtc", statement], check=True, capture_output=True, text=True,
                              env=env).stdout.strip()

    def close(self):
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@pytest.fixture(scope="session")
def postgres():
    server = PostgreSQL()
    yield server
    server.close()


@pytest.fixture(scope="session")
def standby(postgres):
    server = PostgreSQL(STANDBY_PORT, primary=postgres)
    yield server
    server.close()


def dsn(port: int = PORT, dbname: str = "webapp") -> dict:
    return {"host": "127.0.0.1", "port": port, "dbname": dbname, "user": "webapp",
            "password": PASSWORD}


def config(writer: dict | None = None, reader: dict | None = None, **extra) -> dict:
    """The app's config.json, as pgcluster.webapp_config writes it."""
    return {"writer": writer or dsn(), "reader": reader or dsn(), "patroni": [], **extra}


@pytest.fixture(scope="session")
def app(postgres):
    return db_app.App(config())


@pytest.fixture
def closed_port():
    """A local port nothing listens on: a database server that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_port():
    """A local port that accepts connections and never says a word: a hung server, or a proxy
    holding the connection while it looks for a backend."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


class Response:
    def __init__(self, status: str, headers: list, body: bytes, log: str = ""):
        self.status = int(status.split(maxsplit=1)[0])
        self.headers = dict(headers)
        self.body = body
        self.text = body.decode()
        self.log = log  # what the app wrote to wsgi.errors

    def json(self):
        return json.loads(self.body)


def call(app, method: str, path: str, body: bytes | str | dict | None = None,
         content_type: str | None = None, headers: dict | None = None) -> Response:
    """One request through the WSGI interface, as gunicorn makes it: the path %-decoded and the
    query string left as sent, both as the request's bytes in latin-1 (PEP 3333). str paths
    are sent as UTF-8, lone surrogates included (as a broken client would)."""
    if isinstance(body, dict):
        body, content_type = json.dumps(body).encode(), content_type or "application/json"
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    body = body or b""
    path, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": unquote_to_bytes(path.encode("utf-8", "surrogatepass")).decode("latin-1"),
        "QUERY_STRING": query.encode("utf-8", "surrogatepass").decode("latin-1"),
        "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": content_type or "",
        "wsgi.input": io.BytesIO(body), "wsgi.errors": io.StringIO(),
        "SERVER_NAME": "test", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
    }
    for key, value in (headers or {}).items():
        environ["HTTP_" + key.upper().replace("-", "_")] = value
    captured = {}

    def start_response(status, response_headers):
        captured["status"], captured["headers"] = status, response_headers

    payload = b"".join(app(environ, start_response))
    response = Response(captured["status"], captured["headers"], payload, environ["wsgi.errors"].getvalue())
    # Never a stack trace, to the user or (an unexpected error) in the log.
    assert "Traceback" not in response.text
    assert "Traceback" not in response.log, response.log
    return response


def csrf_token(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def form_post(app, fields: dict, path: str = "/", token: str | None = None) -> Response:
    """A form post as a browser makes it: with the token the page it was on carried."""
    token = csrf_token(call(app, "GET", path).text) if token is None else token
    body = urlencode({"csrf_token": token, **fields}, encoding="utf-8", errors="surrogatepass")
    return call(app, "POST", path, body, "application/x-www-form-urlencoded")
