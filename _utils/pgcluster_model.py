"""
The cluster model: every component's defaults with the ``pgcluster`` pillar over them, checked
key by key, and the values several components derive from it.

Pure: no Salt, no network, no files. The execution module ``pgcluster`` feeds it the defaults
(``salt/<component>/defaults.yaml``, which the ext_pillar ``pgcluster_defaults`` brings) and the
pillar; the unit tests feed it the same files from the repo. Every key has a type; a bad value
or an unknown key raises ``PillarError`` naming the key path, the value and what is allowed.
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import re
from collections.abc import Iterator
from typing import Any

ROOT = "pgcluster"


class PillarError(ValueError):
    """A pillar value the cluster cannot run with; the message names the key."""

    def __init__(self, path: tuple, message: str):
        self.path = path
        super().__init__(f"pillar {where(path)}: {message}")


def where(path: tuple) -> str:
    return ":".join((ROOT, *map(str, path)))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- Types: each checks a value at a path and says what it allows ---------------------------

class Type:
    allowed = ""

    def check(self, value: Any, path: tuple) -> Any:
        raise NotImplementedError

    def fail(self, value: Any, path: tuple, why: str = "") -> PillarError:
        return PillarError(path, f"{_show(value)} is not allowed: {why or self.allowed}")


class Bool(Type):
    allowed = "true or false (a YAML boolean, not a string)"

    def check(self, value, path):
        if not isinstance(value, bool):
            raise self.fail(value, path)
        return value


class BoolOr(Type):
    """true, false, or one of a few words (Patroni's synchronous_mode: quorum)."""

    def __init__(self, *words: str):
        self.words = words
        self.allowed = "true or false (YAML booleans) or " + " or ".join(map(repr, words))

    def check(self, value, path):
        if isinstance(value, bool) or value in self.words:
            return value
        raise self.fail(value, path)


class Int(Type):
    def __init__(self, minimum: int | None = None, maximum: int | None = None, unit: str = ""):
        self.minimum, self.maximum, self.unit = minimum, maximum, unit
        bounds = " ".join(filter(None, (
            f"from {minimum}" if minimum is not None else "",
            f"to {maximum}" if maximum is not None else "")))
        self.allowed = " ".join(filter(None, ("a whole number", self.unit, bounds)))

    def check(self, value, path):
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(value, path)
        if (self.minimum is not None and value < self.minimum) or \
                (self.maximum is not None and value > self.maximum):
            raise self.fail(value, path)
        return value


def Port() -> Int:
    return Int(1, 65535, "(a TCP port)")


class Str(Type):
    def __init__(self, pattern: str = r".+", allowed: str = "a non-empty string"):
        self.pattern = re.compile(pattern)
        self.allowed = allowed

    def check(self, value, path):
        if not isinstance(value, str) or not self.pattern.fullmatch(value):
            raise self.fail(value, path)
        return value


def Path() -> Str:
    return Str(r"/[\w./@+-]*", "an absolute path")


def MasterFile() -> Str:
    return Str(r"[\w./@+-]+", "a file on the salt-master (absolute, or relative to the pillar's "
               "directory)")


def Name() -> Str:
    return Str(r"[a-z_][a-z0-9_]{0,62}", "a lower-case SQL name (letters, digits, _)")


def Duration() -> Str:
    # HAProxy's time format.
    return Str(r"[0-9]+(us|ms|s|m|h|d)?", "a duration such as 500ms, 3s, 30m")


def PromDuration() -> Str:
    # Prometheus's duration format: its units largest first, each once.
    return Str(r"(?=[0-9])([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?",
               "a duration such as 10s, 15d, 1h30m (units largest first)")


def prom_seconds(duration: str) -> float:
    """A Prometheus duration (checked by PromDuration) in seconds."""
    units = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|y|w|d|h|m|s)", duration))


class Url(Str):
    def __init__(self):
        super().__init__(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[\w./?=&%~+-]*)?",
                         "an http:// or https:// URL such as http://alerts.example.net:9000/hook")

    def check(self, value, path):
        value = super().check(value, path)
        port = re.match(r"https?://[^:/]+:([0-9]+)", value)
        if port and not 1 <= int(port.group(1)) <= 65535:
            raise self.fail(value, path, f"port {port.group(1)} is not a TCP port")
        return value


def Email() -> Str:
    return Str(r"[\w.+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+", "an e-mail address")


