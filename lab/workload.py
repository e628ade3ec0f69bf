"""Load and faults for the deployed lab cluster, shared by bench/failover.py and the fault tests.

A Writer inserts a numbered row every 100 ms through HAProxy's primary port on the web host
and records every insert the database acknowledged; a Reader reads through the replica port.
FAULTS hurt a host with bin/lab and repair it. Addresses and ports come from the cluster's
pillar (lab/cluster.py). Needs psycopg2 (the repo's .venv), unlike the rest of this package.
"""

from __future__ import annotations

import base64
import importlib.util
import itertools
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from . import settings
from .cluster import SYNCHRONOUS_ROLES, cluster, cluster_ca_file, leader, on_web, roles

LAB = settings.REPO / "bin" / "lab"
# What the cluster's model renders (pure functions): the web app's libpq settings, as it uses them.
_spec = importlib.util.spec_from_file_location("pgcluster_render",
                                               settings.REPO / "_utils" / "pgcluster_render.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)
INTERVAL = 0.1
TABLE = "bench_writes"


def wait_healthy(timeout: float = 180, sync_standby: bool | str = False,
                 settled: bool = False) -> dict:
    """Until patroni.health says healthy and every member runs or streams; the listing.
    With sync_standby, also until a replica acknowledges commits (one of SYNCHRONOUS_ROLES, or
    the role named): what zero loss depends on. With settled, until the roles are those the
    pillar's synchronous_mode gives (Cluster.settled_roles)."""
    deadline = time.monotonic() + timeout
    while True:
        health = on_web("patroni.health")
        if isinstance(health, dict) and health.get("healthy"):
            listing = on_web("patroni.list")
            members = listing["members"] if isinstance(listing, dict) else []
            if members and all(m["state"] in ("running", "streaming") for m in members) and \
                    (not sync_standby or _synchronous(members, sync_standby)) and \
                    (not settled or sorted(m["role"] for m in members) == cluster().settled_roles):
                return listing
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cluster did not become healthy in {timeout:.0f} s: {health}")
        time.sleep(2)


def _synchronous(members: list[dict], role: bool | str) -> bool:
    wanted = (role,) if isinstance(role, str) else SYNCHRONOUS_ROLES
    return any(m["role"] in wanted for m in members)


def lab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LAB, *args], check=True, capture_output=True, text=True)


def app_dsn(password: str, port: int | None = None) -> dict:
    """The app's database through HAProxy on the web host (the primary port by default)."""
    c = cluster()
    return {"host": c.web_address, "port": port or c.primary_port, "dbname": c.app["database"],
            "user": c.app["user"], "password": password, "connect_timeout": 2}


def libpq_dsn(password: str) -> dict:
    """The app's writer with no proxy, as pgcluster:webapp:data_path libpq gives it
    (pgcluster_render.webapp_config): every member's PostgreSQL in one multi-host connection
    string, target_session_attrs=read-write, the keepalives; the CA as this machine has it."""
    c = cluster()
    model = {**c.model, "webapp": {**c.model["webapp"], "data_path": "libpq"}}
    dsn = render.webapp_config(model, {"app": password, "webapp_csrf": ""})["writer"]
    if "sslrootcert" in dsn:
        dsn["sslrootcert"] = str(cluster_ca_file(c.model))
    return {**dsn, "connect_timeout": 2}


def ensure_table(password: str) -> None:
    import psycopg2  # only the venv has it; bin/lab runs without it

    with psycopg2.connect(**app_dsn(password)) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (tag text, n int, at timestamptz DEFAULT now())")


def rows_on(host: str, tag: str) -> set[int]:
    """The rows of a tag as one member has them, read locally (peer auth, no network)."""
    out = lab("exec", host, "--", "runuser", "-u", "postgres", "--", "psql", "-d",
              cluster().app["database"], "-XAtc",
              f"SELECT n FROM {TABLE} WHERE tag = '{tag}'").stdout
    return {int(line) for line in out.split()}


def in_recovery(host: str) -> bool | None:
    """Whether a member's PostgreSQL is read-only (None if it does not answer)."""
    result = subprocess.run([LAB, "exec", host, "--", "runuser", "-u", "postgres", "--", "psql",
                             "-XAtc", "SELECT pg_is_in_recovery()"],
                            capture_output=True, text=True, check=False)
    return {"t": True, "f": False}.get(result.stdout.strip())


