"""orch.restore on the live cluster: a point-in-time restore after a mistake, a restore after
every member's data is lost, and each refusal, which changes nothing. Every message is written
through the web app; what is back is read on the restored leader itself."""

from __future__ import annotations

import datetime
import json
import time
import urllib.error
import urllib.request
import uuid

import pytest

from lab.cluster import cluster, leader, on_web, salt
from lab.workload import wait_healthy
from tests.conftest import VENV_BIN, run
from tests.lab.conftest import lab_exec

C = cluster()
MEMBERS = list(C.members)
DB = C.app["database"]
PATRONI = C.model["patroni"]["service"]
ARCHIVE_TIMEOUT = C.backup["archive_timeout"]
# Object storage, when the cluster has it, is the copy that outlives the repository host.
OFF_HOST_REPO = next((n for n, r in enumerate(C.backup["repositories"], 1) if r["type"] == "s3"),
                     None)


@pytest.fixture
def healthy_cluster(lab):
    return wait_healthy()


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def post(text: str) -> int:
    req = urllib.request.Request(C.url + "/api/messages", json.dumps({"text": text}).encode(),
                                 {"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as answer:
        assert answer.status == 201
        return json.loads(answer.read())["id"]


def write(n: int, tag: str) -> list[int]:
    return [post(f"{tag} {i}") for i in range(n)]


def ids_on_leader() -> set[int]:
    out = lab_exec(leader(), "runuser", "-u", "postgres", "--", "psql", "-X", "-At", "-d", DB,
                   "-c", "SELECT id FROM messages").stdout
    return {int(line) for line in out.split()}


def restore(target: str | None, check: bool = True, repo: int | None = None):
    args = [VENV_BIN / "salt-run", "state.orchestrate", "orch.restore"]
    if target is not None:
        asked = {"target": target, **({"repo": repo} if repo else {})}
        args.append("pillar=" + json.dumps({"restore": asked}))
    out = run(*args, check=False, timeout=1800)
    if check:
        assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    return out


def listing() -> dict:
    return on_web("patroni.list")


def timeline() -> int:
    return max(m["timeline"] or 0 for m in listing()["members"])


def lose_every_member() -> None:
    """Every member's PostgreSQL killed, then its data directory removed: the disks go at
    once, with no clean shutdown (which would archive the last segment)."""
    for member in MEMBERS:
        lab_exec(member, "systemctl", "kill", "--signal=SIGKILL", PATRONI)
        lab_exec(member, "systemctl", "stop", PATRONI)
    for member in MEMBERS:
        lab_exec(member, "sh", "-c", f"rm -rf {C.model['postgresql']['data_dir']}")


def assert_restored_cluster(before_timeline: int) -> None:
    rows = wait_healthy()["members"]
    roles = sorted(m["role"] for m in rows)
    assert roles.count("Leader") == 1 and len(rows) == len(MEMBERS), rows
    assert all(m["state"] == "streaming" for m in rows if m["role"] != "Leader"), rows
    assert max(m["timeline"] for m in rows) > before_timeline, rows
    # The web app takes writes again.
    deadline = time.monotonic() + 60
    while True:
        try:
            post("after the restore")
            break
        except (urllib.error.URLError, AssertionError):
            assert time.monotonic() < deadline, "the web app takes no write after the restore"
            time.sleep(1)


@pytest.mark.disruptive
def test_a_mistake_is_undone_by_a_restore_to_the_second_before_it(healthy_cluster):
    tag = f"drill {uuid.uuid4().hex[:8]}"
    first = write(5, tag)
    made = salt(leader(), "pgbackrest.backup", "type=incr", timeout=600, check=True)
    assert made and all(isinstance(v, dict) and v.get("label") for v in made.values()), made
    second = write(5, tag)
    time.sleep(1)
    target = now().isoformat()
    time.sleep(1)
    after = write(5, tag)
    lab_exec(leader(), "runuser", "-u", "postgres", "--", "psql", "-X", "-d", DB,
             "-c", "DELETE FROM messages")
    assert not ids_on_leader()
    before_timeline = timeline()

    restore(target)

    assert_restored_cluster(before_timeline)
    back = ids_on_leader()
    assert set(first + second) <= back, sorted(set(first + second) - back)
    assert not set(after) & back, sorted(set(after) & back)


@pytest.mark.disruptive
def test_the_cluster_comes_back_after_every_members_data_is_lost(healthy_cluster):
    tag = f"loss {uuid.uuid4().hex[:8]}"
    acked: list[tuple[float, int]] = []
    # Writes for longer than archive_timeout, so that some are older than it at the loss.
    until = time.monotonic() + ARCHIVE_TIMEOUT + 15
    while time.monotonic() < until:
        acked.append((time.time(), post(tag)))
        time.sleep(0.2)
    loss = time.time()
    before_timeline = timeline()
    lose_every_member()

    restore("latest", repo=OFF_HOST_REPO)

    assert_restored_cluster(before_timeline)
    back = ids_on_leader()
    old_enough = {i for t, i in acked if t < loss - ARCHIVE_TIMEOUT}
    assert old_enough and old_enough <= back, sorted(old_enough - back)
    lost = [i for _, i in acked if i not in back]
    print(f"\ntotal loss: {len(acked)} messages acknowledged in the last "
          f"{ARCHIVE_TIMEOUT + 15} s before it, {len(lost)} lost (archive_timeout "
          f"{ARCHIVE_TIMEOUT} s); every one older than archive_timeout came back "
          f"(from repo{OFF_HOST_REPO or 1})")


@pytest.mark.disruptive
def test_a_time_after_the_last_archived_commit_restores_the_archives_end(healthy_cluster):
    """Every member lost, then a restore to a moment after the last write but before the
    archive's last segment was stored (archive_timeout closed it later): PostgreSQL's recovery
    to that time runs out of WAL without meeting a later commit, so the cluster at that moment
    is the archive's end, and that is what comes back (pgbackrest.wait_restored restores again
    to it)."""
    tag = f"end {uuid.uuid4().hex[:8]}"
    written = write(5, tag)
    time.sleep(1)
    target = now().isoformat()
    # archive_timeout closes the segment that holds them, and it is archived after the target.
    time.sleep(ARCHIVE_TIMEOUT + 10)
    before_timeline = timeline()
    lose_every_member()

    out = restore(target)

    assert "nothing was committed after the target" in out.stdout, out.stdout[-4000:]
    assert_restored_cluster(before_timeline)
    assert set(written) <= ids_on_leader()


def _unchanged_after(target: str | None, says: str, repo: int | None = None) -> None:
    before = listing()
    out = restore(target, check=False, repo=repo)
    text = out.stdout + out.stderr
    assert out.returncode != 0, text[-4000:]
    assert says in text, text[-4000:]
    after = listing()
    assert [(m["name"], m["role"], m["timeline"]) for m in after["members"]] == \
        [(m["name"], m["role"], m["timeline"]) for m in before["members"]]
    assert all(m["state"] in ("running", "streaming") for m in after["members"])


def test_a_restore_without_a_target_is_refused(healthy_cluster):
    _unchanged_after(None, "no restore target given")


def test_a_restore_to_the_future_is_refused(healthy_cluster):
    _unchanged_after((now() + datetime.timedelta(hours=1)).isoformat(), "is in the future")


def test_a_restore_to_before_the_oldest_backup_is_refused(healthy_cluster):
    oldest = on_web("pgbackrest.info")["recoverable_from"]
    target = (datetime.datetime.fromisoformat(oldest) - datetime.timedelta(hours=1)).isoformat()
    _unchanged_after(target, "is before the oldest backup")


def test_a_restore_from_a_repository_the_cluster_does_not_have_is_refused(healthy_cluster):
    _unchanged_after("latest", "is not one of the cluster's repositories", repo=9)


def test_a_restore_from_a_repository_that_cannot_be_read_is_refused(healthy_cluster):
    host, service = C.backup["host"], C.backup["service"]
    lab_exec(host, "systemctl", "stop", service)
    try:
        _unchanged_after("latest", "the backup repository cannot be read")
    finally:
        lab_exec(host, "systemctl", "start", service)
