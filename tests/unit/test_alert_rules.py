"""The cluster's Prometheus alert rules (render.alert_rules), tested with Prometheus's own
`promtool test rules`.

Each scenario is a cluster's metrics over time as Prometheus scrapes them (the jobs and labels of
render.prometheus_config, one sample per scrape interval), healthy unless the scenario breaks
something, and the alerts that must fire, or must not, at given times. Thresholds come from the
model (pgcluster:monitoring:alerts), `for` durations from the rules themselves. An alert a
scenario does not mention must stay quiet at every evaluation (unless the scenario checks only
some). A scenario that shows a rule bug is marked xfail (strict), with the behaviour the rule
should have.

The scenarios go to promtool a dozen to a run, the runs side by side; only when a run fails is
a scenario run again alone, so that its failure carries promtool's own output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.unit.conftest import CLUSTER_PILLAR, build, render


def pillar_with(section: str, **keys) -> dict:
    """pillar/cluster.sls's `section` with `keys` changed (build() replaces whole sections)."""
    return {section: {**CLUSTER_PILLAR.get(section, {}), **keys}}


# The cluster models the rules are rendered for.
MODELS: dict[str, Callable[[], dict]] = {
    "default": build,
    "sync-strict": lambda: build(pillar_with(
        "patroni", synchronous_mode=True, synchronous_mode_strict=True)),
    "async-no-backups": lambda: build({**pillar_with("patroni", synchronous_mode=False),
                                       **pillar_with("pgbackrest", enabled=False)}),
}
CONDITIONAL = {"PatroniNoSynchronousStandby", "PostgreSQLArchiveFailing", "PostgreSQLArchiveStale"}

STALE = "stale"  # Prometheus's stale marker: the target did not answer this scrape
WAL_START = 0x9000060  # the leader's WAL position at time 0 (bytes)
WAL_PER_SCRAPE = 64 * 1024  # what it writes between two scrapes
GIB = 2**30