class _Loop(threading.Thread):
    """Run one statement every INTERVAL through a port, reconnecting after errors."""

    def __init__(self, password: str, port: int, dsn: dict | None = None):
        super().__init__(daemon=True)
        self.dsn = dsn or app_dsn(password, port)
        self.ok: list[tuple[float, int]] = []  # (monotonic time, n) of each success
        self.failed = 0
        self.stop = threading.Event()

    def statement(self, cur, n: int) -> None:
        raise NotImplementedError

    def run(self):
        import psycopg2  # only the venv has it; bin/lab runs without it

        conn, n = None, 0
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                if conn is None:
                    conn = psycopg2.connect(**self.dsn)
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("SET statement_timeout = '3s'")
                    self.statement(cur, n)
                self.ok.append((time.monotonic(), n))
                n += 1
            except psycopg2.Error:
                self.failed += 1
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(max(0.0, INTERVAL - (time.monotonic() - started)))
        if conn is not None:
            conn.close()

    def longest_gap(self, since: float, until: float = float("inf")) -> float:
        """Seconds of the longest gap between two successes from `since` on (to `until`)."""
        times = [t for t, _ in self.ok if since <= t <= until]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        return max(gaps) if gaps else float("nan")

    def resumed_after(self, since: float) -> float | None:
        """When the first success after the longest gap from `since` on came."""
        times = [t for t, _ in self.ok if t >= since]
        gaps = [(b - a, b) for a, b in itertools.pairwise(times)]
        return max(gaps)[1] if gaps else None


class Writer(_Loop):
    """Inserts (tag, n) through the primary port (or ``dsn``); `acked` are the n the database
    acknowledged."""

    def __init__(self, password: str, tag: str, dsn: dict | None = None):
        super().__init__(password, cluster().primary_port, dsn)
        self.tag = tag

    def statement(self, cur, n):
        cur.execute(f"INSERT INTO {TABLE} (tag, n) VALUES (%s, %s)", (self.tag, n))

    @property
    def acked(self) -> set[int]:
        return {n for _, n in self.ok}


class Reader(_Loop):
    """Reads through the replica port: the replicas (or the leader when none is healthy)."""

    def __init__(self, password: str):
        super().__init__(password, cluster().replica_port)

    def statement(self, cur, n):
        cur.execute(f"SELECT count(*) FROM {TABLE}")


class Timeline:
    """When the cluster changed hands after a fault, seen from outside every 50 ms.

    One thread per member asks Patroni's REST API `/primary` (what HAProxy's check asks), and
    one asks a surviving member's etcd who holds the leader key. `events()` turns that into
    seconds after the fault: the lock free, the new lock taken, the new primary answering.
    """

    POLL = 0.05

    def __init__(self, members: dict[str, str], hurt: list[str], scope: str,
                 namespace: str = "/service/"):
        self.members, self.hurt = members, set(hurt)
        self.key = base64.b64encode(f"{namespace}{scope}/leader".encode()).decode()
        self.primary: dict[str, list[tuple[float, bool]]] = {name: [] for name in members}
        self.holder: list[tuple[float, str | None]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._poll_primary, args=(n,), daemon=True)
                        for n in members]
        self.threads.append(threading.Thread(target=self._poll_lock, daemon=True))

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def _poll_primary(self, name: str) -> None:
        c = cluster()
        url = c.patroni_url(name, "/primary")
        while not self.stop.is_set():
            try:
                with c.open_patroni(url, timeout=0.5) as answer:
                    is_primary = answer.status == 200
            except (urllib.error.URLError, OSError):
                is_primary = False
            self.primary[name].append((time.monotonic(), is_primary))
            self.stop.wait(self.POLL)

    def _poll_lock(self) -> None:
        survivors = [n for n in self.members if n not in self.hurt]
        c = cluster()
        while not self.stop.is_set():
            holder = "?"
            for name in survivors:
                try:
                    kvs = c.etcd(name, "/v3/kv/range", {"key": self.key}, timeout=0.5).get("kvs") or []
                except (urllib.error.URLError, OSError, ValueError):
                    continue
                holder = base64.b64decode(kvs[0]["value"]).decode() if kvs else None
                break
            self.holder.append((time.monotonic(), holder))
            self.stop.wait(self.POLL)

    def events(self, fault_at: float) -> dict[str, float | None]:
        """Seconds after the fault: `lock_free` (the hurt leader no longer holds the key),
        `lock_taken` (a survivor holds it) and `promoted` (a survivor answers /primary); all
        None when the leader was not among the hurt."""

        def first(samples, condition):
            return next((round(t - fault_at, 2) for t, v in samples
                         if t >= fault_at and condition(v)), None)

        holder_at_fault = next((h for t, h in self.holder if t >= fault_at and h != "?"), None)
        if holder_at_fault not in self.hurt:  # the leader was not hurt: nothing changed hands
            return {"lock_free": None, "lock_taken": None, "promoted": None}
        new_primary = [first(self.primary[n], bool) for n in self.members if n not in self.hurt]
        return {
            "lock_free": first(self.holder, lambda h: h != "?" and h not in self.hurt),
            "lock_taken": first(self.holder, lambda h: h not in (None, "?") and h not in self.hurt),
            "promoted": min((t for t in new_primary if t is not None), default=None),
        }