class Enum(Type):
    def __init__(self, *values):
        self.values = values
        self.allowed = "one of " + ", ".join(map(repr, values))

    def check(self, value, path):
        if isinstance(value, bool) or value not in self.values:
            raise self.fail(value, path)
        return value


class IPv4(Type):
    allowed = "an IPv4 address"

    def check(self, value, path):
        try:
            return str(ipaddress.IPv4Address(value if isinstance(value, str) else "x"))
        except ValueError:
            raise self.fail(value, path) from None


class Network(Type):
    allowed = "an IPv4 network such as 192.168.10.0/24 (host bits zero) or an address"

    def check(self, value, path):
        try:
            return str(ipaddress.IPv4Network(value if isinstance(value, str) else "x"))
        except ValueError:
            raise self.fail(value, path) from None


class HostPort(Type):
    allowed = "ADDRESS:PORT, e.g. 127.0.0.1:8000"

    def check(self, value, path):
        host, _, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
        try:
            ipaddress.IPv4Address(host)
            if not 1 <= int(port) <= 65535:
                raise ValueError
        except ValueError:
            raise self.fail(value, path) from None
        return value


class Moment(Type):
    """A moment with its time zone, ISO 8601 (YAML may give it parsed): as an ISO string."""
    allowed = "a moment with its time zone, ISO 8601, such as 2026-12-03T16:00:00Z"

    def check(self, value, path):
        try:
            moment = value if isinstance(value, datetime.datetime) else \
                datetime.datetime.fromisoformat(value if isinstance(value, str) else "x")
        except ValueError:
            raise self.fail(value, path) from None
        if moment.tzinfo is None:
            raise self.fail(value, path)
        return moment.astimezone(datetime.UTC).isoformat()


class Scalar(Type):
    allowed = "a string, number or boolean"

    def check(self, value, path):
        if not isinstance(value, str | int | float | bool):
            raise self.fail(value, path)
        return value


class Optional(Type):
    """null (the feature is off) or a value of the inner type."""

    def __init__(self, inner: Type, off: str = "none"):
        self.inner = inner
        self.allowed = f"{inner.allowed}, or null ({off})"

    def check(self, value, path):
        if value is None:
            return None
        try:
            return self.inner.check(value, path)
        except PillarError:
            if isinstance(value, dict | list):
                raise  # the inner key's own error says more than "not allowed" for the whole
            raise self.fail(value, path) from None


class List(Type):
    def __init__(self, item: Type, minimum: int = 0):
        self.item, self.minimum = item, minimum
        self.allowed = f"a list of {item.allowed}" + (" (at least one)" if minimum else "")

    def check(self, value, path):
        if not isinstance(value, list) or len(value) < self.minimum:
            raise self.fail(value, path)
        return [self.item.check(item, (*path, index)) for index, item in enumerate(value)]


class Map(Type):
    """Free keys (member names, parameter names) with typed values; the pillar's keys are added
    to the defaults' (a pillar value replaces the default of the same key)."""

    def __init__(self, key: Str, value: Type, minimum: int = 0, what: str = "entries"):
        self.key, self.value, self.minimum = key, value, minimum
        self.allowed = f"a mapping of {key.allowed} to {value.allowed}"
        self.what = what

    def check(self, value, path):
        if not isinstance(value, dict):
            raise self.fail(value, path)
        if len(value) < self.minimum:
            raise PillarError(path, f"list at least {self.minimum} {self.what}")
        for key in value:
            if not isinstance(key, str) or not self.key.pattern.fullmatch(key):
                raise PillarError((*path, key), f"{_show(key)} is not a valid key: {self.key.allowed}")
        return {key: self.value.check(item, (*path, key)) for key, item in value.items()}

    def merge(self, base, override, path):
        if not isinstance(override, dict):
            raise self.fail(override, path)
        return {**copy.deepcopy(base or {}), **override}


