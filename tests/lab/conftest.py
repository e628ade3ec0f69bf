"""The lab, brought up once for the whole run and taken down at the end, even on failure."""

from __future__ import annotations

import os

import pytest

from lab.workload import wait_healthy  # noqa: F401 - the lab tests' health wait
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

