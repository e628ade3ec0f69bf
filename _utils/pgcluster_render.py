"""
What the cluster model turns into, per host: pg_hba rules, Patroni's configuration (its
cluster-wide part kept in etcd, and the whole file) and the firewall's rules.

Pure functions of the model (``pgcluster_model.build``) and of the few facts of the host's
environment they are handed (credentials, the salt-master's addresses); the execution module
``pgcluster`` gathers those and calls these.
"""

from __future__ import annotations

import datetime
import ipaddress


def admin_networks(cfg: dict, masters: list[str]) -> list[str]:
    """pgcluster:firewall:admin_sources and the salt-master's addresses, as networks."""
    sources = [*cfg["firewall"]["admin_sources"], *masters]
    return sorted({str(ipaddress.IPv4Network(source)) for source in sources})


def pg_hba(cfg: dict, member: str, admins: list[str]) -> list[str]:
    """Least privilege: replication and rewind only between members, the application only from
    where its connections come from, scram-sha-256 everywhere, nothing else. With TLS every
    remote rule takes only TLS connections, and members (and PgBouncer on them) must also show
    a certificate from the cluster's CA."""
    app, db = cfg["app"]["user"], cfg["app"]["database"]
    tls = cfg["postgresql"]["tls"]
    remote = "hostssl" if tls else "host"
    peer = " clientcert=verify-ca" if tls else ""
    rules = [
        "local all postgres peer",
        "host all postgres 127.0.0.1/32 scram-sha-256",
        # PostgreSQL's exporter (salt/monitoring): its own OS user over the socket, no password.
        *([f"local postgres {cfg['monitoring']['postgres_role']} peer"]
          if cfg["monitoring"]["enabled"] else []),
        # Patroni reads a stopped replica's timeline over a replication connection to itself
        # (use_unix_socket_repl); without this rule an old leader cannot decide on pg_rewind
        # and never rejoins.
        "local replication replicator scram-sha-256",
    ]
    for name in cfg["member_names"]:
        address = cfg["members"][name]["address"]
        rules.append(f"{remote} replication replicator {address}/32 scram-sha-256{peer}")
        rules.append(f"{remote} postgres rewind {address}/32 scram-sha-256{peer}")
    if cfg["pgbouncer"]["enabled"]:
        # PgBouncer on this member (connecting to the member's own address).
        rules.append(f"{remote} {db} {app} {cfg['members'][member]['address']}/32 "
                     f"scram-sha-256{peer}")
    if not cfg["pgbouncer"]["enabled"] or cfg["webapp"]["data_path"] == "libpq":
        # The web app itself: behind HAProxy without PgBouncer, or with no proxy at all.
        for name in cfg["web_names"]:
            rules.append(f"{remote} {db} {app} {cfg['web'][name]['address']}/32 scram-sha-256")
    # The admin sources (the salt-master, root on every host anyway, and the operators'
    # networks) may reach the app's database directly: to look at it, and to measure it
    # without the routing in between (bench/routing.py).
    rules.extend(f"{remote} {db} {app} {network} scram-sha-256" for network in admins)
    return rules


def postgres_tls_files(cfg: dict) -> dict:
    """postgres's copies of the CA's certificate and the host's certificate and key (salt/tls),
    which PostgreSQL and Patroni (both run as postgres) read."""
    return {name: f"{cfg['postgresql']['tls_dir']}/{name}" for name in ("ca.crt", "host.crt", "host.key")}


def patroni_restapi_tls(cfg: dict) -> dict:
    """Patroni's REST API over HTTPS with the host's certificate; the CA also verifies the
    other members' APIs (Patroni's own calls, patronictl). Empty without TLS."""
    if not cfg["patroni"]["tls"]:
        return {}
    files = postgres_tls_files(cfg)
    return {"certfile": files["host.crt"], "keyfile": files["host.key"], "cafile": files["ca.crt"]}


# The header with which a member's running Patroni names its etcd user on every REST answer
# (patroni.etcd_logins reads it): etcd's authentication goes on only once every Patroni has
# applied its login, which a config file on disk does not show (Patroni reloads in its loop).
PATRONI_ETCD_USER_HEADER = "X-Pgcluster-Etcd-User"


