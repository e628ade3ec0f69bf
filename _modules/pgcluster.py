"""
The cluster as this minion's states see it: every component's defaults
(``salt/<component>/defaults.yaml``, brought by the ext_pillar ``pgcluster_defaults``) with the
``pgcluster`` pillar over them, checked, and what each host renders from it (Patroni's
configuration, pg_hba, the firewall's rules).

The model itself is ``_utils/pgcluster_model.py`` and the renderers ``_utils/pgcluster_render.py``,
both pure; this module hands them the pillar (a ``pillar=`` override on the command line
included) and the facts of this minion (its id, its credentials, its salt-master's address). Each component's
``map.jinja`` starts from ``pgcluster.config``, so a bad pillar fails the first state that
renders, with a message that names the key.

CLI Example:

.. code-block:: bash

    salt postgres-srv1 pgcluster.config
    salt-call --local --id postgres-srv1 pgcluster.config \\
        pillar='{"pgcluster": {"patroni": {"ttl": 10}}}'
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "pgcluster"
REDACTED = "**********"


def __virtual__():
    if "pgcluster_model.build" not in __utils__:
        return (False, "pgcluster: the utils pgcluster_model and pgcluster_render are not synced "
                       "(salt '*' saltutil.sync_all)")
    return __virtualname__


def _pillar(fresh, override=None):
    """
    The pillar to model the cluster from. A state run's own (``pillar.get``: compiled for the
    run, with a ``pillar=`` override), or with ``fresh`` the master's as it is now: an operator's
    call must not work from the copy the minion daemon keeps, which may hold a mistake fixed on
    the master since; ``override`` goes over it, as ``state.apply pillar=`` would. Fetched once
    per job and override (a job runs in a process of its own).
    """
    if not fresh:
        # Salt 3008 masks pillar values that leave pillar.get outside a template: ask plainly.
        return {key: __salt__["pillar.get"](key, None, unmask=True)
                for key in ("pgcluster", "pgcluster_defaults")}
    key = f"pgcluster.fresh_pillar:{json.dumps(override, sort_keys=True)}"
    if key not in __context__:
        __context__[key] = __salt__["pillar.items"](unmask=True, **(
            {"pillar": override} if override else {}))
    return __context__[key]


def config(fresh=False, pillar=None):
    """
    The cluster: pillar ``pgcluster`` over every component's defaults, checked, with the
    derived values (``member_names``, ``web_names``, ``bootstrap_member``, ``backend_port``,
    ``etcd:initial_cluster``, ``etcd:endpoints``). A bad pillar raises an error naming the key.
    With ``fresh=True`` the pillar is asked of the master now, not taken from the minion's copy
    (what the operations modules do), with ``pillar`` (a dict) over it.

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 pgcluster.config
        salt web pgcluster.config fresh=True
    """
    pillar = _pillar(fresh, pillar)
    defaults = pillar.get("pgcluster_defaults")
    pillar = pillar.get("pgcluster")
    if pillar is None:
        raise CommandExecutionError(
            "pillar pgcluster is missing for this minion: pillar/top.sls gives pillar/cluster.sls "
            "to every minion")
    if not defaults:
        raise CommandExecutionError(
            "pillar pgcluster_defaults is missing for this minion: the master's ext_pillar "
            "pgcluster_defaults gives it (etc/salt/master)")
    try:
        return __utils__["pgcluster_model.build"](
            pillar, __utils__["pgcluster_model.merge_defaults"](defaults))
    except ValueError as exc:  # PillarError, or a broken defaults.yaml
        raise CommandExecutionError(str(exc)) from None


def own_address():
    """
    The address the pillar gives this host, and the pillar key it comes from:
    ``{"address": "10.0.0.11", "key": "pgcluster:members:postgres-srv1:address"}``. A host that
    is neither a member nor a web host is refused, naming both lists.

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 pgcluster.own_address
    """
    cfg = config()
    me = __opts__["id"]
    for section in ("members", "web"):
        if me in cfg[section]:
            return {"address": cfg[section][me]["address"], "key": f"pgcluster:{section}:{me}:address"}
    raise CommandExecutionError(
        f"{me} is in neither pillar pgcluster:members ({', '.join(cfg['member_names'])}) nor "
        f"pgcluster:web ({', '.join(cfg['web_names'])})")


def _member(cfg, minion_id):
    minion_id = minion_id or __opts__["id"]
    if minion_id not in cfg["members"]:
        raise CommandExecutionError(
            f"{minion_id} is not in pillar pgcluster:members ({', '.join(cfg['member_names'])})")
    return minion_id


def _credentials():
    """This minion's share of the generated passwords (pillar ``pgcluster_credentials``)."""
    creds = __salt__["pillar.get"]("pgcluster_credentials", {}, unmask=True)
    if not creds:
        raise CommandExecutionError(
            "pillar pgcluster_credentials is empty for this minion: the master's ext_pillar "
            "pgcluster_credentials makes it for the minions in pgcluster:members and pgcluster:web")
    return dict(creds)


def _master_addresses():
    """The salt-master's IPv4 addresses, as this minion is configured to reach it."""
    if __opts__.get("file_client") == "local":
        return []  # masterless (rendering offline): no master to let in
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


