"""
The cluster's backups, through pgBackRest: what the repositories hold, a backup now, and a
check that archiving works.

Works from the members and from the repository host (``pgcluster:pgbackrest:host``): a member
reads the posix repositories through the repository host's TLS server. A backup always runs
on the repository host (pgBackRest takes it there, copying from a standby); asked of another
minion, it is handed to the repository host through Salt's peer publishing (the master's
``peer`` setting allows ``pgbackrest.backup`` only).

CLI Example:

.. code-block:: bash

    salt web pgbackrest.info
    salt web pgbackrest.info --out=json
    salt postgres-srv2 pgbackrest.backup type=incr
    salt web pgbackrest.check
"""

from __future__ import annotations

import datetime
import json
import logging
import ssl
import time
import urllib.error
import urllib.request

import salt.utils.path
from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "pgbackrest"

BACKUP_TYPES = ("full", "diff", "incr")
# A backup of a large database takes long; the peer call waits for it this long at most.
BACKUP_TIMEOUT = 6 * 3600
INFO_TIMEOUT = 120
# pgBackRest's status codes that still mean "the stanza is there".
STANZA_PRESENT = (0, 2)  # ok, no valid backups


def __virtual__():
    if not salt.utils.path.which("pgbackrest"):
        return (False, "pgbackrest: the pgbackrest command is not installed (state pgbackrest)")
    return __virtualname__


def _config(fresh=False):
    cfg = __salt__["pgcluster.config"](fresh=fresh)
    if not cfg["pgbackrest"]["enabled"]:
        raise CommandExecutionError("backups are off (pillar pgcluster:pgbackrest:enabled)")
    return cfg


def _run(cfg, *args, timeout=INFO_TIMEOUT, check=True):
    """pgbackrest with the cluster's stanza, as the user it runs as; its output."""
    backup = cfg["pgbackrest"]
    cmd = ["pgbackrest", f"--stanza={backup['stanza']}", *args]
    ret = __salt__["cmd.run_all"](cmd, runas=backup["user"], python_shell=False,
                                  timeout=timeout, output_loglevel="debug")
    _own_retcode()
    if check and ret["retcode"] != 0:
        why = (ret["stderr"] or ret["stdout"]).strip().splitlines()
        raise CommandExecutionError(f"pgbackrest {' '.join(args)} failed (exit "
                                    f"{ret['retcode']}): {' '.join(why[-3:])}")
    return ret


def _own_retcode():
    # cmd.run_all marks the whole job failed when a command exits non-zero; these functions
    # read the exit themselves and raise when it is a failure.
    __context__["retcode"] = 0


def _raw_info(cfg):
    stanzas = json.loads(_run(cfg, "--output=json", "info")["stdout"] or "[]")
    if not stanzas:
        raise CommandExecutionError(f"pgbackrest info shows no stanza {cfg['pgbackrest']['stanza']}")
    return stanzas[0]


def _iso(epoch):
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat()


def stanza_ready():
    """
    True when the cluster's stanza exists in every repository (with or without backups).

    CLI Example:

    .. code-block:: bash

        salt web pgbackrest.stanza_ready
    """
    cfg = _config()
    try:
        info = _raw_info(cfg)
    except (CommandExecutionError, ValueError) as exc:
        log.debug("pgbackrest.stanza_ready: %s", exc)
        return False
    repos = info.get("repo") or []
    return len(repos) == len(cfg["pgbackrest"]["repositories"]) and all(
        repo.get("status", {}).get("code") in STANZA_PRESENT for repo in repos)


def has_backup(repo=1):
    """
    True when repository ``repo`` (pgBackRest's number, from 1) holds a backup.

    CLI Example:

    .. code-block:: bash

        salt web pgbackrest.has_backup repo=1
    """
    try:
        info = _raw_info(_config())
    except (CommandExecutionError, ValueError):
        return False
    return any(b.get("database", {}).get("repo-key") == int(repo) for b in info.get("backup") or [])