class Record(Type):
    """Known keys only (anything else is a typo), each with its own type."""

    def __init__(self, fields: dict[str, Type], required: tuple = ()):
        self.fields, self.required = fields, required
        self.allowed = "a mapping with the keys " + ", ".join(fields)

    def check(self, value, path):
        if not isinstance(value, dict):
            raise self.fail(value, path)
        for key in value:
            if key not in self.fields:
                raise _unknown(path, key, self.fields)
        for key in self.required:
            if key not in value:
                raise PillarError((*path, key), "missing: it is required")
        return {key: self.fields[key].check(item, (*path, key)) for key, item in value.items()}

    def merge(self, base, override, path):
        if not isinstance(override, dict):
            raise self.fail(override, path)
        merged = copy.deepcopy(base or {})
        for key, value in override.items():
            if key not in self.fields:
                raise _unknown(path, key, self.fields)
            kind = self.fields[key]
            if isinstance(kind, Record | Map) and key in merged:
                merged[key] = kind.merge(merged[key], value, (*path, key))
            else:
                merged[key] = value
        return merged


def _unknown(path, key, fields) -> PillarError:
    close = [k for k in fields if _similar(str(key), k)]
    hint = f" (did you mean {close[0]}?)" if close else ""
    return PillarError((*path, key), f"unknown key{hint}; known here: {', '.join(fields)}")


