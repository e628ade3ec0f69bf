"""Serve recorded answers of Patroni and etcd (tests/recordings) on loopback, one address per
member (127.0.0.11-13), so the execution modules talk real HTTP to what the lab answered; and
members that misbehave at the socket level (hang, hang up, answer garbage), on real sockets."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"
MEMBERS = {"postgres-srv1": "127.0.0.11", "postgres-srv2": "127.0.0.12", "postgres-srv3": "127.0.0.13"}
PATRONI_PORT = 18008
ETCD_PORT = 12379


def _to_loopback(body: str) -> str:
    """The recordings name the lab's addresses: point them here, so that a module following a
    URL from an answer (etcd's client URLs) stays on loopback."""
    for last in ("11", "12", "13"):
        body = body.replace(f"10.0.0.{last}:2379", f"127.0.0.{last}:{ETCD_PORT}")
        body = body.replace(f"10.0.0.{last}:8008", f"127.0.0.{last}:{PATRONI_PORT}")
        body = body.replace(f"10.0.0.{last}", f"127.0.0.{last}")
    return body


GARBAGE = b"this is not HTTP\r\n\r\n"


def _etcd_error(status: int, message: str) -> tuple[int, bytes]:
    # etcd 3.4's gateway, as it answered in the lab (auth on, tokens "simple").
    code = {400: 3, 401: 16, 403: 7, 412: 9}[status]
    return status, json.dumps({"error": f"etcdserver: {message}", "message": f"etcdserver: "
                                        f"{message}", "code": code}).encode()


def _etcd_auth(server, path: str, body: bytes, headers) -> tuple[int, bytes] | None:
    """etcd's authentication for the recorded answers, when the server has users
    ({name: (password, prefix it may reach, may write)}): an answer, or None to go on."""
    users = getattr(server, "etcd_users", None)
    if not users or server.kind != "etcd":
        return None
    asked = json.loads(body or b"{}")
    if path == "/v3/auth/authenticate":
        password = users.get(asked.get("name"), (None,))[0]
        if password is None or password != asked.get("password"):
            return _etcd_error(400, "authentication failed, invalid user ID or password")
        return 200, json.dumps({"header": {}, "token": f"token-of-{asked['name']}.1"}).encode()
    if not path.startswith("/v3/kv/"):
        return None  # health, status and the member list take no token in etcd 3.4
    return _etcd_permission(users, path, asked, headers.get("Authorization"))


def _etcd_permission(users: dict, path: str, asked: dict, token: str | None):
    if not token:
        return _etcd_error(400, "user name is empty")
    user = token.removeprefix("token-of-").rpartition(".")[0]
    if user not in users:
        return _etcd_error(401, "invalid auth token")
    _password, prefix, write = users[user]
    key = base64.b64decode(asked.get("key", "")).decode()
    if not key.startswith(prefix) or (path != "/v3/kv/range" and not write):
        return _etcd_error(403, "permission denied")
    return None


class _Handler(BaseHTTPRequestHandler):
    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append((self.command, self.path, body, dict(self.headers)))
        path = self.path.split("?", 1)[0]
        suffix = "@etcd" if self.server.kind == "etcd" else ""
        key = f"{self.command} {path}{suffix}"
        refused = _etcd_auth(self.server, path, body, self.headers)
        if refused is not None:
            status, payload = refused
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        how = self.server.misbehaving.get(key)
        if how is not None:
            # The request was read whole: "close" hangs up cleanly, without a status line.
            self.close_connection = True
            if how == "garbage":
                self.wfile.write(GARBAGE)
            return
        recorded = self.server.answers.get(key)
        if recorded is None:
            self.send_response(404)
            self.end_headers()
            return
        payload = _to_loopback(recorded["body"])
        if self.server.kind == "etcd" and self.server.https:  # recorded over http
            payload = payload.replace("http://127.0.0.", "https://127.0.0.")
        payload = payload.encode()
        self.send_response(recorded["status"])
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in getattr(self.server, "extra_headers", {}).items():
            self.send_header(name, value)  # restapi.http_extra_headers, as Patroni sends them
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *args):
        pass


class RawServer:
    """A TCP server on one loopback address and port that accepts every connection, then by
    `how`: "silent" reads nothing and says nothing, holding the connection open (a member that
    hangs); "close" reads the request and hangs up without an answer; "garbage" reads the
    request and answers bytes that are not HTTP."""

    def __init__(self, address: str, port: int, how: str):
        assert how in ("silent", "close", "garbage"), how
        self.how = how
        self.held: list[socket.socket] = []
        self.accepted = 0
        self.stopping = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(32)
        self.sock.settimeout(0.05)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            if self.how == "silent":
                self.held.append(conn)
                continue
            conn.settimeout(2)
            try:
                conn.recv(65536)
                if self.how == "garbage":
                    conn.sendall(GARBAGE)
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def close(self):
        self.stopping.set()
        self.thread.join(timeout=2)
        self.sock.close()
        for conn in self.held:
            conn.close()