def _newest_segment_time(cfg, repo, archive):
    """When the newest archived segment was stored (its file's time in the repository)."""
    newest = archive.get("max")
    if not newest:
        return None
    folder = f"archive/{cfg['pgbackrest']['stanza']}/{archive['id']}/{newest[:16]}"
    ret = _run(cfg, f"--repo={repo}", "--output=json", "repo-ls", folder, check=False)
    try:
        listing = json.loads(ret["stdout"])
    except ValueError:
        return None
    times = [entry.get("time") for name, entry in listing.items() if name.startswith(newest)]
    return max((t for t in times if t is not None), default=None)


def info():
    """
    What the repositories hold: each backup (repository, label, type, start and stop time,
    database size, stored size, the WAL range it needs), and per repository its status, the
    oldest and newest archived WAL segment and the newest one's age in seconds. The
    recoverable range starts at the oldest backup's stop time.

    CLI Example:

    .. code-block:: bash

        salt web pgbackrest.info
        salt web pgbackrest.info --out=json
    """
    cfg = _config(fresh=True)
    raw = _raw_info(cfg)
    now = time.time()
    backups = []
    for b in raw.get("backup") or []:
        backups.append({
            "repo": b.get("database", {}).get("repo-key"),
            "label": b.get("label"),
            "type": b.get("type"),
            "start": _iso(b.get("timestamp", {}).get("start")),
            "stop": _iso(b.get("timestamp", {}).get("stop")),
            "size_bytes": b.get("info", {}).get("size"),
            "stored_bytes": b.get("info", {}).get("repository", {}).get("delta"),
            "wal_start": b.get("archive", {}).get("start"),
            "wal_stop": b.get("archive", {}).get("stop"),
            "error": bool(b.get("error")),
        })
    repositories = {}
    for repo in raw.get("repo") or []:
        key = repo.get("key")
        entry = {"status": repo.get("status", {}).get("message"), "cipher": repo.get("cipher"),
                 "backups": sum(1 for b in backups if b["repo"] == key),
                 "wal_oldest": None, "wal_newest": None, "wal_newest_stored": None,
                 "wal_newest_age_seconds": None}
        archives = [a for a in raw.get("archive") or [] if a.get("database", {}).get("repo-key") == key]
        if archives:
            archive = archives[-1]  # the current PostgreSQL version's
            entry["wal_oldest"], entry["wal_newest"] = archive.get("min"), archive.get("max")
            stored = _newest_segment_time(cfg, key, archive)
            if stored is not None:
                entry["wal_newest_stored"] = _iso(stored)
                entry["wal_newest_age_seconds"] = round(now - stored)
        repositories[key] = entry
    stops = [b["stop"] for b in backups if b["stop"] and not b["error"]]
    return {
        "stanza": raw.get("name"),
        "status": raw.get("status", {}).get("message"),
        "repositories": repositories,
        "backups": backups,
        "recoverable_from": min(stops) if stops else None,
    }


def _segment_number(name):
    # TTTTTTTTXXXXXXXXYYYYYYYY: 256 segments of 16 MB per XXXXXXXX.
    return int(name[8:16], 16) * 256 + int(name[16:24], 16)


def archive_lag(location, timeout=5):
    """
    How many completed WAL segments before the leader's position ``location`` (an LSN as a
    number, as Patroni's REST API gives it) are not yet in each repository; ``ok`` while no more
    than one is (the one being pushed). Raises when the repository does not answer within
    ``timeout`` seconds. ``patroni.health`` reports it.

    CLI Example:

    .. code-block:: bash

        salt web pgbackrest.archive_lag 352321536
    """
    cfg = _config()
    ret = _run(cfg, "--output=json", "info", timeout=int(timeout), check=False)
    if ret["retcode"] != 0:
        why = " ".join((ret["stderr"] or ret["stdout"] or "no answer").split())[:300]
        raise CommandExecutionError(f"the backup repository did not answer within {timeout} s: {why}")
    stanzas = json.loads(ret["stdout"] or "[]")
    current = int(location) >> 24
    repositories = {}
    for repo in (stanzas[0].get("repo") or []) if stanzas else []:
        key = repo.get("key")
        archives = [a for a in stanzas[0].get("archive") or []
                    if a.get("database", {}).get("repo-key") == key and a.get("max")]
        newest = archives[-1]["max"] if archives else None
        waiting = current - _segment_number(newest) - 1 if newest else None
        repositories[key] = {"newest": newest, "segments_waiting": waiting}
    ok = bool(repositories) and all(r["segments_waiting"] is not None and r["segments_waiting"] <= 1
                                    for r in repositories.values())
    return {"ok": ok, "repositories": repositories}


