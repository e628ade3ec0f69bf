"""Serve recorded answers of Patroni and etcd (tests/recordings) on loopback, one address per
member (127.0.0.11-13), so the execution modules talk real HTTP to what the lab answered."""

from __future__ import annotations

import json
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


class _Handler(BaseHTTPRequestHandler):
    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append((self.command, self.path, body, dict(self.headers)))
        path = self.path.split("?", 1)[0]
        suffix = "@etcd" if self.server.kind == "etcd" else ""
        recorded = self.server.answers.get(f"{self.command} {path}{suffix}")
        if recorded is None:
            self.send_response(404)
            self.end_headers()
            return
        payload = _to_loopback(recorded["body"]).encode()
        self.send_response(recorded["status"])
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *args):
        pass


class RecordedCluster:
    """Start with the answers of a scenario; members listed in `down` get no server at all."""

    def __init__(self, scenario: str, down: tuple[str, ...] = ()):
        self.servers = []
        self.answers = {}
        for name, address in MEMBERS.items():
            recorded = RECORDINGS / scenario / f"{name}.json"
            if name in down or not recorded.exists():
                continue
            answers = json.loads(recorded.read_text())
            self.answers[name] = answers
            for kind, port in (("patroni", PATRONI_PORT), ("etcd", ETCD_PORT)):
                server = ThreadingHTTPServer((address, port), _Handler)
                server.kind, server.answers, server.requests = kind, answers, []
                threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                 daemon=True).start()
                self.servers.append(server)

    def requests(self):
        return [r for s in self.servers for r in s.requests]

    def close(self):
        for server in self.servers:
            server.shutdown()
            server.server_close()


def cluster_config():
    """What pgcluster.config gives, with the members on the loopback addresses above."""
    names = sorted(MEMBERS)
    return {
        "name": "pg-cluster-skynet",
        "member_names": names,
        "members": {n: {"address": MEMBERS[n]} for n in names},
        "patroni": {"restapi_port": PATRONI_PORT, "maximum_lag_on_failover": 1048576},
        "etcd": {"endpoints": [f"{MEMBERS[n]}:{ETCD_PORT}" for n in names]},
    }