def patroni_etcd(cfg: dict, credentials: dict) -> dict:
    """Patroni's etcd3 section: the members' client endpoints; over HTTPS, verified by the
    cluster's CA (pgcluster:etcd:tls); as etcd's ``patroni`` user, whose role reaches the
    cluster's prefix only.

    The login stays with pgcluster:etcd:auth off: Patroni asks, etcd answers "authentication
    is not enabled", and Patroni goes on without a token. A Patroni that dropped its login
    instead kept the token it had (Patroni 4.1 keeps it across a reload), which etcd refuses
    once its authentication is off ("invalid auth token"), and without a login Patroni could
    not get another: a leader demoted itself (seen in the lab's auth off/on test)."""
    etcd = cfg["etcd"]
    section: dict = {"hosts": etcd["endpoints"], "username": "patroni",
                     "password": credentials["etcd_patroni"]}
    if etcd["tls"]:
        section.update(protocol="https", cacert=cfg["tls"]["ca_file"])
    return section


def postgresql_tls(cfg: dict) -> tuple[dict, dict]:
    """PostgreSQL's TLS parameters (this host's certificate, the cluster's CA for clients'
    certificates) and what a member's replication and pg_rewind connections add: the server
    is verified by the CA and its address (verify-full), and the member shows its own
    certificate. Both empty without TLS."""
    pg = cfg["postgresql"]
    if not pg["tls"]:
        return {}, {}
    files = postgres_tls_files(cfg)
    server = {"ssl": "on", "ssl_cert_file": files["host.crt"], "ssl_key_file": files["host.key"],
              "ssl_ca_file": files["ca.crt"]}
    client = {"sslmode": "verify-full", "sslrootcert": files["ca.crt"],
              "sslcert": files["host.crt"], "sslkey": files["host.key"]}
    return server, client


def dcs_config(cfg: dict) -> dict:
    """The cluster-wide part of Patroni's configuration, kept in etcd."""
    patroni = cfg["patroni"]
    return {
        "ttl": patroni["ttl"],
        "loop_wait": patroni["loop_wait"],
        "retry_timeout": patroni["retry_timeout"],
        "maximum_lag_on_failover": patroni["maximum_lag_on_failover"],
        "synchronous_mode": patroni["synchronous_mode"],
        "synchronous_node_count": patroni["synchronous_node_count"],
        "synchronous_mode_strict": patroni["synchronous_mode_strict"],
        "failsafe_mode": patroni["failsafe_mode"],
        "postgresql": {
            "use_pg_rewind": patroni["use_pg_rewind"],
            "use_slots": True,
            "parameters": {**cfg["postgresql"]["parameters"], **archive_parameters(cfg)},
        },
    }


def archive_parameters(cfg: dict) -> dict:
    """WAL archiving into the backup repositories, from whichever member leads."""
    backup = cfg["pgbackrest"]
    if not backup["enabled"]:
        return {}
    return {
        "archive_mode": "on",
        # Asynchronous: the command queues the segment and returns; pgBackRest pushes in the
        # background, several at once.
        "archive_command": f"pgbackrest --stanza={backup['stanza']} archive-push %p",
        "archive_timeout": backup["archive_timeout"],
    }


def replica_methods(cfg: dict) -> dict:
    """Patroni's postgresql section for a backup-aware member: restore_command, and new
    replicas restored from the repository (falling back to pg_basebackup from the leader when
    there is no backup yet)."""
    backup = cfg["pgbackrest"]
    if not backup["enabled"]:
        return {}
    stanza = backup["stanza"]
    return {
        "recovery_conf": {"restore_command": f'pgbackrest --stanza={stanza} archive-get %f "%p"'},
        "create_replica_methods": ["pgbackrest", "basebackup"],
        "pgbackrest": {
            # --delta reuses what a data directory left behind; the WAL since the backup comes
            # from the archive, then streaming takes over.
            "command": f"pgbackrest --stanza={stanza} --delta --type=standby restore",
            "keep_data": True,
            "no_params": True,
        },
    }