def backup(type="incr", repo=None, from_standby=True, timeout=BACKUP_TIMEOUT):
    """
    Take a backup now, of ``type`` full, diff or incr (an incr or diff with no full backup
    before it becomes a full one), into repository ``repo`` (default: the first). It runs on
    the repository host whichever minion is asked; it waits for a scheduled backup that is
    running to finish first. It copies from a standby unless ``from_standby=False`` (a cluster
    with no replica yet, as orch.restore has). Returns the new backup's label, type,
    repository and duration.

    CLI Example:

    .. code-block:: bash

        salt web pgbackrest.backup type=full
        salt postgres-srv2 pgbackrest.backup type=incr repo=2
    """
    if type not in BACKUP_TYPES:
        raise CommandExecutionError(f"type {type!r}: one of {', '.join(BACKUP_TYPES)}")
    cfg = _config(fresh=True)
    backup_ = cfg["pgbackrest"]
    repo = int(repo or 1)
    if not 1 <= repo <= len(backup_["repositories"]):
        raise CommandExecutionError(f"repo {repo}: the cluster has repositories 1 to "
                                    f"{len(backup_['repositories'])}")
    host = backup_["host"]
    if __opts__["id"] != host:
        answers = __salt__["publish.publish"](host, "pgbackrest.backup",
                                              [type, repo, bool(from_standby)],
                                              timeout=int(timeout))
        if host not in (answers or {}):
            raise CommandExecutionError(
                f"the repository host {host} did not answer within {timeout} s (is it up, and "
                "does the master's peer setting allow pgbackrest.backup?)")
        answer = answers[host]
        if not isinstance(answer, dict):  # the repository host's error, as text
            raise CommandExecutionError(f"on {host}: {answer}")
        return answer
    before = {b["label"] for b in info()["backups"]}
    started = time.monotonic()
    lock = f"{backup_['spool_path']}/backup.lock"
    ret = __salt__["cmd.run_all"](
        ["flock", lock, "pgbackrest", f"--stanza={backup_['stanza']}", f"--repo={repo}",
         f"--type={type}", *([] if _truthy(from_standby) else ["--no-backup-standby"]),
         "backup"], runas=backup_["user"], python_shell=False,
        timeout=int(timeout), output_loglevel="debug")
    took = round(time.monotonic() - started, 1)
    if ret["retcode"] != 0:
        why = (ret["stderr"] or ret["stdout"]).strip().splitlines()
        raise CommandExecutionError(f"pgbackrest backup failed on {host} (exit {ret['retcode']}): "
                                    f"{' '.join(why[-3:])}")
    made = [b for b in info()["backups"] if b["label"] not in before and b["repo"] == repo]
    if not made:
        raise CommandExecutionError(f"pgbackrest backup ended well on {host} but repository "
                                    f"{repo} shows no new backup")
    return {"host": host, "repo": repo, "label": made[-1]["label"], "type": made[-1]["type"],
            "seconds": took, "size_bytes": made[-1]["size_bytes"],
            "stored_bytes": made[-1]["stored_bytes"]}


def _truthy(value):
    return str(value).lower() not in ("false", "0", "no", "off", "none")


def check():
    """
    pgBackRest's own check: the configuration, and that the leader's WAL reaches every
    repository (it switches to a new segment and waits for it to be archived). Returns
    ``{"ok": True}`` or raises with pgBackRest's message.

    CLI Example:

    .. code-block:: bash

        salt web pgbackrest.check
    """
    cfg = _config(fresh=True)
    _run(cfg, "check", timeout=INFO_TIMEOUT)
    return {"ok": True, "stanza": cfg["pgbackrest"]["stanza"]}


# --- Restore (orch.restore): each step a function, run where it acts -------------------------

