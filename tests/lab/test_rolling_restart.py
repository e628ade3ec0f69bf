"""Rolling maintenance (orch.rolling_restart, _runners/pgcluster_rolling.py) under the fault
tests' writer: every member's PostgreSQL restarted, the leader last after one switchover, and
no acknowledged write lost."""

from __future__ import annotations

import json

from lab.cluster import leader
from tests.conftest import VENV_BIN, run
from tests.lab.conftest import started_at, wait_healthy


def orchestrate(*pillar: str) -> dict:
    out = run(VENV_BIN / "salt-run", "state.orchestrate", "orch.rolling_restart", *pillar,
              "--out=json", timeout=1800, check=False)
    return json.loads(out.stdout)["data"]


def test_every_member_upgrades_and_restarts_the_leader_last_after_one_switchover(writer):
    before, old_leader = started_at(), leader()
    steps = next(iter(orchestrate('pillar={"upgrade": true}').values()))
    runner = steps["salt_|-rolling-restart_|-pgcluster_rolling.restart_|-runner"]
    assert runner["result"], runner
    done = runner["changes"]["return"]["steps"]
    after = started_at()
    assert all(after[m] != before[m] for m in before), (before, after)
    new_leader = leader()
    assert new_leader != old_leader
    # Replicas first, then the switchover, then the old leader.
    assert done[-2].startswith(f"{old_leader}: ") and done[-2].endswith(" packages upgraded")
    assert done[-3] == f"switched over from {old_leader} to {new_leader}"
    assert done[-1].startswith(f"{old_leader}: restarted")
    # Each member: its packages upgraded, then restarted; and the one switchover.
    assert len(done) == 2 * len(before) + 1
    print(f"\nrolling restart in {runner['duration'] / 1000:.0f} s: {done}; longest write gap "
          f"{writer.longest_gap(0):.2f} s")


def test_with_nothing_pending_nothing_restarts(lab):
    wait_healthy(240)
    before = started_at()
    steps = next(iter(orchestrate('pillar={"pending": true}').values()))
    runner = steps["salt_|-rolling-restart_|-pgcluster_rolling.restart_|-runner"]
    assert runner["changes"]["return"] == {"changed": False, "comment": "no member waits for a restart"}
    assert started_at() == before