def _similar(a: str, b: str) -> bool:
    """One edit or one swap apart: the usual typo."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and a[diff[0]] == b[diff[1]]
                                  and a[diff[1]] == b[diff[0]] and diff[1] == diff[0] + 1)
    short, long_ = sorted((a, b), key=len)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


# --- The schema: every key of pgcluster ------------------------------------------------------

MINION_ID = Str(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", "a minion id (letters, digits, . _ -)")
HOST = Record({"address": IPv4()}, required=("address",))
PACKAGES = List(Str(r"[a-z0-9][a-z0-9.+-]+", "a Debian package name"), minimum=1)
HOSTNAME = Str(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
               r"[A-Za-z0-9])?)*", "a DNS name such as storage.yandexcloud.net")
# systemd's OnCalendar (checked again by systemd-analyze when the timer is written).
CALENDAR = Optional(Str(r"[A-Za-z0-9*.,:/~ -]+", "a systemd calendar event such as "
                        "'Sun *-*-* 01:00:00' or hourly"), "never")
S3 = Record({
    "endpoint": HOSTNAME,
    "region": Str(r"[a-z0-9-]+", "a region such as ru-central1"),
    # pgBackRest 2.45 cannot use host-style addressing with a dot in the bucket's name.
    "bucket": Str(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", "a bucket name (lower-case letters, "
                  "digits, -; no dots: pgBackRest 2.45 addresses the bucket as a host name)"),
    "uri_style": Enum("host", "path"),
    "port": Port(),
    # Files on the salt-master, out of git (a relative path is read from the pillar's
    # directory): the static access key (YAML with access_key_id and secret_access_key) and,
    # for a store with its own CA, the CA's certificate.
    "credentials_file": MasterFile(),
    "ca_file": Optional(MasterFile(), "the system's trusted CAs"),
    # The endpoint's address, for a store the hosts cannot resolve by name (written to
    # /etc/hosts: pgBackRest verifies the certificate by name, never by address).
    "address": Optional(IPv4(), "resolved by DNS"),
}, required=("endpoint", "region", "bucket", "credentials_file"))
REPOSITORY = Record({
    "type": Enum("posix", "s3"),
    # posix: a directory on the repository host; s3: a prefix in the bucket.
    "path": Path(),
    "retention_full": Int(1, 9999, "(full backups kept)"),
    "retention_diff": Optional(Int(1, 9999, "(differential backups kept)"), "as many as fit "
                               "the full backups kept"),
    "encrypt": Bool(),
    "s3": S3,
}, required=("type", "path"))
PATRONI_TAGS = Record({"nofailover": Bool(), "noloadbalance": Bool(), "clonefrom": Bool(),
                       "nosync": Bool(), "failover_priority": Int(0, 1000000)})

MONITORING_SERVICES = ("prometheus", "alertmanager", "node_exporter", "postgres_exporter",
                       "pgbouncer_exporter")
MONITORING_PORTS = (*MONITORING_SERVICES, "haproxy")

SCHEMA = Record({
    "name": Str(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", "a cluster name (letters, digits, . _ -)"),
    "members": Map(MINION_ID, HOST, minimum=1, what="members"),
    "web": Map(MINION_ID, HOST, minimum=1, what="web hosts"),
    "app": Record({"database": Name(), "user": Name()}),
    "firewall": Record({
        "enabled": Bool(),
        "admin_sources": List(Network()),
        "packages": PACKAGES,
        "service": Str(),
        "config_file": Path(),
    }),
    "etcd": Record({
        "client_port": Port(),
        "peer_port": Port(),
        "tls": Bool(),
        "auth": Bool(),
        "keep_leader_off_primary": Bool(),
        "packages": PACKAGES,
        "service": Str(),
        "env_file": Path(),
        "bootstrap_file": Path(),
        "data_root": Path(),
        "user": Str(),
        "group": Str(),
        "tls_dir": Path(),
        "etcdctl": Path(),
        "etcdctl_env": Path(),
        "start_timeout": Int(1, 3600, "(seconds)"),
        "leader_off_primary_script": Path(),
        "leader_off_primary_service": Str(),
        "leader_off_primary_interval": Int(1, 3600, "(seconds)"),
    }),
    "postgresql": Record({
        "version": Enum(15),
        "port": Port(),
        "tls": Bool(),
        "parameters": Map(Str(r"[a-z_][a-z0-9_.]*", "a PostgreSQL parameter name"), Scalar()),
        "packages": PACKAGES,
        "createcluster_conf": Path(),
        "debian_service": Str(),
        # A disk of its own for everything under home (the data directory, WAL, logs).
        "data_disk": Record({
            "device": Optional(Str(r"/dev/[A-Za-z0-9._/:-]+", "a device path such as "
                                   "/dev/disk/by-id/virtio-pgdata"), "no disk of its own"),
            "fstype": Enum("ext4"),
            "mount_options": Str(r"[A-Za-z0-9_=.,-]+", "mount options such as defaults,noatime"),
        }),
        # Debian's postgres user has this home; it is stated, not chosen.
        "home": Enum("/var/lib/postgresql"),
        "tls_dir": Path(),
    }),
    "patroni": Record({
        "version": Str(r"4\.[0-9]+\.[0-9]+", "a Patroni 4.x version such as 4.1.5"),
        "psycopg2_version": Str(r"2\.[0-9]+\.[0-9]+", "a psycopg2 version such as 2.9.13"),
        "ttl": Int(20, 3600, "(seconds; Patroni refuses a ttl below 20)"),
        "loop_wait": Int(1, 3600, "(seconds)"),
        "retry_timeout": Int(1, 3600, "(seconds)"),
        "maximum_lag_on_failover": Int(0, 2**63 - 1, "(bytes)"),
        "synchronous_mode": BoolOr("quorum"),
        "synchronous_node_count": Int(1, 31, "(standbys)"),
        "synchronous_mode_strict": Bool(),
        "failsafe_mode": Bool(),
        "use_pg_rewind": Bool(),
        "restapi_port": Port(),
        "request_queue_size": Int(5, 4096, "(connections)"),
        "tls": Bool(),
        "tags": Map(MINION_ID, PATRONI_TAGS),
        "packages": PACKAGES,
        "venv": Path(),
        "config_dir": Path(),
        "config_file": Path(),
        "service": Str(),
        "user": Str(),
        "group": Str(),
        "healthy_wait": Int(1, 3600, "(seconds)"),
    }),
    "pgbouncer": Record({
        "enabled": Bool(),
        "port": Port(),
        "tls": Bool(),
        "pool_mode": Enum("session", "transaction", "statement"),
        "default_pool_size": Int(1, 10000),
        "max_client_conn": Int(1, 100000),
        "server_login_retry": Int(1, 3600, "(seconds)"),
        "package": Str(),
        "service": Str(),
        "config_file": Path(),
        "userlist_file": Path(),
        "tls_dir": Path(),
        "user": Str(),
        "group": Str(),
    }),
    "haproxy": Record({
        "primary_port": Port(),
        "replica_port": Port(),
        "stats_port": Port(),
        "replica_max_lag": Int(0, 2**63 - 1, "(bytes)"),
        "check": Record({"inter": Duration(), "fastinter": Duration(), "downinter": Duration(),
                         "fall": Int(1, 100), "rise": Int(1, 100)}),
        "timeout_client": Duration(),
        "timeout_server": Duration(),
        "maxconn": Int(1, 1000000),
        "packages": PACKAGES,
        "service": Str(),
        "config_file": Path(),
    }),
    "pgbackrest": Record({
        "enabled": Bool(),
        "host": Optional(MINION_ID, "the first web host"),
        "stanza": Optional(Str(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", "a stanza name (letters, "
                               "digits, . _ -)"), "the cluster's name"),
        "archive_timeout": Int(1, 3600, "(seconds)"),
        "tls_port": Port(),
        "process_max": Int(1, 64),
        "compress_type": Enum("zst", "lz4", "gz", "bz2", "none"),
        "schedule": Record({"full": CALENDAR, "diff": CALENDAR, "incr": CALENDAR}),
        "repositories": List(REPOSITORY, minimum=1),
        "packages": PACKAGES,
        "config_file": Path(),
        "tls_dir": Path(),
        "log_path": Path(),
        "spool_path": Path(),
        "service": Str(),
        "user": Str(),
        "group": Str(),
    }),
    "tls": Record({
        "dir": Path(),
        "days": Int(2, 3650, "(days a host certificate is valid)"),
        "renew_days": Int(1, 3649, "(days before its end that a host certificate is renewed)"),
        "issued_after": Optional(Moment(), "certificates are renewed near their end only"),
        # A CA the user already has (files or a command on the salt-master); null: the master
        # makes and keeps the cluster's own.
        "ca": Optional(Record({
            "certificate": MasterFile(),
            "key": MasterFile(),
            "sign_command": List(Str(), minimum=1),
        }, required=("certificate",)), "the salt-master makes the cluster's own CA"),
    }),
    "monitoring": Record({
        "enabled": Bool(),
        "host": Optional(MINION_ID, "the first web host"),
        "scrape_interval": PromDuration(),
        "retention": PromDuration(),
        "alerts": Record({
            "replication_lag": Int(0, 2**63 - 1, "(bytes)"),
            "archive_age": Int(60, 86400 * 7, "(seconds)"),
            "certificate_days": Int(1, 3650, "(days)"),
            "disk_free_percent": Int(1, 99, "(per cent)"),
            "memory_free_percent": Int(1, 99, "(per cent)"),
        }),
        "receivers": Record({
            "webhook": Optional(Url(), "no webhook"),
            "email": Optional(Record({
                "to": Email(),
                "from": Email(),
                "smarthost": Str(r"[A-Za-z0-9.-]+:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}"
                                 r"|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])",
                                 "HOST:PORT of an SMTP relay, such as smtp.example.net:587"),
                "require_tls": Bool(),
                "auth_username": Str(),
                "auth_password_file": MasterFile(),
            }, required=("to", "from", "smarthost")), "no e-mail"),
        }),
        "ports": Record({name: Port() for name in MONITORING_PORTS}),
        "packages": Record({name: PACKAGES for name in MONITORING_SERVICES}),
        "services": Record({name: Str() for name in MONITORING_SERVICES}),
        "config_dir": Path(),
        "postgres_exporter_queries": Path(),
        "textfile_dir": Path(),
        # Debian's postgres_exporter runs as the OS user prometheus, and logs in as its own
        # OS user (peer): the role has its name.
        "postgres_role": Enum("prometheus"),
        "pgbouncer_user": Name(),
    }),
    "webapp": Record({
        "port": Port(),
        "bind": HostPort(),
        "data_path": Enum("haproxy", "libpq"),
        "workers": Int(1, 64),
        "packages": PACKAGES,
        "app_dir": Path(),
        "config_file": Path(),
        "service": Str(),
        "user": Str(),
        "group": Str(),
        "nginx_site": Path(),
    }),
})


def leaves(kind: Type = SCHEMA, path: tuple = ()) -> Iterator[tuple[tuple, Type]]:
    """Every key with a fixed place in the tree and its type (free maps count as one key)."""
    if isinstance(kind, Record):
        for key, field in kind.fields.items():
            yield from leaves(field, (*path, key))
    else:
        yield path, kind


# --- Build: defaults, pillar, checks, derived values -----------------------------------------

def merge_defaults(parts: dict[str, dict]) -> dict:
    """One tree out of the components' defaults.yaml files ({component: parsed file})."""
    tree: dict = {}
    for component, part in parts.items():
        if not isinstance(part, dict):
            raise ValueError(f"salt/{component}/defaults.yaml: expected a mapping at the top")
        for key, value in part.items():
            if key in tree:
                raise ValueError(f"salt/{component}/defaults.yaml: {key} is defined twice")
            tree[key] = value
    return tree


