"""
What the cluster model turns into, per host: pg_hba rules, Patroni's configuration (its
cluster-wide part kept in etcd, and the whole file) and the firewall's rules.

Pure functions of the model (``pgcluster_model.build``) and of the few facts of the host's
environment they are handed (credentials, the salt-master's addresses); the execution module
``pgcluster`` gathers those and calls these.
"""

from __future__ import annotations

import ipaddress


def admin_networks(cfg: dict, masters: list[str]) -> list[str]:
    """pgcluster:firewall:admin_sources and the salt-master's addresses, as networks."""
    sources = [*cfg["firewall"]["admin_sources"], *masters]
    return sorted({str(ipaddress.IPv4Network(source)) for source in sources})


def pg_hba(cfg: dict, member: str, admins: list[str]) -> list[str]:
    """Least privilege: replication and rewind only between members, the application only from
    where its connections come from, scram-sha-256 everywhere, nothing else."""
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
        # PgBouncer on this member (connecting to the member's own address) is the only way in.
        rules.append(f"host {db} {app} {cfg['members'][member]['address']}/32 scram-sha-256")
    else:
        for name in cfg["web_names"]:
            rules.append(f"host {db} {app} {cfg['web'][name]['address']}/32 scram-sha-256")
    # The admin sources (the salt-master, root on every host anyway, and the operators'
    # networks) may reach the app's database directly: to look at it, and to measure it
    # without the routing in between (bench/routing.py).
    rules.extend(f"host {db} {app} {network} scram-sha-256" for network in admins)
    return rules


def dcs_config(cfg: dict) -> dict:
    """The cluster-wide part of Patroni's configuration, kept in etcd."""
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


def patroni_config(cfg: dict, member: str, credentials: dict, admins: list[str]) -> dict:
    """/etc/patroni/config.yml of one member. credentials: the member's pillar share."""
    me = cfg["members"][member]["address"]
    patroni, pg = cfg["patroni"], cfg["postgresql"]
    version = pg["version"]
    restapi_auth = {"username": "patroni", "password": credentials["restapi"]}
    return {
        "scope": cfg["name"],
        "namespace": "/service/",
        "name": member,
        "restapi": {
            "listen": f"{me}:{patroni['restapi_port']}",
            "connect_address": f"{me}:{patroni['restapi_port']}",
            "authentication": restapi_auth,
        },
        "ctl": {"authentication": restapi_auth},
        "etcd3": {"hosts": cfg["etcd"]["endpoints"]},
        "bootstrap": {
            "dcs": dcs_config(cfg),
            "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
        },
        "postgresql": {
            "listen": f"{me},127.0.0.1:{pg['port']}",
            "connect_address": f"{me}:{pg['port']}",
            "data_dir": f"{pg['home']}/{version}/main",
            "bin_dir": f"/usr/lib/postgresql/{version}/bin",
            "pgpass": f"{pg['home']}/.pgpass_patroni",
            "use_unix_socket": True,
            "authentication": {
                "superuser": {"username": "postgres", "password": credentials["superuser"]},
                "replication": {"username": "replicator", "password": credentials["replication"]},
                "rewind": {"username": "rewind", "password": credentials["rewind"]},
            },
            "parameters": {"unix_socket_directories": "/var/run/postgresql"},
            "pg_hba": pg_hba(cfg, member, admins),
        },
        "tags": {
            "nofailover": False,
            "noloadbalance": False,
            "clonefrom": False,
            "nosync": False,
            **patroni["tags"].get(member, {}),
        },
    }


def firewall_rules(cfg: dict, host: str, masters: list[str], master_ports: list[int]) -> dict:
    """The ports this host opens and to whom: SSH to anyone; on a member, PostgreSQL,
    PgBouncer, Patroni's REST API and etcd's client port to the members, the web hosts and the
    admin sources, etcd's peer port to the members only; on a web host, HTTP to anyone and
    HAProxy's ports to the admin sources (the app reaches them locally)."""
    members = [cfg["members"][n]["address"] for n in cfg["member_names"]]
    web = [cfg["web"][n]["address"] for n in cfg["web_names"]]
    admins = sorted({*cfg["firewall"]["admin_sources"], *masters})
    rules = {"enabled": cfg["firewall"]["enabled"], "open": [22], "services": [],
             # The minion's own connections to its master were opened before the first ruleset
             # loaded, so conntrack first sees them mid-stream as "new": let the master's side
             # of them in, or the minion loses its master in the middle of the state run.
             "salt_master": {"sources": sorted(masters), "ports": sorted(set(master_ports))}}

    def allow(name, port, sources):
        rules["services"].append({"name": name, "port": port, "sources": sorted(set(sources))})

    if host in cfg["members"]:
        clients = members + web + admins
        allow("postgresql", cfg["postgresql"]["port"], clients)
        if cfg["pgbouncer"]["enabled"]:
            allow("pgbouncer", cfg["pgbouncer"]["port"], clients)
        allow("patroni", cfg["patroni"]["restapi_port"], clients)
        allow("etcd-client", cfg["etcd"]["client_port"], clients)
        allow("etcd-peer", cfg["etcd"]["peer_port"], members)
    elif host in cfg["web"]:
        rules["open"].append(cfg["webapp"]["port"])
        if admins:
            allow("haproxy-primary", cfg["haproxy"]["primary_port"], admins)
            allow("haproxy-replica", cfg["haproxy"]["replica_port"], admins)
    return rules
