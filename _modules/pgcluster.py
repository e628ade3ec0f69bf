"""
The cluster model: the ``pgcluster`` pillar merged over its defaults, checked, and the values
every component derives from it (etcd's initial cluster, Patroni's hosts, HAProxy's servers).

Each component's ``map.jinja`` starts from ``salt['pgcluster.config']()``, so a bad pillar fails
when the first state renders, with a message that names the key, and every component sees the
same cluster. ``pillar/pillar.example`` documents every key; the defaults are ``DEFAULTS`` here.

CLI Example:

.. code-block:: bash

    salt postgres-srv1 pgcluster.config
    salt-call pgcluster.config pillar='{"pgcluster": {"patroni": {"ttl": 10}}}'
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import socket

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "pgcluster"

# Patroni's timing: the lock's ttl is the floor of a dead leader's outage; Patroni refuses
# ttl < 20. loop_wait 2 / retry_timeout 9 keep loop_wait + 2 * retry_timeout <= ttl.
DEFAULTS = {
    "name": "pg-cluster-skynet",
    "members": {},
    "web": {},
    "postgresql": {
        "version": 15,
        "port": 5432,
        "parameters": {
            "max_connections": 200,
            "shared_buffers": "128MB",
            "wal_level": "replica",
            "hot_standby": "on",
            "wal_log_hints": "on",
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "wal_keep_size": "256MB",
            "password_encryption": "scram-sha-256",
            # A cut-off leader finishes shutting down once its WAL senders time out
            # (ha-reference.md): 60 s by default keeps it stuck that long.
            "wal_sender_timeout": "10s",
            "wal_receiver_timeout": "10s",
        },
    },
    "patroni": {
        "version": "4.1.5",
        "psycopg2_version": "2.9.13",
        "ttl": 20,
        "loop_wait": 2,
        "retry_timeout": 9,
        "maximum_lag_on_failover": 1048576,
        "synchronous_mode": True,
        "synchronous_mode_strict": False,
        "failsafe_mode": True,
        "use_pg_rewind": True,
        "restapi_port": 8008,
        "tags": {},
    },
    "etcd": {
        "client_port": 2379,
        "peer_port": 2380,
        # Hand etcd's raft leadership away from the PostgreSQL primary's host: a dead primary
        # that also led etcd costs 2-3 s more of writes (bench/failover.py).
        "keep_leader_off_primary": True,
    },
    "haproxy": {
        "primary_port": 5000,
        "replica_port": 5001,
        "stats_port": 7000,
        "replica_max_lag": 10485760,
        # Patroni's REST API is asked every 500 ms, 250 ms once a check failed and for a
        # server that is down: a new leader gets writes 0.2-0.6 s sooner than with 1s / 500ms,
        # for about 8 checks a second per member (bench/failover.py).
        "check": {"inter": "500ms", "fastinter": "250ms", "downinter": "250ms", "fall": 2,
                  "rise": 1},
        "timeout_client": "30m",
        "timeout_server": "30m",
        "maxconn": 1000,
    },
    "pgbouncer": {
        "enabled": True,
        "port": 6432,
        "pool_mode": "transaction",
        "default_pool_size": 20,
        "max_client_conn": 500,
        # Seconds before PgBouncer retries a server login that failed. Its default, 15, kept
        # writes out for 15 s after PostgreSQL restarted from a crash (bench/failover.py kill9).
        "server_login_retry": 1,
    },
    "app": {
        "database": "webapp",
        "user": "webapp",
    },
    # nftables on every host: service ports open only to the cluster (see firewall()).
    "firewall": {
        "enabled": True,
        # Networks that may reach every service port besides the cluster's hosts (operators,
        # monitoring). The salt-master's own address is always added: it is root on every host.
        "admin_sources": [],
    },
}

REDACTED = "**********"

# Keys whose values are free-form maps: their own keys are not checked against DEFAULTS.
FREE_FORM = {("members",), ("web",), ("postgresql", "parameters"), ("patroni", "tags")}


def __virtual__():
    return __virtualname__


def _merge(base, override, path=()):
    """DEFAULTS with the pillar over them; unknown keys are refused (they are typos)."""
    if path in FREE_FORM:
        merged = copy.deepcopy(base)
        for key, value in (override or {}).items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return merged
    merged = copy.deepcopy(base)
    for key, value in override.items():
        where = ":".join(("pgcluster", *path, str(key)))
        if key not in base:
            raise CommandExecutionError(f"pillar {where}: unknown key (known: {', '.join(sorted(base))})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise CommandExecutionError(f"pillar {where}: expected a mapping, got {value!r}")
            merged[key] = _merge(base[key], value, (*path, key))
        else:
            merged[key] = value
    return merged


def _check_numbers(cfg):
    for section, key in (("postgresql", "port"), ("patroni", "restapi_port"),
                         ("etcd", "client_port"), ("etcd", "peer_port"),
                         ("haproxy", "primary_port"), ("haproxy", "replica_port"),
                         ("haproxy", "stats_port"), ("pgbouncer", "port")):
        port = _int(cfg, section, key, minimum=1)
        if port > 65535:
            raise CommandExecutionError(f"pillar pgcluster:{section}:{key} is {port}: not a port")
    for key in ("default_pool_size", "max_client_conn", "server_login_retry"):
        _int(cfg, "pgbouncer", key, minimum=1)


def _int(cfg, section, key, minimum=None):
    value = cfg[section][key]
    where = f"pillar pgcluster:{section}:{key}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise CommandExecutionError(f"{where}: expected a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise CommandExecutionError(f"{where} is {value}: it must be at least {minimum}")
    return value


def _hosts(cfg, section):
    hosts = cfg[section]
    if not isinstance(hosts, dict) or not hosts:
        raise CommandExecutionError(
            f"pillar pgcluster:{section}: list the hosts by minion id, each with an address"
        )
    for name, host in hosts.items():
        where = f"pillar pgcluster:{section}:{name}"
        if not isinstance(host, dict) or not host.get("address"):
            raise CommandExecutionError(f"{where}:address is missing")
        try:
            ipaddress.IPv4Address(str(host["address"]))
        except ValueError:
            raise CommandExecutionError(
                f"{where}:address {host['address']!r} is not an IPv4 address"
            ) from None
    return hosts


def _check_admin_sources(sources):
    where = "pillar pgcluster:firewall:admin_sources"
    if not isinstance(sources, list):
        raise CommandExecutionError(f"{where}: expected a list of networks")
    for source in sources:
        try:
            ipaddress.IPv4Network(str(source))
        except ValueError:
            raise CommandExecutionError(f"{where}: {source!r} is not an IPv4 network") from None


def validate(cfg):
    """
    Check a merged cluster configuration; raise CommandExecutionError naming the bad key.

    CLI Example:

    .. code-block:: bash

        salt-call pgcluster.validate "$(salt-call --out=json pgcluster.config)"
    """
    members = _hosts(cfg, "members")
    web = _hosts(cfg, "web")
    seen = {}
    for section, hosts in (("members", members), ("web", web)):
        for name, host in hosts.items():
            address = str(host["address"])
            if address in seen:
                raise CommandExecutionError(
                    f"pillar pgcluster:{section}:{name}:address {address} is already the address "
                    f"of {seen[address]}"
                )
            seen[address] = f"pgcluster:{'members' if name in members else 'web'}:{name}"
    both = set(members) & set(web)
    if both:
        raise CommandExecutionError(
            f"pillar pgcluster:web:{sorted(both)[0]} is also a database member"
        )
    if len(members) % 2 == 0:
        raise CommandExecutionError(
            f"pillar pgcluster:members has {len(members)} members: etcd runs on each and needs an "
            "odd number (3 or 5) to keep a quorum through a failure"
        )
    ttl = _int(cfg, "patroni", "ttl")
    loop_wait = _int(cfg, "patroni", "loop_wait", minimum=1)
    retry_timeout = _int(cfg, "patroni", "retry_timeout", minimum=1)
    if ttl < 20:
        raise CommandExecutionError(
            f"pillar pgcluster:patroni:ttl is {ttl}: Patroni refuses a ttl below 20"
        )
    if loop_wait + 2 * retry_timeout > ttl:
        raise CommandExecutionError(
            f"pillar pgcluster:patroni: loop_wait ({loop_wait}) + 2 * retry_timeout "
            f"({retry_timeout}) = {loop_wait + 2 * retry_timeout} is more than ttl ({ttl}); "
            "Patroni needs loop_wait + 2 * retry_timeout <= ttl"
        )
    for name in cfg["patroni"]["tags"]:
        if name not in members:
            raise CommandExecutionError(
                f"pillar pgcluster:patroni:tags:{name}: unknown member (members: "
                f"{', '.join(sorted(members))})"
            )
    _check_numbers(cfg)
    _check_admin_sources(cfg["firewall"]["admin_sources"])
    if str(cfg["postgresql"]["version"]) != "15":
        raise CommandExecutionError(
            f"pillar pgcluster:postgresql:version is {cfg['postgresql']['version']}: "
            "this formula deploys PostgreSQL 15 (Debian 12's)"
        )
    return True


def _derive(cfg):
    """Values several components need, computed once."""
    members = cfg["members"]
    names = sorted(members)
    etcd = cfg["etcd"]
    cfg["member_names"] = names
    cfg["web_names"] = sorted(cfg["web"])
    cfg["bootstrap_member"] = names[0]
    cfg["etcd"]["initial_cluster"] = ",".join(
        f"{n}=http://{members[n]['address']}:{etcd['peer_port']}" for n in names
    )
    cfg["etcd"]["endpoints"] = [f"{members[n]['address']}:{etcd['client_port']}" for n in names]
    cfg["backend_port"] = (
        cfg["pgbouncer"]["port"] if cfg["pgbouncer"]["enabled"] else cfg["postgresql"]["port"]
    )
    return cfg


def config():
    """
    The cluster as the states see it: pillar ``pgcluster`` over the defaults, validated, with
    derived values (``member_names``, ``bootstrap_member``, ``etcd:initial_cluster``...).

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 pgcluster.config
    """
    # Salt 3008 masks pillar values that leave pillar.get outside a template: ask for them plain.
    pillar = __salt__["pillar.get"]("pgcluster", {}, unmask=True)
    if not isinstance(pillar, dict):
        raise CommandExecutionError("pillar pgcluster: expected a mapping")
    cfg = _merge(DEFAULTS, pillar)
    validate(cfg)
    return _derive(cfg)


def role(minion_id=None):
    """
    What a minion is in the cluster: ``member``, ``web`` or ``none``.

    CLI Example:

    .. code-block:: bash

        salt '*' pgcluster.role
    """
    minion_id = minion_id or __opts__["id"]
    cfg = config()
    if minion_id in cfg["members"]:
        return "member"
    if minion_id in cfg["web"]:
        return "web"
    return "none"


def _credentials():
    """This minion's share of the generated passwords (pillar ``pgcluster_credentials``)."""
    creds = __salt__["pillar.get"]("pgcluster_credentials", {}, unmask=True)
    if not creds:
        raise CommandExecutionError(
            "pillar pgcluster_credentials is empty for this minion: the master makes it "
            "(pillar/credentials.sls) for the minions listed in pgcluster:members and pgcluster:web"
        )
    return dict(creds)


