"""Monitoring on the live cluster: Prometheus scrapes every target the model names, an alert
fires and clears as the cluster changes (and reaches a webhook through Alertmanager), a leader
change stays in the leader metric's history, and the exporters answer Prometheus only."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from contextlib import contextmanager

import pytest

from lab import settings
from lab.cluster import SYNCHRONOUS_ROLES, cluster, leader, on_web, roles, salt, spare_replica
from lab.workload import wait_healthy
from tests.lab.conftest import lab_exec
from tests.unit.conftest import render

C = cluster()
MONITORING = C.model["monitoring"]
PATRONI = C.model["patroni"]["service"]
ALERTMANAGER = MONITORING["services"]["alertmanager"]
# The promise: a member down is an alert within a minute of it going down.
MEMBER_DOWN_WITHIN = 60.0


def expected_targets() -> set[tuple[str, str]]:
    """(job, host) of every target the model gives Prometheus (pgcluster_render)."""
    config = render.prometheus_config(C.model)
    return {(job["job_name"], static["labels"]["instance"])
            for job in config["scrape_configs"] for static in job["static_configs"]}


def firing(alert: str) -> dict[str, dict]:
    """{host: alert} of the alerts named `alert` that fire, as `salt web monitoring.alerts`
    gives them."""
    alerts = on_web("monitoring.alerts", check=True)
    assert isinstance(alerts, list), alerts
    return {a["instance"]: a for a in alerts if a["alert"] == alert}


def wait_for(what: str, condition, timeout: float, every: float = 1.0) -> float:
    """Seconds until condition() is true; fails naming `what` after `timeout`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout:.0f} s"
        time.sleep(every)
    return time.monotonic() - started


@pytest.fixture
def healthy(lab):
    return wait_healthy(240, settled=True)


def test_prometheus_scrapes_every_target_the_model_names_and_each_is_up(healthy):
    expected = expected_targets()
    targets: dict = {}

    def all_up() -> bool:
        targets.update(on_web("monitoring.targets", check=True))
        up = {(job, host) for job, hosts in targets.items()
              for host, target in hosts.items() if target["health"] == "up"}
        return up == expected

    try:
        wait_for("every target up", all_up, 60, every=2)
    finally:
        print(json.dumps(targets, indent=1))
    found = {(job, host) for job, hosts in targets.items() for host in hosts}
    assert found == expected
    # An exporter that answers may still not reach what it watches: each says whether it does.
    for metric in ("pg_up", "pgbouncer_up"):
        reached = {item["labels"]["instance"]: item["value"]
                   for item in on_web("monitoring.query", metric, check=True)}
        assert reached == dict.fromkeys(C.members, 1.0), (metric, reached)
    # Every member's replication slots, the standbys' too (Patroni keeps the others' slots on
    # them): the exporter's own query asks a standby for pg_current_wal_lsn(), which it
    # refuses, an ERROR in its log at every scrape (salt/monitoring replaces that query).
    slots = {item["labels"]["instance"] for item in on_web(
        "monitoring.query", "count by (instance) (pg_replication_slots_pg_wal_lsn_diff)",
        check=True)}
    assert slots == set(C.members), slots
    # Every host's certificates' ends, for CertificateExpiring (the node exporter's textfile),
    # each in the future.
    ends = on_web("monitoring.query", "pgcluster_certificate_not_after_seconds - time()",
                  check=True)
    found = {(item["labels"]["instance"], item["labels"]["file"]) for item in ends}
    files = {f"{C.model['tls']['dir']}/host.crt", C.model["tls"]["ca_file"]}
    assert found == {(host, file) for host in C.hosts for file in files}, found
    assert all(item["value"] > 86400 for item in ends), ends
    # A healthy cluster fires no critical alert.
    alerts = on_web("monitoring.alerts", check=True)
    assert [a for a in alerts if a["severity"] == "critical"] == [], alerts


