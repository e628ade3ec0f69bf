"""A real PostgreSQL 15 for the web app's tests, started from Debian's binaries in a temporary
folder (no mock), and a way to call the WSGI app as a server would."""

from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "webapp"))
import db_app

BIN = Path("/usr/lib/postgresql/15/bin")
PORT = 15432
PASSWORD = "webapp-test-password"


class PostgreSQL:
    def __init__(self):
        if not (BIN / "postgres").exists():
            pytest.skip("PostgreSQL 15 is not installed (make deps installs it)")
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.dir = Path(tempfile.mkdtemp(prefix="webapp-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, self.user)
        self.data = self.dir / "data"
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
                      f"-p {PORT} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir}",
                      "start")

    def stop(self):
        self._as_user(BIN / "pg_ctl", "-D", self.data, "-w", "-m", "fast", "stop")

    def sql(self, statement: str, db: str = "postgres") -> str:
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        return subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres", "-d", db,
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
def app(postgres):
    dsn = {"host": "127.0.0.1", "port": PORT, "dbname": "webapp", "user": "webapp",
           "password": PASSWORD}
    return db_app.App({"writer": dsn, "reader": dsn, "patroni": []})


class Response:
    def __init__(self, status: str, headers: list, body: bytes):
        self.status = int(status.split(maxsplit=1)[0])
        self.headers = dict(headers)
        self.body = body
        self.text = body.decode()

    def json(self):
        return json.loads(self.body)


def call(app, method: str, path: str, body: bytes | str | dict | None = None,
         content_type: str | None = None, headers: dict | None = None) -> Response:
    """One request through the WSGI interface, as gunicorn makes it."""
    if isinstance(body, dict):
        body, content_type = json.dumps(body).encode(), content_type or "application/json"
    if isinstance(body, str):
        body = body.encode()
    body = body or b""
    path, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
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
    response = Response(captured["status"], captured["headers"], payload)
    assert "Traceback" not in response.text
    return response