def _pg_hba(cfg, me):
    """Least privilege: replication and rewind only between members, the application only
    from where its connections come from, scram-sha-256 everywhere, nothing else."""
    app, db = cfg["app"]["user"], cfg["app"]["database"]
    rules = [
        "local all postgres peer",
        "host all postgres 127.0.0.1/32 scram-sha-256",
        # Patroni reads a stopped replica's timeline over a replication connection to itself;
        # without this rule an old leader cannot decide on pg_rewind and never rejoins.
        "host replication replicator 127.0.0.1/32 scram-sha-256",
    ]
    for name in cfg["member_names"]:
        address = cfg["members"][name]["address"]
        rules.append(f"host replication replicator {address}/32 scram-sha-256")
        rules.append(f"host postgres rewind {address}/32 scram-sha-256")
    if cfg["pgbouncer"]["enabled"]:
        # PgBouncer on this node (connecting to the node's own address) is the only way in.
        rules.append(f"host {db} {app} {me}/32 scram-sha-256")
    else:
        for name in cfg["web_names"]:
            rules.append(f"host {db} {app} {cfg['web'][name]['address']}/32 scram-sha-256")
    # The admin sources (the salt-master, root on every host anyway, and the operators'
    # networks) may reach the app's database directly: to look at it, and to measure it
    # without the routing in between (bench/routing.py).
    for network in _admin_networks(cfg):
        rules.append(f"host {db} {app} {network} scram-sha-256")
    return rules