def test_the_exporters_answer_prometheus_only(healthy):
    ports = MONITORING["ports"]
    member = next(iter(C.members.values()))
    # This machine is the salt-master, an admin source: let in to PostgreSQL, not to these.
    for address, port in ((member, ports["node_exporter"]), (member, ports["postgres_exporter"]),
                          (C.web_address, ports["haproxy"])):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, port), timeout=5).close()
    # Prometheus itself answers the operators.
    socket.create_connection((MONITORING["address"], ports["prometheus"]), timeout=5).close()


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextmanager
def webhook():
    """An HTTP server on the lab's gateway (this machine) taking Alertmanager's POSTs."""
    _Hook.received = []
    server = http.server.ThreadingHTTPServer((settings.GATEWAY, 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{settings.GATEWAY}:{server.server_address[1]}/hook", _Hook.received
    finally:
        server.shutdown()


def apply_monitoring(pillar: dict | None = None) -> None:
    args = [MONITORING["host"], "state.apply", "monitoring"]
    if pillar:
        args.append(f"pillar={json.dumps(pillar)}")
    result = salt(*args, timeout=300, check=True)[MONITORING["host"]]
    failed = [s["comment"] for s in result.values() if not s["result"]]
    assert not failed, failed


def test_a_stopped_replica_fires_member_down_within_a_minute_reaches_a_webhook_and_clears(healthy):
    replica = spare_replica()
    with webhook() as (url, received):
        # A receiver for this test only: Alertmanager comes with it, and goes with the pillar's.
        apply_monitoring({"pgcluster": {"monitoring": {"receivers": {"webhook": url}}}})
        try:
            assert lab_exec(MONITORING["host"], "systemctl", "is-active", ALERTMANAGER).returncode == 0
            lab_exec(replica, "systemctl", "stop", PATRONI)
            fired = wait_for(f"PatroniMemberDown for {replica}",
                             lambda: replica in firing("PatroniMemberDown"), 120)
            print(f"\nPatroniMemberDown fired {fired:.1f} s after Patroni stopped on {replica}")
            assert fired <= MEMBER_DOWN_WITHIN
            assert firing("PatroniMemberDown")[replica]["severity"] == "critical"

            def delivered() -> bool:
                return any(a["labels"].get("alertname") == "PatroniMemberDown"
                           and a["labels"].get("instance") == replica and a["status"] == "firing"
                           for post in received for a in post.get("alerts", []))
            late = wait_for("the alert at the webhook", delivered, 60)
            print(f"the webhook had it {late:.1f} s later")
        finally:
            lab_exec(replica, "systemctl", "start", PATRONI, check=False)
        cleared = wait_for(f"PatroniMemberDown for {replica} to clear",
                           lambda: replica not in firing("PatroniMemberDown"), 120)
        print(f"it cleared {cleared:.1f} s after Patroni started again")
        assert cleared <= MEMBER_DOWN_WITHIN
        apply_monitoring()
    # Without a receiver in pillar, no Alertmanager.
    assert lab_exec(MONITORING["host"], "systemctl", "is-active", ALERTMANAGER,
                    check=False).returncode != 0
    wait_healthy(240, settled=True)


def test_a_leader_change_stays_in_the_leader_metrics_history(healthy):
    old = leader()
    candidate = next(n for n, r in sorted(roles().items()) if r in SYNCHRONOUS_ROLES)
    on_web("patroni.switchover", f"candidate={candidate}", check=True)
    wait_for(f"{candidate} to lead", lambda: leader() == candidate, 60)

    def led_within_5_minutes() -> set[str]:
        result = on_web("monitoring.query", "max_over_time(patroni_primary{job='patroni'}[5m]) == 1",
                        check=True)
        return {item["labels"]["instance"] for item in result}

    def primary_now() -> set[str]:
        result = on_web("monitoring.query", "patroni_primary{job='patroni'} == 1", check=True)
        return {item["labels"]["instance"] for item in result}

    # Within two scrapes, the new leader's metric says so and the old one's history keeps it.
    wait_for("the new leader in Prometheus", lambda: primary_now() == {candidate}, 60)
    assert {old, candidate} <= led_within_5_minutes()
    wait_healthy(240, settled=True)