def dcs_config():
    """
    The cluster-wide part of Patroni's configuration, kept in etcd (``patronictl show-config``):
    bootstrapped from here, and kept in line with the pillar by the ``patroni_dcs.managed`` state.

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 pgcluster.dcs_config
    """
    return __utils__["pgcluster_render.dcs_config"](config())


def patroni_config(minion_id=None, show_secrets=False):
    """
    The Patroni configuration (``/etc/patroni/config.yml``) of one database member. Passwords
    show as ``**********`` unless ``show_secrets=True`` (what the config template asks for).

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 pgcluster.patroni_config
    """
    cfg = config()
    member = _member(cfg, minion_id)
    creds = _credentials()
    if not show_secrets:
        creds = dict.fromkeys(creds, REDACTED)
    admins = __utils__["pgcluster_render.admin_networks"](cfg, _master_addresses())
    # Only while orch.restore bootstraps this member from the backups: to the target, or to
    # the archive's end when nothing was archived after it (pgbackrest.restore_check).
    restore = __salt__["pillar.get"]("restore", None)
    if isinstance(restore, dict) and restore.get("target"):
        plan = __salt__["pgbackrest.restore_check"](restore["target"], restore.get("repo"))
        restore = {"target": plan["target"] if plan["type"] == "time" else "latest",
                   "repo": plan["repo"]}
    else:
        restore = None
    return __utils__["pgcluster_render.patroni_config"](cfg, member, creds, admins, restore)


def firewall(minion_id=None):
    """
    The ports this host opens and to whom, for its nftables ruleset (see
    ``pgcluster_render.firewall_rules``).

    CLI Example:

    .. code-block:: bash

        salt web pgcluster.firewall
    """
    ports = [int(__opts__.get("publish_port", 4505)), int(__opts__.get("master_port", 4506))]
    return __utils__["pgcluster_render.firewall_rules"](
        config(), minion_id or __opts__["id"], _master_addresses(), ports)


def pgbackrest_config(minion_id=None, show_secrets=False):
    """
    pgBackRest's configuration (``/etc/pgbackrest.conf``) of a member or of the repository
    host, as INI text. The repository passphrase and object storage keys show as
    ``**********`` unless ``show_secrets=True`` (what the config template asks for).

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 pgcluster.pgbackrest_config
        salt web pgcluster.pgbackrest_config
    """
    cfg = config()
    host = minion_id or __opts__["id"]
    if host not in cfg["members"] and host != cfg["pgbackrest"]["host"]:
        raise CommandExecutionError(
            f"{host} is neither a member nor the repository host ({cfg['pgbackrest']['host']}): "
            "it has no pgBackRest configuration")
    creds = _credentials()
    cipher = creds.get("pgbackrest_cipher", "")
    s3_keys = {int(number): keys for number, keys in (creds.get("s3") or {}).items()}
    if not show_secrets:
        cipher = REDACTED
        s3_keys = {n: dict.fromkeys(keys, REDACTED) for n, keys in s3_keys.items()}
    render = __utils__["pgcluster_render.pgbackrest_config"]
    return __utils__["pgcluster_render.ini"](render(cfg, host, cipher, s3_keys))


def webapp_config(show_secrets=False):
    """
    The web app's configuration (``/etc/webapp/config.json`` on the web hosts): its writer and
    reader connections by pillar ``pgcluster:webapp:data_path`` (HAProxy's ports, or libpq's
    multi-host strings to the members), Patroni's and Prometheus's URLs. The password and the
    form tokens' key show as ``**********`` unless ``show_secrets=True`` (what the config
    template asks for).

    CLI Example:

    .. code-block:: bash

        salt web pgcluster.webapp_config
    """
    creds = _credentials()
    if not show_secrets:
        creds = dict.fromkeys(creds, REDACTED)
    return __utils__["pgcluster_render.webapp_config"](config(), creds)


def prometheus_config():
    """
    Prometheus's configuration (``/etc/prometheus/prometheus.yml`` on the Prometheus host): a
    scrape job per component, its targets from the cluster model.

    CLI Example:

    .. code-block:: bash

        salt web pgcluster.prometheus_config
    """
    return __utils__["pgcluster_render.prometheus_config"](config())


def alert_rules():
    """
    The alert rules (``/etc/prometheus/rules/pgcluster.yml``), their thresholds from pillar
    ``pgcluster:monitoring:alerts``.

    CLI Example:

    .. code-block:: bash

        salt web pgcluster.alert_rules
    """
    return __utils__["pgcluster_render.alert_rules"](config())


def alertmanager_config(show_secrets=False):
    """
    Alertmanager's configuration (``/etc/prometheus/alertmanager.yml``): the receivers of
    pillar ``pgcluster:monitoring:receivers``. The SMTP password shows as ``**********``
    unless ``show_secrets=True`` (what the config template asks for).

    CLI Example:

    .. code-block:: bash

        salt web pgcluster.alertmanager_config
    """
    cfg = config()
    email = cfg["monitoring"]["receivers"]["email"]
    password = None
    if email and email["auth_password_file"]:
        password = _credentials().get("smtp_password")
        if password is None:
            raise CommandExecutionError(
                f"{__opts__['id']} has no SMTP password in pillar pgcluster_credentials: only "
                f"the Prometheus host ({cfg['monitoring']['host']}) gets it")
        password = password if show_secrets else REDACTED
    return __utils__["pgcluster_render.alertmanager_config"](cfg, password)
