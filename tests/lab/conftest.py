"""The lab, brought up once for the whole run and taken down at the end, even on failure."""

from __future__ import annotations

import os

import pytest

from tests.conftest import REPO, run

LAB = REPO / "bin" / "lab"


@pytest.fixture(scope="session")
def lab():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    # Start from nothing, as a newcomer's `make lab` does; recovers whatever a killed run left.
    run(LAB, "down", timeout=300)
    run(LAB, "up", timeout=1800)
    yield LAB
    run(LAB, "down", check=False, timeout=300)


def lab_exec(host: str, *cmd: str, check: bool = True, timeout: float = 120):
    return run(LAB, "exec", host, "--", *cmd, check=check, timeout=timeout)