def pgbackrest_time(target: str) -> str:
    """An ISO 8601 time with its zone in the form pgBackRest reads (it picks the backup to
    restore by it): UTC, a space between date and time, fractions kept."""
    when = datetime.datetime.fromisoformat(target).astimezone(datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S") + (f".{when.microsecond:06d}" if when.microsecond
                                                 else "") + "+00"


def restore_bootstrap(cfg: dict, target: str, repo: int | None = None) -> dict:
    """Patroni's bootstrap section for orch.restore: the cluster is bootstrapped by restoring
    the backup repository (``repo``, or the first holding a backup for the target) to
    ``target`` (a time with its zone, or latest), recovering the archived WAL up to it and
    promoting; what pgBackRest writes for the recovery is kept."""
    backup = cfg["pgbackrest"]
    data_dir = cfg["postgresql"]["data_dir"]
    aim = ("--type=default" if target == "latest" else
           f"--type=time '--target={pgbackrest_time(target)}' --target-action=promote")
    source = f" --repo={int(repo)}" if repo else ""
    restore = f"pgbackrest --stanza={backup['stanza']}{source} --delta {aim} restore"
    return {
        "method": "pgbackrest_restore",
        "pgbackrest_restore": {
            "command": f"/bin/sh -c \"mkdir -p -m 0700 {data_dir} && exec {restore}\"",
            "keep_existing_recovery_conf": True,
            "no_params": True,
        },
    }