def _parse_target(target):
    """("latest", None) or ("time", aware datetime); a bad target raises, saying what to give."""
    usage = ("pillar restore:target: give a time with its zone (ISO 8601, e.g. "
             "2026-12-01T21:00:00+00:00) or latest")
    if target is None or str(target).strip() == "":
        raise CommandExecutionError(f"no restore target given: {usage}")
    text = str(target).strip()
    if text == "latest":
        return "latest", None
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise CommandExecutionError(f"restore target {text!r} is not a time: {usage}") from None
    if when.tzinfo is None:
        raise CommandExecutionError(f"restore target {text!r} has no zone: {usage}")
    return "time", when.astimezone(datetime.UTC)


def _parse_repo(repo, known):
    """None (pgBackRest picks: the first repository holding a backup for the target) or the
    number of a repository the cluster has."""
    if repo is None or str(repo).strip() == "":
        return None
    have = sorted(known["repositories"])
    try:
        number = int(str(repo).strip())
    except ValueError:
        number = None
    if number not in have:
        raise CommandExecutionError(
            f"pillar restore:repo: {repo!r} is not one of the cluster's repositories "
            f"({', '.join(map(str, have))}; pgcluster:pgbackrest:repositories in order)")
    return number


def restore_check(target=None, repo=None):
    """
    Whether the cluster can be restored to ``target`` (a time with its zone, or ``latest``),
    changing nothing: the repository must answer and hold a backup that ended before the
    target, and the target must not lie in the future. ``repo``: restore from that repository
    (1, 2, ... in pillar order; by default pgBackRest takes the first that holds a backup for
    the target). Returns what the restore will do; raises with the reason otherwise
    (``orch.restore`` stops there).

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 pgbackrest.restore_check target=2026-12-01T21:00:00+00:00
        salt postgres-srv1 pgbackrest.restore_check target=latest repo=2
    """
    kind, when = _parse_target(target)
    now = datetime.datetime.now(datetime.UTC)
    if when is not None and when > now:
        raise CommandExecutionError(
            f"restore target {when.isoformat()} is in the future (now {now.isoformat(timespec='seconds')})")
    try:
        known = info()
    except CommandExecutionError as exc:
        raise CommandExecutionError(f"the backup repository cannot be read: {exc}") from None
    number = _parse_repo(repo, known)
    broken = {n: r["status"] for n, r in known["repositories"].items()
              if r["status"] != "ok" and number in (None, n)}
    if (known["status"] != "ok" and number is None) or broken:
        raise CommandExecutionError(
            f"the backup repository cannot be read: stanza {known['stanza']}: {known['status']}"
            + "".join(f"; repo{n}: {s}" for n, s in broken.items()))
    stops = [b["stop"] for b in known["backups"]
             if b["stop"] and not b["error"] and number in (None, b["repo"])]
    oldest = min(stops) if stops else None
    where = "the repository" if number is None else f"repo{number}"
    if oldest is None:
        raise CommandExecutionError(f"{where} holds no backup to restore from")
    if when is not None and when < datetime.datetime.fromisoformat(oldest):
        raise CommandExecutionError(
            f"restore target {when.isoformat()} is before the oldest backup in {where}, which "
            f"ends at {oldest}: the cluster can be restored to {oldest} or later")
    plan = {"target": "latest" if when is None else when.isoformat(), "type": kind,
            "repo": number, "recoverable_from": oldest, "stanza": known["stanza"]}
    # PostgreSQL ends a recovery to a time with an error when the archived WAL stops before
    # it. Archived after the target, the newest segment holds what follows it (flush_archive
    # commits before it closes the leader's segment); archived before, nothing was written
    # between the archive's end and the target: the cluster at the target is the archive's end.
    stored = [r["wal_newest_stored"] for n, r in known["repositories"].items()
              if r["wal_newest_stored"] and number in (None, n)]
    if when is not None and stored and when >= datetime.datetime.fromisoformat(max(stored)):
        plan.update(type="latest", why=f"nothing was archived after {max(stored)}: the "
                    f"cluster at {when.isoformat()} is the archive's end")
    return plan