def dcs_config():
    """
    The cluster-wide part of Patroni's configuration, kept in etcd (``patronictl show-config``):
    bootstrapped from here, and kept in line with the pillar by the ``patroni_dcs.managed`` state.

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 pgcluster.dcs_config
    """
    cfg = config()
    patroni = cfg["patroni"]
    return {
        "ttl": patroni["ttl"],
        "loop_wait": patroni["loop_wait"],
        "retry_timeout": patroni["retry_timeout"],
        "maximum_lag_on_failover": patroni["maximum_lag_on_failover"],
        "synchronous_mode": patroni["synchronous_mode"],
        "synchronous_mode_strict": patroni["synchronous_mode_strict"],
        "failsafe_mode": patroni["failsafe_mode"],
        "postgresql": {
            "use_pg_rewind": patroni["use_pg_rewind"],
            "use_slots": True,
            "parameters": cfg["postgresql"]["parameters"],
        },
    }


def patroni_config(minion_id=None, show_secrets=False):
    """
    The Patroni configuration (``/etc/patroni/config.yml``) of one database member. Passwords
    show as ``**********`` unless ``show_secrets=True`` (what the config template asks for).

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 pgcluster.patroni_config
    """
    cfg = config()
    minion_id = minion_id or __opts__["id"]
    if minion_id not in cfg["members"]:
        raise CommandExecutionError(
            f"{minion_id} is not in pillar pgcluster:members ({', '.join(cfg['member_names'])})"
        )
    creds = _credentials()
    if not show_secrets:
        creds = dict.fromkeys(creds, REDACTED)
    me = cfg["members"][minion_id]["address"]
    patroni, pg = cfg["patroni"], cfg["postgresql"]
    version = pg["version"]
    return {
        "scope": cfg["name"],
        "namespace": "/service/",
        "name": minion_id,
        "restapi": {
            "listen": f"{me}:{patroni['restapi_port']}",
            "connect_address": f"{me}:{patroni['restapi_port']}",
            "authentication": {"username": "patroni", "password": creds["restapi"]},
        },
        "ctl": {"authentication": {"username": "patroni", "password": creds["restapi"]}},
        "etcd3": {"hosts": cfg["etcd"]["endpoints"]},
        "bootstrap": {
            "dcs": dcs_config(),
            "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
        },
        "postgresql": {
            "listen": f"{me},127.0.0.1:{pg['port']}",
            "connect_address": f"{me}:{pg['port']}",
            "data_dir": f"/var/lib/postgresql/{version}/main",
            "bin_dir": f"/usr/lib/postgresql/{version}/bin",
            "pgpass": "/var/lib/postgresql/.pgpass_patroni",
            "use_unix_socket": True,
            "authentication": {
                "superuser": {"username": "postgres", "password": creds["superuser"]},
                "replication": {"username": "replicator", "password": creds["replication"]},
                "rewind": {"username": "rewind", "password": creds["rewind"]},
            },
            "parameters": {"unix_socket_directories": "/var/run/postgresql"},
            "pg_hba": _pg_hba(cfg, me),
        },
        "tags": {
            "nofailover": False,
            "noloadbalance": False,
            "clonefrom": False,
            "nosync": False,
            **patroni["tags"].get(minion_id, {}),
        },
    }