def _synchronous_standby() -> str:
    """A replica that acknowledges commits (the first, with quorum commit)."""
    return next(name for name, r in sorted(roles().items()) if r in SYNCHRONOUS_ROLES)


def _replicas() -> list[str]:
    return sorted(name for name, r in roles().items() if r != "Leader")


@dataclass
class Fault:
    """What a scenario hurts (chosen from the live cluster), how, and how it is repaired."""

    description: str
    targets: Callable[[], list[str]]
    inject: Callable[[str], object]
    repair: Callable[[str], object]
    observe: float  # seconds to watch the writer after the fault
    # Patroni's dynamic configuration the scenario runs under (set before it, the pillar's
    # value put back after), when not the deployed one.
    dynamic_config: dict | None = None


FAULTS = {
    "stop": Fault("systemctl stop patroni on the leader", lambda: [leader()],
                  lambda h: lab("exec", h, "--", "systemctl", "stop", "patroni"),
                  lambda h: lab("exec", h, "--", "systemctl", "start", "patroni"), 15),
    "kill9": Fault("kill -9 of the leader's postmaster", lambda: [leader()],
                   lambda h: lab("exec", h, "--", "pkill", "-9", "-o", "-x", "postgres"),
                   lambda h: None, 30),
    "crash": Fault("power cut of the leader host, then power on", lambda: [leader()],
                   lambda h: lab("crash", h), lambda h: lab("start", h), 45),
    "partition": Fault("the leader cut off the network, then healed", lambda: [leader()],
                       lambda h: lab("partition", h), lambda h: lab("heal", h), 45),
    "etcd-one": Fault("etcd stopped on one replica", lambda: _replicas()[:1],
                      lambda h: lab("exec", h, "--", "systemctl", "stop", "etcd"),
                      lambda h: lab("exec", h, "--", "systemctl", "start", "etcd"), 15),
    "etcd-quorum": Fault("etcd stopped on both replicas: quorum lost, then restored", _replicas,
                         lambda h: lab("exec", h, "--", "systemctl", "stop", "etcd"),
                         lambda h: lab("exec", h, "--", "systemctl", "start", "etcd"), 30),
    "switchover": Fault("planned switchover (salt web patroni.switchover)", lambda: [leader()],
                        lambda h: on_web("patroni.switchover"), lambda h: None, 15),
    "replica-crash": Fault("power cut of a synchronous standby, then power on",
                           lambda: [_synchronous_standby()],
                           lambda h: lab("crash", h), lambda h: lab("start", h), 30),
    # The same with one named synchronous standby instead of quorum commit: the comparisons.
    "switchover-sync": Fault("planned switchover (synchronous_mode: true)", lambda: [leader()],
                             lambda h: on_web("patroni.switchover"), lambda h: None, 15,
                             dynamic_config={"synchronous_mode": True}),
    "replica-crash-sync": Fault("power cut of the synchronous standby (synchronous_mode: true), "
                                "then power on", lambda: [_synchronous_standby()],
                                lambda h: lab("crash", h), lambda h: lab("start", h), 30,
                                dynamic_config={"synchronous_mode": True}),
}


def run_under(config: dict | None) -> None:
    """Put Patroni's dynamic configuration to `config` (None: the pillar's synchronous_mode)
    and wait until the synchronous standbys it implies are named."""
    mode = cluster().model["patroni"]["synchronous_mode"]
    wanted = config or {"synchronous_mode": mode}
    on_web("patroni.patch_config", json.dumps(wanted), check=True)
    mode = wanted.get("synchronous_mode", mode)
    role = "Quorum Standby" if mode == "quorum" else "Sync Standby" if mode else False
    wait_healthy(240, sync_standby=role)