class RecordedCluster:
    """Start with the answers of a scenario; members listed in `down` get no server at all, and
    members in `raw` ({name: "silent" | "close" | "garbage"}) a RawServer on both ports."""

    def __init__(self, scenario: str, down: tuple[str, ...] = (), raw: dict[str, str] | None = None,
                 tls: dict[str, tuple[bytes, bytes]] | None = None, tmp: Path | None = None,
                 etcd_tls: bool = False, etcd_users: dict | None = None):
        """tls: {member: (certificate PEM, key PEM)} serves that member's Patroni REST API over
        HTTPS with it (files written in tmp), and with etcd_tls its etcd too. etcd_users:
        etcd's authentication on, {user: (password, prefix it may reach, may write)}."""
        self.servers = []
        self.raw_servers = []
        self.answers = {}
        raw = raw or {}
        for name, address in MEMBERS.items():
            if name in raw:
                self.raw_servers += [RawServer(address, port, raw[name])
                                     for port in (PATRONI_PORT, ETCD_PORT)]
                continue
            recorded = RECORDINGS / scenario / f"{name}.json"
            if name in down or not recorded.exists():
                continue
            answers = json.loads(recorded.read_text())
            self.answers[name] = answers
            for kind, port in (("patroni", PATRONI_PORT), ("etcd", ETCD_PORT)):
                server = ThreadingHTTPServer((address, port), _Handler)
                if tls and name in tls and (kind == "patroni" or etcd_tls):
                    server.socket = _tls_context(tls[name], tmp / name).wrap_socket(
                        server.socket, server_side=True)
                server.etcd_users = etcd_users
                server.https = etcd_tls
                server.kind, server.answers, server.requests = kind, answers, []
                server.member, server.misbehaving = name, {}
                threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                 daemon=True).start()
                self.servers.append(server)

    def misbehave(self, member: str, request: str, how: str):
        """Make `member` answer `request` ("POST /switchover", "GET /health@etcd") with `how`:
        "close" (hang up without an answer) or "garbage" (bytes that are not HTTP)."""
        kind = "etcd" if request.endswith("@etcd") else "patroni"
        for server in self.servers:
            if server.member == member and server.kind == kind:
                server.misbehaving[request] = how

    def send_headers(self, member: str, headers: dict[str, str]):
        """Make `member`'s Patroni add `headers` to its answers (restapi.http_extra_headers)."""
        for server in self.servers:
            if server.member == member and server.kind == "patroni":
                server.extra_headers = dict(headers)

    def stop(self, member: str):
        """`member`'s servers go away: nothing listens on its address any more."""
        for server in [s for s in self.servers if s.member == member]:
            server.shutdown()
            server.server_close()
            self.servers.remove(server)

    def requests(self, member: str | None = None):
        """(method, path, body, headers) of every request the recorded servers received."""
        return [r for s in self.servers if member in (None, s.member) for r in s.requests]

    def posts(self, path: str):
        """The bodies (JSON) of the POSTs to `path`, per member, in the order received."""
        return [(s.member, json.loads(r[2] or b"null")) for s in self.servers
                for r in s.requests if r[0] == "POST" and r[1] == path]

    def close(self):
        for server in self.servers:
            server.shutdown()
            server.server_close()
        for server in self.raw_servers:
            server.close()


def _tls_context(pems: tuple[bytes, bytes], folder: Path) -> ssl.SSLContext:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "host.crt").write_bytes(pems[0])
    (folder / "host.key").write_bytes(pems[1])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "host.crt", folder / "host.key")
    return context


def cluster_config(fresh=False, ca_file=None, etcd_tls=False, etcd_auth=False):
    """What pgcluster.config gives, with the members on the loopback addresses above; with
    ca_file, Patroni's REST API over HTTPS verified by that CA (pgcluster:patroni:tls), and
    with etcd_tls etcd too (pgcluster:etcd:tls); etcd_auth: pgcluster:etcd:auth."""
    names = sorted(MEMBERS)
    scheme = "https" if ca_file else "http"
    etcd_scheme = "https" if etcd_tls else "http"
    return {
        "name": "pg-cluster-skynet",
        "member_names": names,
        "members": {n: {"address": MEMBERS[n]} for n in names},
        "patroni": {"restapi_port": PATRONI_PORT, "maximum_lag_on_failover": 1048576,
                    "tls": bool(ca_file),
                    "urls": {n: f"{scheme}://{MEMBERS[n]}:{PATRONI_PORT}" for n in names}},
        "tls": {"ca_file": ca_file},
        "pgbackrest": {"enabled": True},
        "etcd": {"endpoints": [f"{MEMBERS[n]}:{ETCD_PORT}" for n in names],
                 "urls": {n: f"{etcd_scheme}://{MEMBERS[n]}:{ETCD_PORT}" for n in names},
                 "tls": etcd_tls, "auth": etcd_auth, "namespace": "/service/",
                 "prefix": "/service/pg-cluster-skynet/"},
    }