def _psql(cfg, sql, timeout=60):
    pg = cfg["postgresql"]
    ret = __salt__["cmd.run_all"](
        ["psql", "-X", "-At", "-p", str(pg["port"]), "-d", "postgres", "-c", sql],
        runas="postgres", python_shell=False, timeout=timeout, output_loglevel="debug")
    _own_retcode()
    return ret


def flush_archive(timeout=120):
    """
    On the member that leads (any other answers that it does not): close the current WAL
    segment and wait until it is archived, so that every write acknowledged until now can be
    restored. Returns the segment, or why nothing was done.

    CLI Example:

    .. code-block:: bash

        salt -L postgres-srv1,postgres-srv2,postgres-srv3 pgbackrest.flush_archive
    """
    cfg = _config()
    ret = _psql(cfg, "SELECT pg_is_in_recovery()")
    if ret["retcode"] != 0:
        return {"flushed": False, "why": "PostgreSQL does not run here"}
    if ret["stdout"].strip() != "f":
        return {"flushed": False, "why": "not the leader"}
    # A commit stamped now ends a point-in-time recovery to any time until now: PostgreSQL
    # stops at the first commit after its target and fails when the archived WAL ends before
    # one (an idle cluster's last segment may hold none).
    ret = _psql(cfg, "SET synchronous_commit TO local; SELECT txid_current()")
    if ret["retcode"] != 0:
        raise CommandExecutionError(f"a commit on the leader failed: {ret['stderr'].strip()}")
    ret = _psql(cfg, "SELECT pg_walfile_name(pg_switch_wal())")
    if ret["retcode"] != 0:
        raise CommandExecutionError(f"pg_switch_wal failed: {ret['stderr'].strip()}")
    segment = ret["stdout"].strip()
    deadline = time.monotonic() + float(timeout)
    while time.monotonic() < deadline:
        done = _psql(cfg, "SELECT last_archived_wal FROM pg_stat_archiver")["stdout"].strip()
        if done and done >= segment:
            return {"flushed": True, "segment": segment}
        time.sleep(0.5)
    raise CommandExecutionError(f"WAL segment {segment} was not archived within {timeout} s: "
                                "the archive is failing (pgbackrest.check says why)")


def _restore_failure(log_text):
    """PostgreSQL's and pgBackRest's own words for a failed bootstrap, newest last."""
    reasons = []
    for line in log_text.splitlines():
        if "FATAL:" in line or "ERROR:" in line:
            reason = line.split("FATAL:", 1)[-1] if "FATAL:" in line else line.split("ERROR:", 1)[-1]
            reason = reason.strip()
            # Clients turned away while it starts or stops say nothing about why it failed.
            if reason.startswith("the database system is"):
                continue
            if reason and reason not in reasons:
                reasons.append(reason)
    return "; ".join(reasons[-3:]) or "see journalctl -u patroni"


# PostgreSQL's words when the archived WAL ends before a time target: everything archived was
# committed before the target, so the cluster at the target is the archive's end.
TARGET_AFTER_ARCHIVE = "recovery ended before configured recovery target was reached"


def _restore_again_to_the_end(cfg, service, repo):
    """After a recovery that ran out of archive before its time target: the failed attempt's
    data set aside, the bootstrap rendered again for the archive's end, Patroni started."""
    data = cfg["postgresql"]["data_dir"]
    __salt__["service.stop"](service)
    # An attempt stopped midway may have left its initialize key: the next one must bootstrap.
    __salt__["etcd_cluster.remove_patroni_keys"]()
    if __salt__["file.directory_exists"](data):
        failed = f"{data}.failed"
        if __salt__["file.directory_exists"](failed):
            __salt__["file.remove"](failed)
        __salt__["file.rename"](data, failed)
    ret = __salt__["state.sls"]("patroni", pillar={"restore": {"target": "latest",
                                                               "repo": repo or ""}})
    failed_states = [v.get("comment") for v in (ret or {}).values()
                     if isinstance(v, dict) and v.get("result") is False]
    if not isinstance(ret, dict) or failed_states:
        raise CommandExecutionError(f"the restore to the archive's end could not start: "
                                    f"{failed_states or ret}")