def build(pillar: Any, defaults: dict) -> dict:
    """The cluster: the pillar over the defaults, checked, with derived values added."""
    if pillar is None:
        pillar = {}
    if not isinstance(pillar, dict):
        raise PillarError((), f"{_show(pillar)} is not allowed: a mapping")
    cfg = SCHEMA.check(SCHEMA.merge(defaults, pillar, ()), ())
    for key in SCHEMA.fields:
        if key not in cfg:
            raise PillarError((key,), "missing: it is required")
    _check_cluster(cfg)
    return derive(cfg)


def _check_cluster(cfg: dict) -> None:
    """What no single key can tell: distinct addresses and ports, quorum, Patroni's timing."""
    members, web = cfg["members"], cfg["web"]
    seen: dict[str, tuple] = {}
    for section in ("members", "web"):
        for name, host in cfg[section].items():
            path = (section, name, "address")
            if host["address"] in seen:
                raise PillarError(path, f"{host['address']} is already the address of "
                                  f"{where(seen[host['address']][:2])}")
            seen[host["address"]] = path
    for name in sorted(set(members) & set(web)):
        raise PillarError(("web", name), "is also a database member: a host is one or the other")
    if len(members) < 3:
        raise PillarError(("members",), f"{len(members)} members: etcd runs on each and needs at "
                          "least 3 to keep a quorum through a failure")
    patroni = cfg["patroni"]
    budget = patroni["loop_wait"] + 2 * patroni["retry_timeout"]
    if budget > patroni["ttl"]:
        raise PillarError(("patroni", "ttl"), f"{patroni['ttl']} is less than loop_wait "
                          f"({patroni['loop_wait']}) + 2 * retry_timeout ({patroni['retry_timeout']}) "
                          f"= {budget}: Patroni needs loop_wait + 2 * retry_timeout <= ttl")
    replicas = len(members) - 1
    if patroni["synchronous_mode"] and patroni["synchronous_node_count"] > replicas:
        raise PillarError(("patroni", "synchronous_node_count"),
                          f"{patroni['synchronous_node_count']} standbys, but {len(members)} "
                          f"members have only {replicas} replicas")
    for name in patroni["tags"]:
        if name not in members:
            raise PillarError(("patroni", "tags", name),
                              f"unknown member; members: {', '.join(sorted(members))}")
    _check_monitoring(cfg)
    _check_ports(cfg)
    _check_backup(cfg)
    tls = cfg["tls"]
    if tls["renew_days"] >= tls["days"]:
        raise PillarError(("tls", "renew_days"), f"{tls['renew_days']} is not less than days "
                          f"({tls['days']}): every state.apply would renew the certificates")
    if tls["ca"] is not None and ("key" in tls["ca"]) == ("sign_command" in tls["ca"]):
        raise PillarError(("tls", "ca"), "give the CA's key or a sign_command, one of the two: "
                          "the salt-master signs with the key, or has the command sign")


