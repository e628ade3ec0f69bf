"""Shared test helpers: the repo, and commands run from its root as a user would. Salt's own
commands go through lab/cluster.py (salt)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"


def run(*cmd, check=True, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=REPO, capture_output=True, text=True,
                            timeout=timeout, check=False, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


def pytest_configure(config):
    # The lab pillar names its object storage's CA and access key (pillar/generated/): they
    # exist before any test renders that pillar, with the lab up or not.
    from lab import object_storage

    object_storage.ensure_files()


def pytest_sessionfinish(session, exitstatus):
    # Salt keeps early log records in a deferred stderr handler that it flushes at exit, after
    # pytest has closed the captured stderr: hand them to the live handlers now instead.
    from salt._logging.impl import shutdown_temp_handler

    shutdown_temp_handler()


def pytest_collection_modifyitems(config, items):
    lab_dir = REPO / "tests" / "lab"
    for item in items:
        if lab_dir in Path(item.fspath).parents:
            item.add_marker(pytest.mark.lab)
    # Tests that hurt the cluster run after the others, those that take the lab down after them,
    # and the emulated cloud's (which needs the lab's names for itself) last.
    items.sort(key=lambda item: (item.get_closest_marker("yandex_lab") is not None,
                                 item.get_closest_marker("lab_last") is not None,
                                 item.get_closest_marker("disruptive") is not None))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
