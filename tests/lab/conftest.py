"""The lab, brought up once for the whole run and taken down at the end, even on failure."""

from __future__ import annotations

import os
import time

import pytest

from lab.cluster import cluster, credentials, leader
from lab.workload import Writer, ensure_table, rows_on, wait_healthy
from tests.conftest import REPO, run

LAB = REPO / "bin" / "lab"
# What bin/deploy printed when the session's lab was deployed.
DEPLOY: dict = {}


@pytest.fixture(scope="session")
def lab():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    if os.environ.get("PGLAB_REUSE") == "1":
        # For a developer iterating on tests: use the lab and cluster as they stand.
        DEPLOY.update(output=run(REPO / "bin" / "deploy", timeout=1800).stdout)
        yield LAB
        return
    # Start from nothing, as a newcomer's `make lab` does (bin/lab up, then bin/deploy); this
    # also clears whatever a killed run left.
    run(LAB, "down", timeout=300)
    run(LAB, "up", timeout=1800)
    DEPLOY.update(output=run(REPO / "bin" / "deploy", timeout=1800).stdout)
    yield LAB
    run(LAB, "down", check=False, timeout=300)


def lab_exec(host: str, *cmd: str, check: bool = True, timeout: float = 120):
    return run(LAB, "exec", host, "--", *cmd, check=check, timeout=timeout)



def started_at() -> dict[str, str]:
    """When each of the pillar's members' PostgreSQL started (a restart changes it)."""
    return {m: lab_exec(m, "runuser", "-u", "postgres", "--", "psql", "-XAtc",
                        "select pg_postmaster_start_time()").stdout.strip()
            for m in cluster().members}


@pytest.fixture
def writer(lab):
    """The fault tests' writer through HAProxy's primary port, for the whole test; at the end,
    every write it got acknowledged is on the leader."""
    password = credentials()["app"]
    wait_healthy(240, settled=True)
    ensure_table(password)
    w = Writer(password, f"members-{time.time_ns()}")
    w.start()
    time.sleep(2)
    yield w
    w.stop.set()
    w.join()
    assert w.acked, "the writer never got a write through"
    wait_healthy(300)
    lost = w.acked - rows_on(leader(), w.tag)
    print(f"\nwriter: {len(w.acked)} writes acknowledged, longest gap {w.longest_gap(0):.2f} s, "
          f"{len(lost)} lost")
    assert not lost, f"{len(lost)} acknowledged writes lost"