# PostgreSQL parameters the backups own while they are on.
ARCHIVE_PARAMETERS = ("archive_mode", "archive_command", "archive_timeout", "restore_command")


def _check_backup(cfg: dict) -> None:
    backup = cfg["pgbackrest"]
    if not backup["enabled"]:
        return
    host = backup["host"]
    if host is not None and host not in cfg["web"]:
        raise PillarError(("pgbackrest", "host"), f"{host!r} is not a web host; web hosts: "
                          f"{', '.join(sorted(cfg['web']))}")
    repositories = backup["repositories"]
    if len(repositories) > 4:
        raise PillarError(("pgbackrest", "repositories"),
                          f"{len(repositories)} repositories: pgBackRest takes at most 4")
    for index, repo in enumerate(repositories):
        path = ("pgbackrest", "repositories", index)
        if repo["type"] == "s3" and "s3" not in repo:
            raise PillarError((*path, "s3"), "missing: a repository of type s3 needs its "
                              "endpoint, region, bucket and credentials_file")
        if repo["type"] == "posix" and "s3" in repo:
            raise PillarError((*path, "s3"), "is only for a repository of type s3")
    for name in ARCHIVE_PARAMETERS:
        if name in cfg["postgresql"]["parameters"]:
            raise PillarError(("postgresql", "parameters", name),
                              "is set by the backups (pgcluster:pgbackrest) while they are on")