def _master_addresses():
    """The salt-master's IPv4 addresses, as this minion is configured to reach it."""
    masters = __opts__.get("master") or []
    masters = [masters] if isinstance(masters, str) else list(masters)
    addresses = set()
    for master in masters:
        host = str(master).rsplit(":", 1)[0] if str(master).count(":") == 1 else str(master)
        try:
            addresses.add(str(ipaddress.IPv4Address(host)))
        except ValueError:
            try:
                addresses.update(info[4][0] for info in socket.getaddrinfo(host, None, socket.AF_INET))
            except OSError:
                log.warning("firewall: cannot resolve the salt-master %s; it is not let in", host)
    return sorted(addresses)


def _admin_networks(cfg):
    """pgcluster:firewall:admin_sources and the salt-master, as networks."""
    sources = [*cfg["firewall"]["admin_sources"], *_master_addresses()]
    return sorted({str(ipaddress.IPv4Network(str(source))) for source in sources})


def firewall(minion_id=None):
    """
    The ports this host opens and to whom, for its nftables ruleset: SSH to anyone; on a
    member, PostgreSQL, PgBouncer, Patroni's REST API and etcd's client port to the members,
    the web hosts and the admin sources, etcd's peer port to the members only; on a web host,
    HTTP to anyone and HAProxy's ports to the admin sources (the app reaches them locally).

    CLI Example:

    .. code-block:: bash

        salt web pgcluster.firewall
    """
    cfg = config()
    minion_id = minion_id or __opts__["id"]
    members = [cfg["members"][n]["address"] for n in cfg["member_names"]]
    web = [cfg["web"][n]["address"] for n in cfg["web_names"]]
    masters = _master_addresses()
    admins = sorted({*map(str, cfg["firewall"]["admin_sources"]), *masters})
    rules = {"enabled": bool(cfg["firewall"]["enabled"]), "open": [22], "services": [],
             # The minion's own connections to its master were opened before the first ruleset
             # loaded, so conntrack first sees them mid-stream as "new": let the master's side
             # of them in, or the minion loses its master in the middle of the state run.
             "salt_master": {"sources": masters,
                             "ports": sorted({int(__opts__.get("publish_port", 4505)),
                                              int(__opts__.get("master_port", 4506))})}}

    def allow(name, port, sources):
        rules["services"].append({"name": name, "port": port, "sources": sorted(set(sources))})

    if minion_id in cfg["members"]:
        clients = members + web + admins
        allow("postgresql", cfg["postgresql"]["port"], clients)
        if cfg["pgbouncer"]["enabled"]:
            allow("pgbouncer", cfg["pgbouncer"]["port"], clients)
        allow("patroni", cfg["patroni"]["restapi_port"], clients)
        allow("etcd-client", cfg["etcd"]["client_port"], clients)
        allow("etcd-peer", cfg["etcd"]["peer_port"], members)
    elif minion_id in cfg["web"]:
        rules["open"].append(80)
        if admins:
            allow("haproxy-primary", cfg["haproxy"]["primary_port"], admins)
            allow("haproxy-replica", cfg["haproxy"]["replica_port"], admins)
    return rules


def is_leader(minion_id=None, timeout=3):
    """
    True when this member's Patroni says it is the leader (``GET /primary`` answers 200).

    CLI Example:

    .. code-block:: bash

        salt -L postgres-srv1,postgres-srv2,postgres-srv3 pgcluster.is_leader
    """
    import urllib.error
    import urllib.request

    cfg = config()
    minion_id = minion_id or __opts__["id"]
    if minion_id not in cfg["members"]:
        return False
    url = f"http://{cfg['members'][minion_id]['address']}:{cfg['patroni']['restapi_port']}/primary"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False