def patroni_config(cfg: dict, member: str, credentials: dict, admins: list[str],
                   restore: dict | None = None) -> dict:
    """/etc/patroni/config.yml of one member. credentials: the member's pillar share;
    restore: orch.restore's {target, repo}, which makes the bootstrap a restore."""
    me = cfg["members"][member]["address"]
    patroni, pg = cfg["patroni"], cfg["postgresql"]
    version = pg["version"]
    restapi_auth = {"username": "patroni", "password": credentials["restapi"]}
    tls_server, tls_client = postgresql_tls(cfg)
    return {
        "scope": cfg["name"],
        "namespace": cfg["etcd"]["namespace"],
        "name": member,
        "restapi": {
            "listen": f"{me}:{patroni['restapi_port']}",
            "connect_address": f"{me}:{patroni['restapi_port']}",
            "request_queue_size": patroni["request_queue_size"],
            "authentication": restapi_auth,
            **patroni_restapi_tls(cfg),
            "http_extra_headers": {PATRONI_ETCD_USER_HEADER: "patroni"},
        },
        "ctl": {"authentication": restapi_auth},
        "etcd3": patroni_etcd(cfg, credentials),
        "bootstrap": {
            "dcs": dcs_config(cfg),
            "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
            **(restore_bootstrap(cfg, str(restore["target"]), restore.get("repo"))
               if restore and restore.get("target") else {}),
        },
        "postgresql": {
            "listen": f"{me},127.0.0.1:{pg['port']}",
            "connect_address": f"{me}:{pg['port']}",
            "data_dir": pg["data_dir"],
            "bin_dir": f"/usr/lib/postgresql/{version}/bin",
            "pgpass": f"{pg['home']}/.pgpass_patroni",
            "use_unix_socket": True,
            # Its replication connection to itself too: no certificate names 127.0.0.1.
            "use_unix_socket_repl": True,
            "authentication": {
                "superuser": {"username": "postgres", "password": credentials["superuser"]},
                "replication": {"username": "replicator", "password": credentials["replication"],
                                **tls_client},
                "rewind": {"username": "rewind", "password": credentials["rewind"], **tls_client},
            },
            "parameters": {"unix_socket_directories": "/var/run/postgresql", **tls_server},
            "pg_hba": pg_hba(cfg, member, admins),
            **replica_methods(cfg),
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
    backup = cfg["pgbackrest"]
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
        if backup["enabled"]:
            allow("pgbackrest", backup["tls_port"], [cfg["web"][backup["host"]]["address"]])
    elif host in cfg["web"]:
        rules["open"].append(cfg["webapp"]["port"])
        if admins:
            allow("haproxy-primary", cfg["haproxy"]["primary_port"], admins)
            allow("haproxy-replica", cfg["haproxy"]["replica_port"], admins)
        if backup["enabled"] and host == backup["host"]:
            allow("pgbackrest", backup["tls_port"], members)
    monitoring = cfg["monitoring"]
    if monitoring["enabled"] and (host in cfg["members"] or host in cfg["web"]):
        # The exporters answer the Prometheus host only (Patroni's and etcd's /metrics share
        # ports the cluster's hosts reach anyway); Prometheus answers the operators and the
        # cluster's hosts (the web app's charts, `salt <any host> monitoring.alerts`),
        # Alertmanager the operators.
        ports, prometheus = monitoring["ports"], [monitoring["address"]]
        allow("node-exporter", ports["node_exporter"], prometheus)
        if host in cfg["members"]:
            allow("postgres-exporter", ports["postgres_exporter"], prometheus)
            if cfg["pgbouncer"]["enabled"]:
                allow("pgbouncer-exporter", ports["pgbouncer_exporter"], prometheus)
        else:
            allow("haproxy-metrics", ports["haproxy"], prometheus)
        if host == monitoring["host"]:
            allow("prometheus", ports["prometheus"], members + web + admins)
            if monitoring["alertmanager"] and admins:
                allow("alertmanager", ports["alertmanager"], admins)
    return rules


# A client straight on a member (no HAProxy to cut its sessions when the member is marked down)
# whose member is cut off would wait on TCP for 15 minutes: keepalives (5 s idle, then 2 probes
# 2 s apart) and tcp_user_timeout drop such a connection within about 9 s, and the client
# reconnects to the new leader (seen in the lab: a partitioned leader held a writer for good).
LIBPQ_DEAD_PEER = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                   "keepalives_count": 2, "tcp_user_timeout": 9000}


def webapp_config(cfg: dict, credentials: dict) -> dict:
    """The web app's /etc/webapp/config.json: its writer's and reader's connection parameters
    by pgcluster:webapp:data_path, the members' Patroni REST APIs (the page's cluster view),
    Prometheus's URL (its charts), the form tokens' key.

    - ``haproxy``: HAProxy's primary and replica ports on the web host itself, TLS through it
      to the server behind, verified by the CA only (verify-ca: its certificate names that
      member, the app reaches it at HAProxy's address);
    - ``libpq``: no proxy: every member's PostgreSQL in one multi-host string, libpq picking
      the writer (target_session_attrs=read-write) or a standby (prefer-standby; the app
      shuffles the hosts of each new reader connection, as Debian 12's libpq 15 has no
      load_balance_hosts), each verified by its own address (verify-full). Not PgBouncer:
      libpq decides from the in_hot_standby a server reports at login, and PgBouncer (1.18)
      reports what its pool's first server connection said, however long ago: a member's
      PgBouncer went on saying "primary" after a switchover made it a standby. The app keeps
      its connections, so a pooler gives it nothing; they drop a member that went silent
      (LIBPQ_DEAD_PEER). HAProxy still runs for clients that need one address."""
    app, webapp = cfg["app"], cfg["webapp"]
    db = {"dbname": app["database"], "user": app["user"], "password": credentials["app"]}
    ca = {"sslrootcert": cfg["tls"]["ca_file"]}
    if webapp["data_path"] == "libpq":
        hosts = ",".join(cfg["members"][n]["address"] for n in cfg["member_names"])
        verify = {"sslmode": "verify-full", **ca} if cfg["postgresql"]["tls"] else {}
        writer = {**db, "host": hosts, "port": cfg["postgresql"]["port"],
                  "target_session_attrs": "read-write", **LIBPQ_DEAD_PEER, **verify}
        reader = {**writer, "target_session_attrs": "prefer-standby"}
    else:
        verify = {"sslmode": "verify-ca", **ca} if cfg["backend_tls"] else {}
        writer = {**db, "host": "127.0.0.1", "port": cfg["haproxy"]["primary_port"], **verify}
        reader = {**writer, "port": cfg["haproxy"]["replica_port"]}
    config = {"writer": writer, "reader": reader, "spread_reads": webapp["data_path"] == "libpq",
              "patroni": [cfg["patroni"]["urls"][n] for n in cfg["member_names"]],
              "csrf_secret": credentials["webapp_csrf"]}
    if cfg["monitoring"]["enabled"]:
        config["prometheus"] = cfg["monitoring"]["url"]
    if cfg["patroni"]["tls"]:
        config["patroni_ca"] = cfg["tls"]["ca_file"]
    return config


def prometheus_config(cfg: dict) -> dict:
    """/etc/prometheus/prometheus.yml: a job per component, its targets from the model (a
    member added in pillar is scraped after the next deployment), each named by its host
    (label instance) rather than ADDRESS:PORT, so that alerts name the host."""
    monitoring = cfg["monitoring"]
    ports = monitoring["ports"]
    members = [(n, cfg["members"][n]["address"]) for n in cfg["member_names"]]
    web = [(n, cfg["web"][n]["address"]) for n in cfg["web_names"]]
    ca = {"tls_config": {"ca_file": cfg["tls"]["ca_file"]}}

    def job(name: str, hosts: list, port: int, **options) -> dict:
        return {"job_name": name, **options, "static_configs": [
            {"targets": [f"{address}:{port}"], "labels": {"instance": host}}
            for host, address in hosts]}

    jobs = [
        job("node", members + web, ports["node_exporter"]),
        job("postgres", members, ports["postgres_exporter"]),
        *([job("pgbouncer", members, ports["pgbouncer_exporter"])]
          if cfg["pgbouncer"]["enabled"] else []),
        # Patroni's and etcd's own /metrics, over HTTPS when they have TLS (their servers ask
        # for no client certificate).
        job("patroni", members, cfg["patroni"]["restapi_port"],
            **({"scheme": "https", **ca} if cfg["patroni"]["tls"] else {})),
        job("etcd", members, cfg["etcd"]["client_port"],
            **({"scheme": "https", **ca} if cfg["etcd"]["tls"] else {})),
        job("haproxy", web, ports["haproxy"]),
        job("webapp", web, cfg["webapp"]["port"]),
        job("prometheus", [(monitoring["host"], monitoring["address"])], ports["prometheus"]),
    ]
    config = {
        "global": {"scrape_interval": monitoring["scrape_interval"],
                   "evaluation_interval": monitoring["scrape_interval"],
                   "external_labels": {"cluster": cfg["name"]}},
        "rule_files": [f"{monitoring['config_dir']}/rules/*.yml"],
        "scrape_configs": jobs,
    }
    if monitoring["alertmanager"]:
        alertmanager = f"{monitoring['address']}:{ports['alertmanager']}"
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
        jobs.append(job("alertmanager", [(monitoring["host"], monitoring["address"])],
                        ports["alertmanager"]))
    return config


def alertmanager_config(cfg: dict, smtp_password: str | None) -> dict:
    """/etc/prometheus/alertmanager.yml: every alert to the pillar's receivers (a webhook, an
    e-mail address, or both), grouped per alert and host; a resolved alert is told too."""
    receivers = cfg["monitoring"]["receivers"]
    receiver: dict = {"name": "pgcluster"}
    if receivers["webhook"]:
        receiver["webhook_configs"] = [{"url": receivers["webhook"], "send_resolved": True}]
    email = receivers["email"]
    if email:
        receiver["email_configs"] = [{
            "to": email["to"], "from": email["from"], "smarthost": email["smarthost"],
            "require_tls": email["require_tls"], "send_resolved": True,
            **({"auth_username": email["auth_username"]} if email["auth_username"] else {}),
            **({"auth_password": smtp_password} if smtp_password else {}),
        }]
    return {
        "route": {"receiver": "pgcluster", "group_by": ["alertname", "instance"],
                  "group_wait": "10s", "group_interval": "1m", "repeat_interval": "4h"},
        "receivers": [receiver],
    }


def pgbackrest_config(cfg: dict, host: str, cipher_pass: str, s3_keys: dict) -> dict:
    """/etc/pgbackrest.conf of a member or of the repository host, as {section: {option:
    value or list of values}} (a list is the option repeated).

    A member archives its WAL and restores through the repository host (posix repositories)
    or straight to object storage (s3); the repository host holds the posix repositories and
    runs the backups, reaching every member's PostgreSQL through their TLS servers.
    s3_keys: {repository number: {access_key_id, secret_access_key}}."""
    backup, pg = cfg["pgbackrest"], cfg["postgresql"]
    stanza, repo_host, tls = backup["stanza"], backup["host"], backup["tls_dir"]
    is_member = host in cfg["members"]
    address = (cfg["members"] if is_member else cfg["web"])[host]["address"]
    client_cert = {"ca-file": f"{tls}/ca.crt", "cert-file": f"{tls}/host.crt",
                   "key-file": f"{tls}/host.key"}
    glob: dict = {
        "log-path": backup["log_path"],
        "log-level-file": "info",
        "log-level-console": "warn",
        "process-max": backup["process_max"],
        "compress-type": backup["compress_type"],
        "tls-server-address": address,
        "tls-server-port": backup["tls_port"],
        "tls-server-ca-file": f"{tls}/ca.crt",
        "tls-server-cert-file": f"{tls}/host.crt",
        "tls-server-key-file": f"{tls}/host.key",
        # Who may connect, by the common name of its certificate: the members the repository
        # host only, the repository host the members only.
        "tls-server-auth": ([f"{repo_host}={stanza}"] if is_member else
                            [f"{member}={stanza}" for member in cfg["member_names"]]),
    }
    if is_member:
        glob.update({"archive-async": "y", "spool-path": backup["spool_path"]})
    else:
        # Copy from a standby; the leader only starts and stops the backup.
        glob.update({"backup-standby": "y", "start-fast": "y"})
    for number, repo in enumerate(backup["repositories"], 1):
        glob.update(_repository_options(cfg, number, repo, is_member=is_member,
                                        client_cert=client_cert, cipher_pass=cipher_pass,
                                        keys=s3_keys.get(number) or {}))
    if is_member:
        section = {"pg1-path": pg["data_dir"], "pg1-port": pg["port"],
                   "pg1-socket-path": "/var/run/postgresql"}
    else:
        section = {}
        for number, member in enumerate(cfg["member_names"], 1):
            section.update({f"pg{number}-host": member, f"pg{number}-host-type": "tls",
                            f"pg{number}-host-port": backup["tls_port"],
                            **{f"pg{number}-host-{k}": v for k, v in client_cert.items()},
                            f"pg{number}-path": pg["data_dir"], f"pg{number}-port": pg["port"],
                            f"pg{number}-socket-path": "/var/run/postgresql"})
    sections = {"global": glob}
    if is_member:
        # PostgreSQL waits for these: the archiver before a leader can shut down (three tries
        # per segment), the startup of a replica before it reads its own pg_wal. Cut off from
        # the repository, each would wait 60 s (pgBackRest's default), holding up the demotion
        # of a partitioned leader and the start of every replica; a try that runs out fails
        # and PostgreSQL tries again, while pgBackRest goes on in the background.
        sections["global:archive-push"] = {"archive-timeout": ARCHIVE_WAIT}
        sections["global:archive-get"] = {"archive-timeout": ARCHIVE_WAIT}
    sections[stanza] = section
    return sections


ARCHIVE_WAIT = 2  # seconds


def _repository_options(cfg: dict, number: int, repo: dict, *, is_member: bool,
                        client_cert: dict, cipher_pass: str, keys: dict) -> dict:
    """One repository's options (repoN-*): a posix repository a member reaches through the
    repository host; the rest written directly (and encrypted) where they are used."""
    backup, key = cfg["pgbackrest"], f"repo{number}"
    if repo["type"] == "posix" and is_member:
        return {f"{key}-host": backup["host"], f"{key}-host-type": "tls",
                f"{key}-host-port": backup["tls_port"],
                **{f"{key}-host-{k}": v for k, v in client_cert.items()}}
    options: dict = {f"{key}-path": repo["path"], f"{key}-retention-full": repo["retention_full"]}
    if repo["retention_diff"] is not None:
        options[f"{key}-retention-diff"] = repo["retention_diff"]
    if repo["encrypt"]:
        options.update({f"{key}-cipher-type": "aes-256-cbc", f"{key}-cipher-pass": cipher_pass})
    if repo["type"] == "s3":
        s3 = repo["s3"]
        options.update({
            f"{key}-type": "s3",
            f"{key}-s3-endpoint": s3["endpoint"],
            f"{key}-s3-region": s3["region"],
            f"{key}-s3-bucket": s3["bucket"],
            f"{key}-s3-uri-style": s3["uri_style"],
            f"{key}-storage-port": s3["port"],
            f"{key}-s3-key": keys.get("access_key_id", ""),
            f"{key}-s3-key-secret": keys.get("secret_access_key", ""),
        })
        if s3["ca_file"]:
            options[f"{key}-storage-ca-file"] = f"{backup['tls_dir']}/{key}-storage-ca.crt"
    return options



def ini(sections: dict) -> str:
    """pgBackRest's INI format: a list value is the option repeated."""
    lines = []
    for name, options in sections.items():
        lines.append(f"[{name}]")
        for option, value in options.items():
            for one in value if isinstance(value, list) else [value]:
                lines.append(f"{option}={one}")
        lines.append("")
    return "\n".join(lines)


def _alert(name: str, expr: str, summary: str, severity: str = "critical",
           for_: str | None = None) -> dict:
    return {"alert": name, "expr": expr, **({"for": for_} if for_ else {}),
            "labels": {"severity": severity}, "annotations": {"summary": summary}}


def alert_rules(cfg: dict) -> dict:
    """/etc/prometheus/rules/pgcluster.yml: the alerts, their thresholds from the pillar
    (pgcluster:monitoring:alerts). Each is tested with `promtool test rules`
    (tests/unit/test_alert_rules.py). The `for` durations let a switchover (about 2 s) or a
    rolling restart (about 6 s per member) pass without an alert; a member down fires within a
    minute (scrape interval + 20 s + an evaluation)."""
    monitoring, members = cfg["monitoring"], cfg["member_names"]
    limits = monitoring["alerts"]
    patroni = 'job="patroni"'
    rules = [
        _alert("PatroniNoLeader", f'(sum(patroni_primary{{{patroni}}}) or vector(0)) < 1',
               "No member of the cluster is the leader: writes fail", for_="30s"),
        _alert("PatroniMoreThanOneLeader", f'sum(patroni_primary{{{patroni}}}) > 1',
               "{{ $value }} members say they are the leader", for_="30s"),
        _alert("PatroniMemberDown",
               f'up{{{patroni}}} == 0 or patroni_postgres_running{{{patroni}}} == 0',
               "{{ $labels.instance }}: Patroni or its PostgreSQL is not running", for_="20s"),
        _alert("PostgreSQLReplicationLag",
               f'(scalar(max(patroni_xlog_location{{{patroni}}})) - '
               f'patroni_xlog_replayed_location{{{patroni}}} > {limits["replication_lag"]})'
               f' and on(instance) (patroni_replica{{{patroni}}} == 1)'
               # A stopped PostgreSQL reports replayed position 0: down, not lagging.
               f' and on(instance) (patroni_postgres_running{{{patroni}}} == 1)',
               "{{ $labels.instance }} has {{ $value | humanize1024 }}B of WAL left to replay "
               f"(more than {limits['replication_lag']} bytes)", severity="warning", for_="1m"),
    ]
    sync = cfg["patroni"]
    if sync["synchronous_mode"]:
        wanted = sync["synchronous_node_count"]
        rules.append(_alert(
            "PatroniNoSynchronousStandby",
            f'(count(patroni_sync_standby{{{patroni}}} == 1 or patroni_quorum_standby{{{patroni}}}'
            f' == 1) or vector(0)) < {wanted}',
            f"Fewer than {wanted} synchronous standby(s): "
            + ("writes wait" if sync["synchronous_mode_strict"] else
               "a commit is acknowledged by the leader alone"), severity="warning", for_="30s"))
    quorum = len(members) // 2 + 1
    rules += [
        _alert("EtcdNoQuorum", f'(sum(up{{job="etcd"}}) or vector(0)) < {quorum}',
               f"Fewer than {quorum} of the {len(members)} etcd members answer: the cluster "
               "cannot change its leader", for_="20s"),
        _alert("EtcdNoLeader", 'etcd_server_has_leader{job="etcd"} == 0',
               "{{ $labels.instance }}: its etcd member sees no leader", for_="30s"),
        _alert("EtcdMemberDown", 'up{job="etcd"} == 0',
               "{{ $labels.instance }}: its etcd member does not answer", severity="warning",
               for_="30s"),
    ]
    if cfg["pgbackrest"]["enabled"]:
        age = limits["archive_age"]
        rules += [
            _alert("PostgreSQLArchiveFailing",
                   'increase(pg_stat_archiver_failed_count{job="postgres"}[5m]) > 0',
                   "{{ $labels.instance }}: archiving WAL to the backup repositories fails "
                   "(pgbackrest's log on the member says why)", for_="1m"),
            # An idle leader writes no WAL and archives nothing, rightly: only WAL written
            # within the window and not archived in it is an alert. The WAL position is 0
            # while PostgreSQL restarts: a gap, not a counter reset (the subquery drops it).
            _alert("PostgreSQLArchiveStale",
                   f'pg_stat_archiver_last_archive_age{{job="postgres"}} > {age} and on(instance) '
                   f'increase((patroni_xlog_location{{{patroni}}} > 0)[{age}s:]) > 0',
                   "{{ $labels.instance }} last archived WAL {{ $value | humanizeDuration }} ago "
                   "while it writes WAL", for_="1m"),
        ]
    days = limits["certificate_days"]
    disk, memory = limits["disk_free_percent"], limits["memory_free_percent"]
    rules += [
        _alert("CertificateExpiring",
               f'pgcluster_certificate_not_after_seconds - time() < {days * 86400}',
               "{{ $labels.instance }}: {{ $labels.file }} ends in {{ $value | "
               "humanizeDuration }}", severity="warning"),
        _alert("DiskNearlyFull",
               '100 * node_filesystem_avail_bytes{fstype!~"tmpfs|ramfs|squashfs|nsfs|fuse.*"} '
               f'/ node_filesystem_size_bytes < {disk} and node_filesystem_readonly == 0',
               "{{ $labels.instance }}: {{ $labels.mountpoint }} has {{ $value | printf "
               "\"%.1f\" }}% free", severity="warning", for_="5m"),
        _alert("MemoryNearlyFull",
               '100 * node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes '
               f'< {memory}',
               "{{ $labels.instance }}: {{ $value | printf \"%.1f\" }}% of memory available",
               severity="warning", for_="5m"),
        _alert("HAProxyNoLeaderBackend",
               'haproxy_backend_active_servers{job="haproxy",proxy="primary"} < 1',
               f"{{{{ $labels.instance }}}}: HAProxy's port {cfg['haproxy']['primary_port']} "
               "has no healthy server: writes fail", for_="30s"),
        # The exporters answer even when what they watch does not: their own "up" says so.
        *([_alert("PgBouncerDown", 'pgbouncer_up{job="pgbouncer"} == 0',
                  "{{ $labels.instance }}: PgBouncer does not answer its exporter: the "
                  "connections through it fail", for_="30s")]
          if cfg["pgbouncer"]["enabled"] else []),
        _alert("PostgreSQLExporterCannotConnect",
               'pg_up{job="postgres"} == 0 and on(instance) '
               'patroni_postgres_running{job="patroni"} == 1',
               "{{ $labels.instance }}: PostgreSQL runs but its exporter cannot log in (role "
               f"{monitoring['postgres_role']}, peer): the archive alerts are blind",
               severity="warning", for_="1m"),
        _alert("ExporterDown", 'up{job!~"patroni|etcd"} == 0',
               "{{ $labels.instance }}: the {{ $labels.job }} exporter does not answer",
               severity="warning", for_="1m"),
    ]
    return {"groups": [{"name": "pgcluster", "rules": rules}]}