def _check_ports(cfg: dict) -> None:
    """No two services of a host on one port: a member's, a web host's, and the Prometheus
    host's own (on a member or a web host)."""
    members, monitoring = cfg["members"], cfg["monitoring"]
    backup = [("pgbackrest", "tls_port")] if cfg["pgbackrest"]["enabled"] else []
    exporters = [("monitoring", "ports", "node_exporter")] if monitoring["enabled"] else []
    server = [("monitoring", "ports", "prometheus"), ("monitoring", "ports", "alertmanager")] \
        if monitoring["enabled"] else []
    member_ports = [
        ("postgresql", "port"), ("patroni", "restapi_port"), ("etcd", "client_port"),
        ("etcd", "peer_port"), *([("pgbouncer", "port")] if cfg["pgbouncer"]["enabled"] else []),
        *backup, *exporters]
    if monitoring["enabled"]:
        member_ports.append(("monitoring", "ports", "postgres_exporter"))
        if cfg["pgbouncer"]["enabled"]:
            member_ports.append(("monitoring", "ports", "pgbouncer_exporter"))
    web_ports = [
        ("haproxy", "primary_port"), ("haproxy", "replica_port"), ("haproxy", "stats_port"),
        ("webapp", "port"), ("webapp", "bind"), *backup, *exporters,
        *([("monitoring", "ports", "haproxy")] if monitoring["enabled"] else [])]
    on_member = monitoring["host"] in members  # null: the first web host
    _distinct_ports(cfg, "a database member", member_ports + (server if on_member else []))
    _distinct_ports(cfg, "a web host", web_ports + ([] if on_member else server))


def _check_monitoring(cfg: dict) -> None:
    monitoring = cfg["monitoring"]
    host = monitoring["host"]
    if host is not None and host not in cfg["members"] and host not in cfg["web"]:
        raise PillarError(("monitoring", "host"), f"{host!r} is neither a member nor a web host; "
                          f"members: {', '.join(sorted(cfg['members']))}; web hosts: "
                          f"{', '.join(sorted(cfg['web']))}")
    # Prometheus looks back 5 minutes for a series' last sample: scraped more rarely, every
    # series would drop out between scrapes (and "no leader" fire).
    interval = prom_seconds(monitoring["scrape_interval"])
    if not 1 <= interval <= 60:
        raise PillarError(("monitoring", "scrape_interval"), f"{monitoring['scrape_interval']!r} "
                          "is not allowed: from 1s to 1m")
    backup = cfg["pgbackrest"]
    if backup["enabled"] and monitoring["alerts"]["archive_age"] < 2 * backup["archive_timeout"]:
        raise PillarError(("monitoring", "alerts", "archive_age"),
                          f"{monitoring['alerts']['archive_age']} is less than twice "
                          f"pgcluster:pgbackrest:archive_timeout ({backup['archive_timeout']}): a "
                          "leader that writes little archives once per archive_timeout, and the "
                          "alert would fire between")
    email = monitoring["receivers"]["email"]
    if email and email.get("auth_password_file") and not email.get("auth_username"):
        raise PillarError(("monitoring", "receivers", "email", "auth_username"),
                          "missing: a password (auth_password_file) needs its user name, or "
                          "Alertmanager sends the mail without logging in")


def _distinct_ports(cfg: dict, host: str, keys: list[tuple]) -> None:
    seen: dict[int, tuple] = {}
    for key in keys:
        value = cfg
        for part in key:
            value = value[part]
        port = int(str(value).rpartition(":")[2])
        if port in seen:
            raise PillarError(key, f"port {port} is already {where(seen[port])} on {host}")
        seen[port] = key


