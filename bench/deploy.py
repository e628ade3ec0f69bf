#!/usr/bin/env python3
"""Deployment time: bare hosts to a healthy cluster, then the runs that must change nothing.

REBUILDS THE LAB: `bin/lab down`, then `bin/lab up` (hosts boot from the image and their
minions connect; timed, but not part of the deployment), then, timed:
1. the orchestration (`salt-run state.orchestrate orch.cluster`, what `bin/deploy` runs), from
   bare hosts to a healthy cluster, with each step's time;
2. a second `salt '*' state.apply`, which must change nothing;
3. `salt '*' state.apply test=True`, which must report nothing to change;
4. a second orchestration, which must change nothing.

Packages come from the lab's local package mirror and wheelhouse (built on the first
`make lab`), so no download is timed: on Yandex Cloud, add the download of about 150 MB.

    .venv/bin/python bench/deploy.py [--keep-lab]   (--keep-lab: skip the rebuild and step 1)

Prints a table and writes bench/results/deploy.json and deploy.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import machine, now, progress, write_results  # noqa: E402
from lab.cluster import on_web, salt  # noqa: E402

SALT_RUN = REPO / ".venv" / "bin" / "salt-run"


def timed(what: str, func, *args):
    progress(f"{what} ...")
    started = time.monotonic()
    result = func(*args)
    seconds = round(time.monotonic() - started, 1)
    progress(f"  {seconds} s")
    return seconds, result


def lab(*args: str) -> None:
    subprocess.run([REPO / "bin" / "lab", *args], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def count(states: dict) -> dict:
    """States, failures, changed and (with test=True) would-change in one minion's return."""
    if not isinstance(states, dict):
        return {"states": 0, "failed": 1, "changed": 0, "pending": 0}
    results = [s for s in states.values() if isinstance(s, dict) and "result" in s]
    return {"states": len(results),
            "failed": sum(s["result"] is False for s in results),
            "changed": sum(bool(s.get("changes")) and s["result"] is True for s in results),
            "pending": sum(s["result"] is None for s in results)}


def add(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b.get(k, 0) for k in a | b}


def orchestrate() -> dict:
    """Run the orchestration; the steps' durations and the minions' state counts."""
    out = subprocess.run([SALT_RUN, "state.orchestrate", "orch.cluster", "--out=json"], cwd=REPO,
                         capture_output=True, text=True, check=False)
    try:
        data = json.loads(out.stdout)["data"]
    except (json.JSONDecodeError, KeyError) as error:
        raise SystemExit(f"the orchestration failed:\n{out.stdout}{out.stderr}") from error
    steps, totals = {}, {}
    for step in next(iter(data.values())).values():
        if not step["result"]:
            raise SystemExit(f"orchestration step {step['__id__']} failed: {step['comment']}")
        steps[step["__id__"]] = round(step.get("duration", 0) / 1000, 1)
        # salt.state lists only the minions where something changed.
        for ret in (step.get("changes") or {}).get("ret", {}).values():
            totals = add(totals, count(ret))
    return {"steps": steps, "changed": totals.get("changed", 0)}


def apply_all(*args: str) -> dict:
    totals: dict = {}
    for ret in salt("*", "state.apply", *args, timeout=600, check=True).values():
        totals = add(totals, count(ret))
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep-lab", action="store_true",
                        help="measure the idempotent runs on the deployed lab only")
    args = parser.parse_args()
    runs = {}
    if not args.keep_lab:
        progress("bin/lab down ...")
        lab("down")
        runs["hosts_up_s"], _ = timed("bin/lab up: hosts boot, minions connect", lab, "up")
        runs["deploy_s"], runs["deploy"] = timed("orchestration from bare hosts", orchestrate)
        health = on_web("patroni.health", check=True)
        if not health.get("healthy"):
            raise SystemExit(f"the cluster is not healthy after the orchestration: {health}")
    runs["second_apply_s"], runs["second_apply"] = timed("salt '*' state.apply", apply_all)
    runs["test_apply_s"], runs["test_apply"] = timed("salt '*' state.apply test=True",
                                                     apply_all, "test=True")
    runs["second_orchestration_s"], runs["second_orchestration"] = timed(
        "second orchestration", orchestrate)
    rows = [("bare hosts to a healthy cluster (orchestration)", "deploy"),
            ("second `salt '*' state.apply`", "second_apply"),
            ("`salt '*' state.apply test=True`", "test_apply"),
            ("second orchestration", "second_orchestration")]
    table = ["| run | seconds | states run | changed | would change | failed |",
             "| --- | --- | --- | --- | --- | --- |"]
    if "hosts_up_s" in runs:
        table.append(f"| `bin/lab up`: hosts boot, minions connect (not deployment) | "
                     f"{runs['hosts_up_s']} | | | | |")
    for what, key in rows:
        if key in runs:
            r = runs[key]
            table.append(f"| {what} | {runs[key + '_s']} | {r.get('states', '')} | "
                         f"{r.get('changed', 0)} | {r.get('pending', 0)} | {r.get('failed', 0)} |")
    notes = ""
    if "deploy" in runs:
        notes = "Orchestration steps, seconds: " + ", ".join(
            f"{step} {seconds}" for step, seconds in runs["deploy"]["steps"].items()) + "."
    data = {"date": now(), "machine": machine(), **runs}
    text = write_results("deploy", data, f"Deployment, {data['date']}, {data['machine']}; packages "
                         "from the lab's local mirror", table, notes)
    print(text)
    idle = [runs[k].get("changed", 0) + runs[k].get("pending", 0) + runs[k].get("failed", 0)
            for k in ("second_apply", "test_apply", "second_orchestration")]
    return 1 if any(idle) else 0


if __name__ == "__main__":
    sys.exit(main())