def wait_restored(since, timeout=3600, target=None, repo=None):
    """
    On the member that ``orch.restore`` bootstraps from the backups: wait until Patroni leads
    with the restored data, recovered and promoted (its REST API's /primary answers 200), or,
    when the bootstrap failed, stop Patroni (it would try again and again) and raise with
    PostgreSQL's and pgBackRest's own reasons. ``since``: when the restore began (a journal
    time). When the recovery to the time ``target`` ran out of archived WAL before it
    (nothing was committed after it: a total loss on an idle cluster), the cluster at the
    target is the archive's end, and the member is restored to that instead.

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 pgbackrest.wait_restored since=@1764687118 timeout=3600
    """
    cfg = _config()
    service = cfg["patroni"]["service"]
    url = f"{cfg['patroni']['urls'][__opts__['id']]}/primary"
    tls = ssl.create_default_context(cafile=cfg["tls"]["ca_file"]) if cfg["patroni"]["tls"] else None
    started = time.monotonic()
    to = "latest" if str(target or "latest") == "latest" else "target"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5, context=tls) as reply:
                if reply.status == 200:
                    return {"restored": True, "to": to,
                            "seconds": round(time.monotonic() - started, 1)}
        except (urllib.error.URLError, OSError):
            pass
        journal = __salt__["cmd.run_all"](
            ["journalctl", "-u", service, "--since", str(since), "--utc", "--no-pager", "-o",
             "cat"], python_shell=False, output_loglevel="debug")["stdout"]
        _own_retcode()
        if "Failed to bootstrap cluster" in journal and to == "target" and \
                TARGET_AFTER_ARCHIVE in journal:
            log.warning("pgbackrest: nothing archived after %s was committed; restoring %s to "
                        "the archive's end", target, __opts__["id"])
            _restore_again_to_the_end(cfg, service, repo)
            to, since = "latest (nothing was committed after the target)", f"@{int(time.time())}"
            continue
        if "Failed to bootstrap cluster" in journal:
            __salt__["service.stop"](service)
            raise CommandExecutionError(
                f"the restore failed on {__opts__['id']}: {_restore_failure(journal)}. Patroni "
                f"is stopped there; the data directories as they were are in "
                f"{cfg['postgresql']['data_dir']}.before-restore on every member")
        if time.monotonic() - started > float(timeout):
            raise CommandExecutionError(
                f"{__opts__['id']} was not restored within {timeout} s (journalctl -u {service} "
                "there says how far it is)")
        time.sleep(2)


def set_aside_data():
    """
    Move this member's data directory aside (to ``<data_dir>.before-restore``, replacing an
    earlier one), so that Patroni bootstraps it anew; nothing is deleted. Patroni must be
    stopped. Returns where it went, or that there was none.

    CLI Example:

    .. code-block:: bash

        salt postgres-srv2 pgbackrest.set_aside_data
    """
    cfg = _config()
    data = cfg["postgresql"]["data_dir"]
    aside = f"{data}.before-restore"
    if __salt__["service.status"](cfg["patroni"]["service"]):
        raise CommandExecutionError(f"Patroni runs on {__opts__['id']}: stop it first")
    if not __salt__["file.directory_exists"](data):
        return {"moved": False, "data_dir": data}
    if __salt__["file.directory_exists"](aside):
        __salt__["file.remove"](aside)
    __salt__["file.rename"](data, aside)
    return {"moved": True, "data_dir": data, "to": aside}


def clear_restore_settings():
    """
    On the restored leader: remove the recovery target pgBackRest's restore wrote into
    ``postgresql.auto.conf``, which would otherwise stop this member's replay at that target
    again whenever it runs as a replica later.

    CLI Example:

    .. code-block:: bash

        salt postgres-srv1 pgbackrest.clear_restore_settings
    """
    cfg = _config()
    names = ("restore_command", "recovery_target_time", "recovery_target_action",
             "recovery_target", "recovery_target_timeline")
    for name in names:
        ret = _psql(cfg, f"ALTER SYSTEM RESET {name}")
        if ret["retcode"] != 0:
            raise CommandExecutionError(f"ALTER SYSTEM RESET {name} failed: {ret['stderr'].strip()}")
    _psql(cfg, "SELECT pg_reload_conf()")
    return {"reset": list(names)}