def derive(cfg: dict) -> dict:
    """Values several components need, computed once (not pillar keys: never set them)."""
    members = cfg["members"]
    names = sorted(members)
    etcd = cfg["etcd"]
    cfg["member_names"] = names
    cfg["web_names"] = sorted(cfg["web"])
    cfg["bootstrap_member"] = names[0]
    # What the cluster runs with but should not: bin/deploy shows them.
    cfg["warnings"] = [
        f"pgcluster:members: {len(names)} members, an even number: etcd's quorum is "
        f"{len(names) // 2 + 1}, so it survives {(len(names) - 1) // 2} down, as "
        f"{len(names) - 1} members do; {len(names) + 1} would survive {len(names) // 2}"
    ] if len(names) % 2 == 0 else []
    etcd_scheme = "https" if etcd["tls"] else "http"
    # This cluster's etcd data on a member (its "member" folder exists once etcd has run).
    etcd["data_dir"] = f"{etcd['data_root']}/{cfg['name']}"
    etcd["initial_cluster"] = ",".join(
        f"{n}={etcd_scheme}://{members[n]['address']}:{etcd['peer_port']}" for n in names)
    # Patroni's form (etcd3 hosts, with protocol) and every other client's (a URL per member).
    etcd["endpoints"] = [f"{members[n]['address']}:{etcd['client_port']}" for n in names]
    etcd["urls"] = {n: f"{etcd_scheme}://{members[n]['address']}:{etcd['client_port']}"
                    for n in names}
    # Where Patroni keeps the cluster's keys (its namespace, then the cluster's name): etcd's
    # roles for Patroni and the reader reach this prefix only.
    etcd["namespace"] = "/service/"
    etcd["prefix"] = f"{etcd['namespace']}{cfg['name']}/"
    # Patroni's REST API of each member, as Patroni itself advertises it (api_url in etcd).
    patroni = cfg["patroni"]
    scheme = "https" if patroni["tls"] else "http"
    patroni["urls"] = {n: f"{scheme}://{members[n]['address']}:{patroni['restapi_port']}"
                       for n in names}
    # The cluster CA's certificate on every host (salt/tls), which verifies the others.
    cfg["tls"]["ca_file"] = f"{cfg['tls']['dir']}/ca.crt"
    cfg["backend_port"] = (
        cfg["pgbouncer"]["port"] if cfg["pgbouncer"]["enabled"] else cfg["postgresql"]["port"])
    # Whether what HAProxy's ports lead to (PgBouncer, or PostgreSQL without it) speaks TLS.
    cfg["backend_tls"] = (
        cfg["pgbouncer"]["tls"] if cfg["pgbouncer"]["enabled"] else cfg["postgresql"]["tls"])
    pg = cfg["postgresql"]
    pg["mount_unit"] = mount_unit_name(pg["home"])
    pg["data_dir"] = f"{pg['home']}/{pg['version']}/main"
    # postgres's copies of the certificates (postgresql.tls_dir) serve PostgreSQL and Patroni's
    # REST API.
    pg["tls_copies"] = pg["tls"] or cfg["patroni"]["tls"]
    monitoring = cfg["monitoring"]
    monitoring["host"] = monitoring["host"] or cfg["web_names"][0]
    monitoring["address"] = {**members, **cfg["web"]}[monitoring["host"]]["address"]
    # Prometheus's HTTP API (the web app's charts, the monitoring module, its own reload).
    monitoring["url"] = f"http://{monitoring['address']}:{monitoring['ports']['prometheus']}"
    # Alertmanager runs only when it has somewhere to deliver the alerts.
    monitoring["alertmanager"] = any(v is not None for v in monitoring["receivers"].values())
    if monitoring["receivers"]["email"] is not None:
        monitoring["receivers"]["email"] = {**EMAIL_DEFAULTS, **monitoring["receivers"]["email"]}
    backup = cfg["pgbackrest"]
    backup["host"] = backup["host"] or cfg["web_names"][0]
    backup["stanza"] = backup["stanza"] or cfg["name"]
    backup["repositories"] = [{**REPOSITORY_DEFAULTS, **repo} for repo in backup["repositories"]]
    for repo in backup["repositories"]:
        if repo["type"] == "s3":
            repo["s3"] = {**S3_DEFAULTS, **repo["s3"]}
    return cfg


EMAIL_DEFAULTS = {"require_tls": True, "auth_username": None, "auth_password_file": None}
REPOSITORY_DEFAULTS = {"retention_full": 2, "retention_diff": None, "encrypt": True}
S3_DEFAULTS = {"uri_style": "host", "port": 443, "ca_file": None, "address": None}


def mount_unit_name(path: str) -> str:
    """systemd's name for the mount unit of a path (`systemd-escape --path --suffix=mount`)."""
    def escape(part: str, first: bool) -> str:
        return "".join(
            c if c.isascii() and (c.isalnum() or c in ":_.") and not (first and i == 0 and c == ".")
            else "".join(f"\\x{b:02x}" for b in c.encode()) for i, c in enumerate(part))
    parts = [p for p in path.split("/") if p]
    return ("-".join(escape(p, n == 0) for n, p in enumerate(parts)) or "-") + ".mount"