def seconds(duration: str) -> int:
    """A Prometheus duration (10s, 1m, 1h30m) in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    parts = re.findall(r"([0-9]+)([smhdw])", duration)
    assert "".join(n + u for n, u in parts) == duration, f"cannot read duration {duration!r}"
    return sum(int(n) * units[u] for n, u in parts)


def humanize_duration(value: float) -> str:
    """Prometheus's template function humanizeDuration, for a minute or more."""
    assert value >= 60
    days, rest = divmod(int(value), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m {secs}s"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s"


def humanize1024(value: float) -> str:
    """Prometheus's template function humanize1024."""
    prefix = ""
    for unit in ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"):
        if abs(value) < 1024:
            break
        prefix, value = unit, value / 1024
    return f"{value:.4g}{prefix}"


def target(job: str, host: str) -> dict:
    """The labels of a target's series (render.prometheus_config names each by its host)."""
    return {"job": job, "instance": host}


class Cluster:
    """The cluster's series over `duration` seconds, one value per scrape (None: no sample).

    Healthy at first: every target answers; the first member leads, writes WAL and archives it
    in time; the others replay it and are its synchronous standbys as the pillar asks (a
    replica's last archive is old: it archives nothing); disks and memory half used; on every
    host a tmpfs nearly full and a full read-only filesystem, neither a disk that fills up; the
    certificates end in a year."""

    def __init__(self, cfg: dict, duration: int):
        self.cfg = cfg
        self.step = seconds(cfg["monitoring"]["scrape_interval"])
        self.times = range(0, duration + 1, self.step)
        self.series: dict[tuple[str, tuple], list] = {}
        self.members = cfg["member_names"]
        self.hosts = self.members + cfg["web_names"]
        for job in render.prometheus_config(cfg)["scrape_configs"]:
            for static in job["static_configs"]:
                self.set("up", {"job": job["job_name"], **static["labels"]}, 1)
        for member in self.members:
            self.set("patroni_postgres_running", self.patroni(member), 1)
            self.set("etcd_server_has_leader", target("etcd", member), 1)
            self.set("pg_stat_archiver_failed_count", target("postgres", member), 0)
            # The exporters reach what they watch.
            self.set("pg_up", target("postgres", member), 1)
            if cfg["pgbouncer"]["enabled"]:
                self.set("pgbouncer_up", target("pgbouncer", member), 1)
        self.lead(self.members[0])
        for host in self.hosts:
            self.filesystem(host, "/dev/vda1", "/", "ext4", 60)
            self.filesystem(host, "tmpfs", "/run", "tmpfs", 1)
            self.filesystem(host, "/dev/sr0", "/media/cdrom", "iso9660", 0, readonly=True)
            self.memory(host, 50)
            for file in (f"{cfg['tls']['dir']}/host.crt", cfg["tls"]["ca_file"]):
                self.set("pgcluster_certificate_not_after_seconds",
                         {**target("node", host), "file": file}, 365 * 86400)
        for web in cfg["web_names"]:
            self.set("haproxy_backend_active_servers", {**target("haproxy", web), "proxy": "primary"}, 1)
            self.set("haproxy_backend_active_servers", {**target("haproxy", web), "proxy": "replicas"},
                     len(self.members) - 1)

    def patroni(self, member: str) -> dict:
        """The labels of Patroni's own metrics: its target's, and scope and name."""
        return {**target("patroni", member), "scope": self.cfg["name"], "name": member}

    def wal(self, t: int) -> int:
        """Where the leader's WAL is at `t`: it writes all along."""
        return WAL_START + WAL_PER_SCRAPE * (t // self.step)

    def set(self, name: str, labels: dict, value, start: int = 0, end: int | None = None):
        """The series' value from `start` until before `end`: a number, None (no sample),
        STALE, or a function of the time giving one."""
        values = self.series.setdefault((name, tuple(sorted(labels.items()))), [None] * len(self.times))
        for i, t in enumerate(self.times):
            if start <= t and (end is None or t < end):
                values[i] = value(t) if callable(value) else value

    def value(self, name: str, labels: dict, t: int):
        return self.series[(name, tuple(sorted(labels.items())))][t // self.step]

    def lead(self, leader: str, start: int = 0, end: int | None = None):
        """`leader` leads from `start`, the others replicate one scrape's WAL behind it."""
        sync = self.cfg["patroni"]["synchronous_mode"]
        replicas = [m for m in self.members if m != leader]
        standbys = replicas[:self.cfg["patroni"]["synchronous_node_count"]]
        for member in self.members:
            labels, leads = self.patroni(member), member == leader
            self.set("patroni_primary", labels, int(leads), start, end)
            self.set("patroni_replica", labels, int(not leads), start, end)
            self.set("patroni_quorum_standby", labels, int(sync == "quorum" and not leads), start, end)
            self.set("patroni_sync_standby", labels, int(sync is True and member in standbys), start, end)
            self.set("patroni_xlog_location", labels, self.wal if leads else 0, start, end)
            self.set("patroni_xlog_replayed_location", labels,
                     0 if leads else lambda t: self.wal(t) - WAL_PER_SCRAPE, start, end)
            self.set("pg_stat_archiver_last_archive_age", target("postgres", member),
                     30 if leads else lambda t: 86400 + t, start, end)

    def switchover(self, old: str, new: str, at: int, both: int = 0, neither: int = 0):
        """`new` leads from `at`. For `both` scrapes the old leader still says it leads, or
        for `neither` scrapes the new one does not yet; the old leader's PostgreSQL restarts
        as a replica (not running for a scrape), HAProxy finds no leader for `neither` + 1."""
        self.lead(new, at)
        self.set("patroni_primary", self.patroni(old), 1, at, at + both * self.step)
        self.set("patroni_primary", self.patroni(new), 0, at, at + neither * self.step)
        self.set("patroni_postgres_running", self.patroni(old), 0, at, at + self.step)
        # It archived all its WAL as it shut down.
        self.set("pg_stat_archiver_last_archive_age", target("postgres", old),
                 lambda t: t - at + self.step, at)
        for web in self.cfg["web_names"]:
            self.set("haproxy_backend_active_servers", {**target("haproxy", web), "proxy": "primary"},
                     0, at, at + (neither + 1) * self.step)

    def stop(self, job: str, host: str, start: int, end: int | None = None):
        """The target stops answering from `start` to before `end`: up is 0, and its other
        series go stale, then have no samples until it is back."""
        for (name, labels), values in self.series.items():
            if name != "up" and {"job": job, "instance": host}.items() <= dict(labels).items():
                for i, t in enumerate(self.times):
                    if start <= t and (end is None or t < end):
                        values[i] = STALE if t == start else None
        self.set("up", target(job, host), 0, start, end)

    def postgres_stops(self, member: str, start: int, end: int | None = None):
        """PostgreSQL stops under a running Patroni, which then reports it as not running and
        no WAL position (0), keeps its role, and is no synchronous standby; its exporter
        answers without PostgreSQL's statistics."""
        labels = self.patroni(member)
        self.set("patroni_postgres_running", labels, 0, start, end)
        for name in ("patroni_xlog_location", "patroni_xlog_replayed_location",
                     "patroni_sync_standby", "patroni_quorum_standby"):
            self.set(name, labels, 0, start, end)
        for name in ("pg_stat_archiver_last_archive_age", "pg_stat_archiver_failed_count"):
            self.set(name, target("postgres", member), lambda t: STALE if t == start else None,
                     start, end)
        self.set("pg_up", target("postgres", member), 0, start, end)

    def filesystem(self, host: str, device: str, mountpoint: str, fstype: str,
                   free_percent: float, start: int = 0, end: int | None = None,
                   readonly: bool = False) -> dict:
        labels = {**target("node", host), "device": device, "fstype": fstype,
                  "mountpoint": mountpoint}
        self.set("node_filesystem_size_bytes", labels, 100 * GIB, start, end)
        self.set("node_filesystem_avail_bytes", labels, free_percent * GIB, start, end)
        self.set("node_filesystem_readonly", labels, int(readonly), start, end)
        return labels

    def memory(self, host: str, available_percent: float, start: int = 0, end: int | None = None):
        self.set("node_memory_MemTotal_bytes", target("node", host), 100 * GIB, start, end)
        self.set("node_memory_MemAvailable_bytes", target("node", host), available_percent * GIB,
                 start, end)

    def input_series(self) -> list[dict]:
        return [{"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}",
                 "values": values_text(values)}
                for (name, labels), values in self.series.items()]


def values_text(values: list) -> str:
    """promtool's notation for a series' values: runs of a constant step as `a+bxn`."""
    def is_number(i: int) -> bool:
        return i < len(values) and values[i] is not None and values[i] != STALE

    words, i = [], 0
    while i < len(values):
        if not is_number(i):
            words.append("_" if values[i] is None else STALE)
            i += 1
            continue
        end = i + 1
        diff = values[end] - values[i] if is_number(end) else 0
        while is_number(end) and values[end] - values[end - 1] == diff:
            end += 1
        words.append(f"{number(values[i])}{'+' if diff >= 0 else '-'}{number(abs(diff))}"
                     f"x{end - i - 1}")
        i = end
    return " ".join(words)


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Scenario:
    """One promtool test group: a cluster's series and what promtool must see of the alerts."""

    def __init__(self, name: str, cfg: dict):
        self.name, self.cfg = name, cfg
        self.rules = {r["alert"]: r for r in render.alert_rules(cfg)["groups"][0]["rules"]}
        self.step = seconds(cfg["monitoring"]["scrape_interval"])
        self.checks: list[dict] = []
        self.unchecked: set[str] = set()
        self.c: Cluster

    def cluster(self, duration: int) -> Cluster:
        self.c = Cluster(self.cfg, duration)
        return self.c

    @property
    def end(self) -> int:
        return self.c.times[-1]

    def for_(self, alert: str) -> int:
        return seconds(self.rules[alert].get("for", "0s"))

    def expected(self, alert: str, labels: dict, summary: str) -> dict:
        return {"exp_labels": {**labels, "severity": self.rules[alert]["labels"]["severity"]},
                "exp_annotations": {"summary": summary}}

    def quiet(self, alert: str, start: int = 0, end: int | None = None):
        """`alert` is not firing at any evaluation from `start` to `end` (pending is not firing)."""
        for t in range(start, (self.end if end is None else end) + 1, self.step):
            self.checks.append({"eval_time": f"{t}s", "alertname": alert, "exp_alerts": []})

    def fires(self, alert: str, *alerts: tuple[dict, str], at: int, until: int | None = None):
        """`alert` fires at `at` (and every evaluation to `until`) exactly as `alerts`, each
        (labels, summary)."""
        for t in range(at, (at if until is None else until) + 1, self.step):
            self.checks.append({"eval_time": f"{t}s", "alertname": alert,
                                "exp_alerts": [self.expected(alert, *a) for a in alerts]})

    def starts_firing(self, alert: str, at: int, *alerts: tuple[dict, str], until: int | None = None):
        """Quiet at every evaluation before `at`, firing from `at` (to `until`)."""
        self.quiet(alert, 0, at - self.step)
        self.fires(alert, *alerts, at=at, until=until)

    def check_only(self, *alerts: str):
        """Leave the alerts other than `alerts` unchecked (not required to stay quiet)."""
        self.unchecked = set(self.rules) - set(alerts)

    def promtool_group(self) -> dict:
        checked = {c["alertname"] for c in self.checks} | self.unchecked
        for alert in self.rules:
            if alert not in checked:
                self.quiet(alert)
        return {"name": self.name, "interval": self.cfg["monitoring"]["scrape_interval"],
                "input_series": self.c.input_series(), "alert_rule_test": self.checks}


# name: (models it runs under, function filling a Scenario in, reason it is expected to fail)
SCENARIOS: dict[str, tuple[tuple[str, ...], Callable[[Scenario], None], str | None]] = {}


def scenario(*models: str, rule_bug: str | None = None):
    def register(function):
        SCENARIOS[function.__name__] = (models or ("default",), function, rule_bug)
        return function
    return register


@scenario("default", "sync-strict", "async-no-backups")
def healthy_cluster(s: Scenario):
    """A healthy cluster raises nothing: not its replicas' old last archive, a full tmpfs or
    read-only filesystem, or WAL replay one scrape behind. Long enough for every `for` and the
    archive window to pass."""
    longest = max(s.for_(alert) for alert in s.rules)
    s.cluster(s.cfg["monitoring"]["alerts"]["archive_age"] + longest + 5 * 60)


@scenario()
def stopped_replica(s: Scenario):
    """A replica's Patroni stops: PatroniMemberDown within a minute, until it is back; the
    leader and the other standby carry on, so nothing else."""
    c = s.cluster(15 * 60)
    replica, stop, back = c.members[1], 5 * 60, 10 * 60
    c.stop("patroni", replica, stop, back)
    down = (target("patroni", replica), f"{replica}: Patroni or its PostgreSQL is not running")
    s.starts_firing("PatroniMemberDown", stop + s.for_("PatroniMemberDown"), down, until=back - s.step)
    # It stopped at the earliest just after the last scrape that saw it up (stop - step): a
    # minute later it fires, even with a real Prometheus's evaluation trailing its scrapes by
    # up to an interval.
    s.fires("PatroniMemberDown", down, at=stop - s.step + 60 - s.step)
    s.quiet("PatroniMemberDown", back)


@scenario()
def restarts_shorter_than_the_for(s: Scenario):
    """A restart (rolling maintenance) that keeps Patroni away for the alert's `for` raises
    nothing; one scrape longer fires, once."""
    c = s.cluster(10 * 60)
    hold = s.for_("PatroniMemberDown")
    brief, longer = c.members[1], c.members[2]
    c.stop("patroni", brief, 2 * 60, 2 * 60 + hold)
    c.stop("patroni", longer, 5 * 60, 5 * 60 + hold + s.step)
    s.starts_firing("PatroniMemberDown", 5 * 60 + hold,
                    (target("patroni", longer), f"{longer}: Patroni or its PostgreSQL is not running"))
    s.quiet("PatroniMemberDown", 5 * 60 + hold + s.step)


@scenario()
def postgres_stopped_under_patroni(s: Scenario):
    """A replica's PostgreSQL stops while its Patroni runs: PatroniMemberDown (with Patroni's
    labels), until it runs again. (PostgreSQLReplicationLag: the next scenario.)"""
    c = s.cluster(10 * 60)
    replica, stop, back = c.members[2], 2 * 60, 7 * 60
    c.postgres_stops(replica, stop, back)
    s.starts_firing("PatroniMemberDown", stop + s.for_("PatroniMemberDown"),
                    (c.patroni(replica), f"{replica}: Patroni or its PostgreSQL is not running"),
                    until=back - s.step)
    s.quiet("PatroniMemberDown", back)
    s.unchecked.add("PostgreSQLReplicationLag")


@scenario()
def postgres_stopped_is_no_replication_lag(s: Scenario):
    """A replica whose PostgreSQL is stopped is down (PatroniMemberDown), not lagging: Patroni
    reports no replayed position (0) for it, which is not a lag of the whole WAL."""
    c = s.cluster(10 * 60)
    c.postgres_stops(c.members[2], 2 * 60, 7 * 60)
    s.check_only("PostgreSQLReplicationLag")


@scenario()
def switchover_with_two_leaders_for_two_scrapes(s: Scenario):
    """A switchover where old and new leader both say they lead for two scrapes (the old
    one's PostgreSQL restarting, HAProxy without a leader for a scrape) raises nothing."""
    c = s.cluster(8 * 60)
    c.switchover(c.members[0], c.members[1], 3 * 60, both=2)


@scenario()
def switchover_with_no_leader_for_a_scrape(s: Scenario):
    """A switchover where no member leads for a scrape (10 s), HAProxy none for two, raises
    nothing."""
    c = s.cluster(8 * 60)
    c.switchover(c.members[0], c.members[1], 3 * 60, neither=1)


@scenario()
def no_leader(s: Scenario):
    """No member leads (Patroni runs, none holds the lock): PatroniNoLeader after its `for`."""
    c = s.cluster(8 * 60)
    c.set("patroni_primary", c.patroni(c.members[0]), 0, 3 * 60)
    s.starts_firing("PatroniNoLeader", 3 * 60 + s.for_("PatroniNoLeader"),
                    ({}, "No member of the cluster is the leader: writes fail"))


@scenario()
def every_patroni_down(s: Scenario):
    """No Patroni answers: no leader (no series at all is no leader), every member down, and
    no synchronous standby."""
    c = s.cluster(8 * 60)
    stop = 3 * 60
    for member in c.members:
        c.stop("patroni", member, stop)
    s.starts_firing("PatroniNoLeader", stop + s.for_("PatroniNoLeader"),
                    ({}, "No member of the cluster is the leader: writes fail"), until=s.end)
    s.starts_firing("PatroniMemberDown", stop + s.for_("PatroniMemberDown"), *(
        (target("patroni", m), f"{m}: Patroni or its PostgreSQL is not running") for m in c.members))
    wanted = s.cfg["patroni"]["synchronous_node_count"]
    s.starts_firing("PatroniNoSynchronousStandby", stop + s.for_("PatroniNoSynchronousStandby"),
                    ({}, f"Fewer than {wanted} synchronous standby(s): a commit is acknowledged "
                         "by the leader alone"))


@scenario()
def two_leaders(s: Scenario):
    """Two members say they lead past a switchover's moment: PatroniMoreThanOneLeader."""
    c = s.cluster(8 * 60)
    c.set("patroni_primary", c.patroni(c.members[1]), 1, 3 * 60)
    s.starts_firing("PatroniMoreThanOneLeader", 3 * 60 + s.for_("PatroniMoreThanOneLeader"),
                    ({}, "2 members say they are the leader"))


@scenario()
def replication_lag(s: Scenario):
    """One replica falls a byte over the limit behind, the other stays exactly at it."""
    c = s.cluster(8 * 60)
    limit = s.cfg["monitoring"]["alerts"]["replication_lag"]
    at_limit, over = c.members[1], c.members[2]
    c.set("patroni_xlog_replayed_location", c.patroni(at_limit), lambda t: c.wal(t) - limit)
    c.set("patroni_xlog_replayed_location", c.patroni(over), lambda t: c.wal(t) - limit - 1, 3 * 60)
    s.starts_firing("PostgreSQLReplicationLag", 3 * 60 + s.for_("PostgreSQLReplicationLag"),
                    (c.patroni(over), f"{over} has {humanize1024(limit + 1)}B of WAL left to replay "
                                      f"(more than {limit} bytes)"))


@scenario()
def synchronous_standbys_lost(s: Scenario):
    """Quorum commit: one quorum standby left is enough; none fires after the `for`."""
    c = s.cluster(8 * 60)
    wanted = s.cfg["patroni"]["synchronous_node_count"]
    first, second = c.members[1:]
    c.set("patroni_quorum_standby", c.patroni(first), 0, 60)
    c.set("patroni_quorum_standby", c.patroni(second), 0, 4 * 60)
    s.starts_firing("PatroniNoSynchronousStandby", 4 * 60 + s.for_("PatroniNoSynchronousStandby"),
                    ({}, f"Fewer than {wanted} synchronous standby(s): a commit is acknowledged "
                         "by the leader alone"))


@scenario("sync-strict")
def synchronous_standby_lost_under_strict_mode(s: Scenario):
    """synchronous_mode on (one named standby), strict: its loss fires, saying writes wait."""
    c = s.cluster(8 * 60)
    assert s.cfg["patroni"]["synchronous_node_count"] == 1
    c.set("patroni_sync_standby", c.patroni(c.members[1]), 0, 3 * 60)
    s.starts_firing("PatroniNoSynchronousStandby", 3 * 60 + s.for_("PatroniNoSynchronousStandby"),
                    ({}, "Fewer than 1 synchronous standby(s): writes wait"))


@scenario()
def one_etcd_member_down(s: Scenario):
    """One of three etcd members down: EtcdMemberDown, and the quorum holds."""
    c = s.cluster(8 * 60)
    member = c.members[2]
    c.stop("etcd", member, 3 * 60)
    s.starts_firing("EtcdMemberDown", 3 * 60 + s.for_("EtcdMemberDown"),
                    (target("etcd", member), f"{member}: its etcd member does not answer"))


@scenario()
def two_etcd_members_down(s: Scenario):
    """Two of three etcd members down: no quorum (after its shorter `for`), two members down."""
    c = s.cluster(8 * 60)
    down = c.members[1:]
    for member in down:
        c.stop("etcd", member, 3 * 60)
    count = len(c.members)
    quorum = count // 2 + 1
    s.starts_firing("EtcdNoQuorum", 3 * 60 + s.for_("EtcdNoQuorum"),
                    ({}, f"Fewer than {quorum} of the {count} etcd members answer: the cluster "
                         "cannot change its leader"))
    s.starts_firing("EtcdMemberDown", 3 * 60 + s.for_("EtcdMemberDown"), *(
        (target("etcd", m), f"{m}: its etcd member does not answer") for m in down))


@scenario()
def etcd_member_sees_no_leader(s: Scenario):
    """An etcd member that answers but sees no leader: EtcdNoLeader after its `for`."""
    c = s.cluster(8 * 60)
    member = c.members[1]
    c.set("etcd_server_has_leader", target("etcd", member), 0, 3 * 60)
    s.starts_firing("EtcdNoLeader", 3 * 60 + s.for_("EtcdNoLeader"),
                    (target("etcd", member), f"{member}: its etcd member sees no leader"))


@scenario()
def archiving_fails(s: Scenario):
    """The leader's archive_command fails once: PostgreSQLArchiveFailing after its `for`, until
    the failure is out of the window. A replica's old failures (a constant count) and another's
    counter reset (the exporter or PostgreSQL restarted) are no failure."""
    c = s.cluster(20 * 60)
    leader, old, reset = c.members
    failed = 3 * 60
    c.set("pg_stat_archiver_failed_count", target("postgres", leader), 1, failed)
    c.set("pg_stat_archiver_failed_count", target("postgres", old), 3)
    c.set("pg_stat_archiver_failed_count", target("postgres", reset), 3, 0, 5 * 60)
    s.starts_firing("PostgreSQLArchiveFailing", failed + s.for_("PostgreSQLArchiveFailing"),
                    (target("postgres", leader), f"{leader}: archiving WAL to the backup repositories "
                                                 "fails (pgbackrest's log on the member says why)"))
    s.quiet("PostgreSQLArchiveFailing", failed + 10 * 60)


@scenario()
def archive_stale_while_writing(s: Scenario):
    """The leader writes WAL and its last archive grows older than the limit: the alert fires
    `for` after the age passes the limit (not when it is at the limit)."""
    limit = s.cfg["monitoring"]["alerts"]["archive_age"]
    hold = s.for_("PostgreSQLArchiveStale")
    c = s.cluster(limit + hold + 5 * 60)
    leader = c.members[0]
    age = lambda t: t + 30  # noqa: E731 -- the last archive was 30 s before time 0
    c.set("pg_stat_archiver_last_archive_age", target("postgres", leader), age)
    over = next(t for t in c.times if age(t) > limit)
    s.starts_firing("PostgreSQLArchiveStale", over + hold,
                    (target("postgres", leader), f"{leader} last archived WAL "
                                                 f"{humanize_duration(age(over + hold))} ago while "
                                                 "it writes WAL"))


@scenario()
def archive_age_up_to_the_limit(s: Scenario):
    """A leader writing WAL whose archives come `archive_age` apart: never over the limit."""
    limit = s.cfg["monitoring"]["alerts"]["archive_age"]
    c = s.cluster(limit + 3 * 60)
    c.set("pg_stat_archiver_last_archive_age", target("postgres", c.members[0]),
          lambda t: t % (limit + s.step))


@scenario()
def idle_leader_then_unarchived_writes(s: Scenario):
    """The leader stops writing; it archives its last WAL (within archive_timeout) and then
    nothing, rightly: its last archive grows old, no alert. Later it writes WAL it does not
    archive: the alert fires after its `for`."""
    limit = s.cfg["monitoring"]["alerts"]["archive_age"]
    hold = s.for_("PostgreSQLArchiveStale")
    idle, archived = 2 * 60, 2 * 60 + s.cfg["pgbackrest"]["archive_timeout"]
    writes = archived + limit + 5 * 60
    c = s.cluster(writes + hold + 3 * 60)
    leader = c.members[0]
    c.set("patroni_xlog_location", c.patroni(leader), c.wal(idle), idle, writes)
    c.set("patroni_xlog_location", c.patroni(leader), lambda t: c.wal(t - writes + idle + s.step),
          writes)
    for replica in c.members[1:]:
        c.set("patroni_xlog_replayed_location", c.patroni(replica),
              lambda t: c.value("patroni_xlog_location", c.patroni(leader), t))
    age = lambda t: t - archived  # noqa: E731
    c.set("pg_stat_archiver_last_archive_age", target("postgres", leader), age, archived)
    s.starts_firing("PostgreSQLArchiveStale", writes + hold,
                    (target("postgres", leader), f"{leader} last archived WAL "
                                                 f"{humanize_duration(age(writes + hold))} ago while "
                                                 "it writes WAL"))


@scenario()
def idle_leader_restarts_postgres(s: Scenario):
    """An idle leader (its last archive old) restarts PostgreSQL (a scrape sees it stopped,
    with Patroni's WAL position 0): it writes no WAL, so no archive is stale."""
    limit = s.cfg["monitoring"]["alerts"]["archive_age"]
    c = s.cluster(limit + 10 * 60)
    leader = c.members[0]
    c.set("patroni_xlog_location", c.patroni(leader), WAL_START)
    for replica in c.members[1:]:
        c.set("patroni_xlog_replayed_location", c.patroni(replica), WAL_START)
    c.set("pg_stat_archiver_last_archive_age", target("postgres", leader), lambda t: 86400 + t)
    c.postgres_stops(leader, 5 * 60, 5 * 60 + s.step)
    s.check_only("PostgreSQLArchiveStale")


@scenario()
def certificate_expiring(s: Scenario):
    """A host certificate comes within `certificate_days` of its end: the alert fires at once
    (it has no `for`), the CA's far end does not."""
    c = s.cluster(20 * 60)
    limit = s.cfg["monitoring"]["alerts"]["certificate_days"] * 86400
    host, file = c.hosts[-1], f"{s.cfg['tls']['dir']}/host.crt"
    labels = {**target("node", host), "file": file}
    c.set("pgcluster_certificate_not_after_seconds", labels, limit + 10 * 60)
    # time() in promtool counts from 0: the end is at the limit at 10 minutes.
    s.starts_firing("CertificateExpiring", 10 * 60 + s.step,
                    (labels, f"{host}: {file} ends in {humanize_duration(limit - s.step)}"))
    s.fires("CertificateExpiring",
            (labels, f"{host}: {file} ends in {humanize_duration(limit - 5 * 60)}"), at=15 * 60)


@scenario()
def disk_nearly_full(s: Scenario):
    """PostgreSQL's disk half a per cent under the free-space limit fires after the `for`;
    another at the limit does not."""
    c = s.cluster(15 * 60)
    limit = s.cfg["monitoring"]["alerts"]["disk_free_percent"]
    full, at_limit = c.members[1], c.members[2]
    mountpoint = "/var/lib/postgresql"
    c.filesystem(at_limit, "/dev/vdb", mountpoint, "ext4", limit)
    c.filesystem(full, "/dev/vdb", mountpoint, "ext4", 60, 0, 3 * 60)
    labels = c.filesystem(full, "/dev/vdb", mountpoint, "ext4", limit - 0.5, 3 * 60)
    s.starts_firing("DiskNearlyFull", 3 * 60 + s.for_("DiskNearlyFull"),
                    (labels, f"{full}: {mountpoint} has {limit - 0.5:.1f}% free"))


@scenario()
def memory_nearly_full(s: Scenario):
    """A host's available memory half a per cent under the limit fires after the `for`;
    another's at the limit does not."""
    c = s.cluster(15 * 60)
    limit = s.cfg["monitoring"]["alerts"]["memory_free_percent"]
    full, at_limit = c.hosts[-1], c.hosts[0]
    c.memory(at_limit, limit)
    c.memory(full, limit - 0.5, 3 * 60)
    s.starts_firing("MemoryNearlyFull", 3 * 60 + s.for_("MemoryNearlyFull"),
                    (target("node", full), f"{full}: {limit - 0.5:.1f}% of memory available"))


@scenario()
def haproxy_without_leader(s: Scenario):
    """HAProxy's primary backend without a healthy server past a switchover's moment."""
    c = s.cluster(8 * 60)
    web, port = s.cfg["web_names"][0], s.cfg["haproxy"]["primary_port"]
    labels = {**target("haproxy", web), "proxy": "primary"}
    c.set("haproxy_backend_active_servers", labels, 0, 3 * 60)
    s.starts_firing("HAProxyNoLeaderBackend", 3 * 60 + s.for_("HAProxyNoLeaderBackend"),
                    (labels, f"{web}: HAProxy's port {port} has no healthy server: writes fail"))


@scenario()
def exporter_down(s: Scenario):
    """PostgreSQL's exporter stops: ExporterDown after its `for`; the member is not down."""
    c = s.cluster(8 * 60)
    member = c.members[1]
    c.stop("postgres", member, 3 * 60)
    s.starts_firing("ExporterDown", 3 * 60 + s.for_("ExporterDown"),
                    (target("postgres", member), f"{member}: the postgres exporter does not answer"))


@scenario()
def pgbouncer_down_under_its_answering_exporter(s: Scenario):
    """PgBouncer stops on a member; its exporter answers (up 1) that it does not reach it:
    PgBouncerDown after its `for`, and nothing about the exporter."""
    c = s.cluster(8 * 60)
    member = c.members[0]
    c.set("pgbouncer_up", target("pgbouncer", member), 0, 3 * 60)
    s.starts_firing("PgBouncerDown", 3 * 60 + s.for_("PgBouncerDown"),
                    (target("pgbouncer", member), f"{member}: PgBouncer does not answer its "
                     "exporter: the connections through it fail"))


@scenario()
def postgres_exporter_cannot_log_in(s: Scenario):
    """PostgreSQL runs but its exporter cannot log in (pg_up 0): an alert after its `for`; the
    same pg_up 0 while PostgreSQL is stopped is PatroniMemberDown's, not this one's."""
    c = s.cluster(10 * 60)
    member, stopped = c.members[1], c.members[2]
    c.set("pg_up", target("postgres", member), 0, 3 * 60)
    c.postgres_stops(stopped, 3 * 60)
    role = s.cfg["monitoring"]["postgres_role"]
    s.starts_firing("PostgreSQLExporterCannotConnect",
                    3 * 60 + s.for_("PostgreSQLExporterCannotConnect"),
                    (target("postgres", member), f"{member}: PostgreSQL runs but its exporter "
                     f"cannot log in (role {role}, peer): the archive alerts are blind"))
    s.check_only("PostgreSQLExporterCannotConnect")


@scenario()
def member_host_down(s: Scenario):
    """A member's host goes away: every target on it is down, each alert names it once; the
    leader, etcd's quorum and a synchronous standby are left."""
    c = s.cluster(8 * 60)
    member, stop = c.members[2], 3 * 60
    jobs = [job["job_name"] for job in render.prometheus_config(s.cfg)["scrape_configs"]
            if any(st["labels"]["instance"] == member for st in job["static_configs"])]
    for job in jobs:
        c.stop(job, member, stop)
    s.starts_firing("PatroniMemberDown", stop + s.for_("PatroniMemberDown"),
                    (target("patroni", member), f"{member}: Patroni or its PostgreSQL is not running"))
    s.starts_firing("EtcdMemberDown", stop + s.for_("EtcdMemberDown"),
                    (target("etcd", member), f"{member}: its etcd member does not answer"))
    s.starts_firing("ExporterDown", stop + s.for_("ExporterDown"), *(
        (target(job, member), f"{member}: the {job} exporter does not answer")
        for job in jobs if job not in ("patroni", "etcd")))


def scenario_group(model: str, name: str) -> dict:
    s = Scenario(name, MODELS[model]())
    SCENARIOS[name][1](s)
    return s.promtool_group()


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: `make apt` installs it (Debian's prometheus)",
                    pytrace=False)
    return path


def promtool_test(directory: Path, model: str, names: list[str]) -> subprocess.CompletedProcess:
    """`promtool test rules` on the scenarios `names`, the rules rendered for `model`."""
    cfg = MODELS[model]()
    directory.mkdir(parents=True, exist_ok=True)
    rules = directory / "pgcluster.yml"
    rules.write_text(yaml.safe_dump(render.alert_rules(cfg)))
    tests = directory / "tests.yml"  # JSON, which YAML reads: much faster to write
    tests.write_text(json.dumps({
        "rule_files": [str(rules)],
        "evaluation_interval": cfg["monitoring"]["scrape_interval"],
        "tests": [scenario_group(model, name) for name in names]}))
    return subprocess.run([promtool(), "test", "rules", str(tests)], capture_output=True,
                          text=True, timeout=300, check=False)


class PromtoolRuns:
    """The scenarios (but those of known rule bugs) a dozen to a promtool run, the runs side
    by side, started with the first check; a scenario again alone when its run fails, and
    always alone when it shows a known rule bug (expected to fail)."""

    PER_RUN = 12

    def __init__(self, directory: Path, pool: ThreadPoolExecutor):
        self.directory, self.pool = directory, pool
        self.runs: dict[tuple[str, str], Future] = {}

    def start(self):
        for model in MODELS:
            names = [n for n, (models, _, bug) in SCENARIOS.items() if model in models and bug is None]
            for first in range(0, len(names), self.PER_RUN):
                chunk = names[first:first + self.PER_RUN]
                run = self.pool.submit(promtool_test, self.directory / f"{model}-{first}", model, chunk)
                self.runs.update({(model, name): run for name in chunk})

    def check(self, model: str, name: str):
        if not self.runs:
            self.start()
        if (model, name) in self.runs and self.runs[(model, name)].result().returncode == 0:
            return
        alone = promtool_test(self.directory / model / name, model, [name])
        if alone.returncode != 0:
            pytest.fail(f"promtool test rules: scenario {name} ({model} model) fails:\n"
                        f"{promtool_output(alone)}", pytrace=False)


def promtool_output(result: subprocess.CompletedProcess, limit: int = 6000) -> str:
    """promtool's output without its blank lines, its first `limit` characters (it tells
    every failing evaluation)."""
    text = "\n".join(line for line in (result.stdout + result.stderr).splitlines() if line.strip())
    return text if len(text) <= limit else f"{text[:limit]}\n... ({len(text) - limit} more characters)"


@pytest.fixture(scope="module")
def promtool_runs(tmp_path_factory) -> Iterator[PromtoolRuns]:
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        yield PromtoolRuns(tmp_path_factory.mktemp("alert-rules"), pool)


@pytest.mark.parametrize(("model", "name"), [
    pytest.param(model, name, id=f"{model}-{name}",
                 marks=[pytest.mark.xfail(strict=True, reason=f"rule bug: {bug}")] if bug else [])
    for name, (models, _, bug) in SCENARIOS.items() for model in models])
def test_alert_scenario(model: str, name: str, promtool_runs: PromtoolRuns):
    promtool_runs.check(model, name)


@pytest.mark.parametrize("model", MODELS)
def test_promtool_check_rules_accepts_them(model: str, tmp_path: Path):
    rules = tmp_path / "pgcluster.yml"
    rules.write_text(yaml.safe_dump(render.alert_rules(MODELS[model]())))
    result = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, f"promtool check rules:\n{promtool_output(result)}"


def test_conditional_alerts_follow_the_pillar():
    def names(cfg: dict) -> set[str]:
        return {r["alert"] for r in render.alert_rules(cfg)["groups"][0]["rules"]}

    every = names(MODELS["default"]())
    assert CONDITIONAL <= every
    assert CONDITIONAL <= names(MODELS["sync-strict"]())
    assert names(build(pillar_with("patroni", synchronous_mode=False))) == every - {
        "PatroniNoSynchronousStandby"}
    assert names(build(pillar_with("pgbackrest", enabled=False))) == every - {
        "PostgreSQLArchiveFailing", "PostgreSQLArchiveStale"}
    assert names(MODELS["async-no-backups"]()) == every - CONDITIONAL


def test_every_alert_fires_in_some_scenario():
    """A new alert needs a scenario: every alert of the default model fires in one."""
    fired = {check["alertname"] for name, (models, _, _) in SCENARIOS.items() if "default" in models
             for check in scenario_group("default", name)["alert_rule_test"] if check["exp_alerts"]}
    rules = {r["alert"] for r in render.alert_rules(MODELS["default"]())["groups"][0]["rules"]}
    assert fired == rules
