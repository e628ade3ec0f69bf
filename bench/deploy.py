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

    .venv/bin/python bench/deploy.py --yandex

The Yandex path instead, on the emulated Yandex Cloud, from nothing (TAKES THE LAB DOWN, and
leaves nothing: it ends with `make yandex-lab-down`): the emulation and the network, the map's
VMs created through the API (each timed to when its host is powered on), the same VMs
bootstrapped over SSH (salt-cloud's deploy script installs Salt from the emulated internet's
mirror), the orchestration to a healthy cluster, and the teardown. Writes
bench/results/deploy-yandex.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import machine, now, progress, write_results  # noqa: E402
from lab import settings  # noqa: E402
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


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by each lab host (its cgroup's cpu.stat; the lab's hosts run
    under the hybrid hierarchy's unified tree) and by the whole machine (/proc/stat: every
    core's time not idle), to see where a deployment's time goes on a machine it saturates."""
    used = {}
    for stat in sorted((settings.CGROUP_ROOT / "unified" / settings.NAME).glob("*/cpu.stat")):
        fields = dict(line.split() for line in stat.read_text().splitlines())
        used[stat.parent.name] = int(fields["usage_usec"]) / 1e6
    # user nice system idle iowait irq softirq steal: all but idle and iowait is busy.
    ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    used["machine"] = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return used


def _clock(stamp: str) -> float:
    hours, minutes, seconds = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def orchestrate() -> dict:
    """Run the orchestration; each step's start (seconds from the first step's) and duration,
    the minions' state counts, and the CPU the lab's hosts and the machine used meanwhile."""
    before, started = cpu_seconds(), time.monotonic()
    out = subprocess.run([SALT_RUN, "state.orchestrate", "orch.cluster", "--out=json"], cwd=REPO,
                         capture_output=True, text=True, check=False)
    wall, after = time.monotonic() - started, cpu_seconds()
    try:
        data = json.loads(out.stdout)["data"]
    except (json.JSONDecodeError, KeyError) as error:
        raise SystemExit(f"the orchestration failed:\n{out.stdout}{out.stderr}") from error
    steps, starts, totals = {}, {}, {}
    for step in sorted(next(iter(data.values())).values(), key=lambda s: s["__run_num__"]):
        if not step["result"]:
            raise SystemExit(f"orchestration step {step['__id__']} failed: {step['comment']}")
        steps[step["__id__"]] = round(step.get("duration", 0) / 1000, 1)
        starts[step["__id__"]] = _clock(step["start_time"])
        # salt.state lists only the minions where something changed.
        for ret in (step.get("changes") or {}).get("ret", {}).values():
            totals = add(totals, count(ret))
    first = min(starts.values())
    cpu = {name: round(after[name] - before.get(name, 0), 1) for name in after}
    return {"steps": steps, "changed": totals.get("changed", 0),
            "starts": {name: round(start - first, 1) for name, start in starts.items()},
            "cpu_s": cpu, "cores": os.cpu_count(),
            "busy": round(cpu["machine"] / (wall * os.cpu_count()), 2)}


def profile(run: dict) -> str:
    """The steps as a timeline (start + duration: a step beside another starts before that one
    ends) and where the CPU went."""
    steps = ", ".join(f"{name} {run['starts'][name]}+{seconds}" for name, seconds in run["steps"].items())
    hosts = ", ".join(f"{name} {seconds}" for name, seconds in run["cpu_s"].items() if name != "machine")
    rest = round(run["cpu_s"]["machine"] - sum(v for k, v in run["cpu_s"].items() if k != "machine"), 1)
    return (f"Orchestration steps, start + seconds: {steps}. CPU seconds: {hosts}, the salt-master "
            f"and the rest of the machine {rest}; its {run['cores']} cores busy "
            f"{run['busy']:.0%} of the time.")


def apply_all(*args: str) -> dict:
    totals: dict = {}
    for ret in salt("*", "state.apply", *args, timeout=600, check=True).values():
        totals = add(totals, count(ret))
    return totals


def _yandex_command(*cmd: str) -> None:
    subprocess.run([str(c) for c in cmd], check=True, cwd=REPO, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def _watch_power(names: list[str], started: float, seen: dict, stop: threading.Event) -> None:
    """When each VM's host first runs (the API's RUNNING), seconds from `started`."""
    while not stop.is_set() and len(seen) < len(names):
        rows = json.loads(subprocess.run([REPO / "bin/lab", "status", "--json"], capture_output=True,
                                         text=True, check=False).stdout or "[]")
        for row in rows:
            if row["name"] in names and row["state"] == "running" and row["name"] not in seen:
                seen[row["name"]] = round(time.monotonic() - started, 1)
        stop.wait(0.5)


def yandex() -> int:
    """The Yandex path on the emulated cloud, each step timed (see the module's docstring)."""
    venv = REPO / ".venv" / "bin"
    vm_map = REPO / "cloud.maps.d" / "yandex.map"
    names = [n for entries in yaml.safe_load(vm_map.read_text()).values() for e in entries for n in e]
    progress("bin/lab down ...")
    lab("down")
    runs = {}
    try:
        runs["cloud_up_s"], _ = timed("bin/lab cloud up: the emulation and the salt-master", _yandex_command,
                                      venv / "python", REPO / "bin/lab", "cloud", "up")
        _yandex_command(venv / "python", REPO / "bin/lab", "cloud", "storage")  # the user's yc steps
        runs["network_s"], _ = timed("salt-cloud -f ensure_network yandex", _yandex_command,
                                     venv / "salt-cloud", "-f", "ensure_network", "yandex")
        powered: dict[str, float] = {}
        stop = threading.Event()
        started = time.monotonic()
        watcher = threading.Thread(target=_watch_power, args=(names, started, powered, stop))
        watcher.start()
        try:
            runs["map_s"], _ = timed("salt-cloud -m yandex.map -P: VMs created and bootstrapped",
                                     _yandex_command, venv / "salt-cloud", "-m", vm_map, "-P", "-y")
        finally:
            stop.set()
            watcher.join()
        runs["powered_on_s"] = powered
        runs["created_s"] = max(powered.values()) if len(powered) == len(names) else None
        runs["deploy_s"], runs["deploy"] = timed("orchestration to a healthy cluster", orchestrate)
        health = on_web("patroni.health", check=True)
        if not health.get("healthy"):
            raise SystemExit(f"the cluster is not healthy after the orchestration: {health}")
        runs["down_s"], _ = timed("make yandex-lab-down", _yandex_command, "make", "yandex-lab-down")
    except BaseException:
        progress("failed: bin/lab down removes what the emulation made")
        lab("down")
        raise
    table = ["| step | seconds |", "| --- | --- |",
             f"| `bin/lab cloud up`: the emulated cloud and the salt-master | {runs['cloud_up_s']} |",
             f"| `salt-cloud -f ensure_network yandex` | {runs['network_s']} |",
             f"| the map's {len(names)} VMs created: API call to the last powered on | {runs['created_s']} |",
             f"| ... and bootstrapped over SSH: `salt-cloud -m ... -P` ends | {runs['map_s']} |",
             f"| orchestration from bare minions to a healthy cluster | {runs['deploy_s']} |",
             f"| from nothing to a healthy cluster | "
             f"{round(runs['cloud_up_s'] + runs['network_s'] + runs['map_s'] + runs['deploy_s'], 1)} |",
             f"| `make yandex-lab-down`: VMs and network deleted through salt-cloud | {runs['down_s']} |"]
    notes = profile(runs["deploy"])
    data = {"date": now(), "machine": machine(), **runs}
    print(write_results("deploy-yandex", data, f"The Yandex path on the emulated cloud, {data['date']}, "
                        f"{data['machine']}; packages from the emulated internet's mirror", table, notes))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep-lab", action="store_true",
                        help="measure the idempotent runs on the deployed lab only")
    parser.add_argument("--yandex", action="store_true",
                        help="the Yandex path on the emulated cloud instead (takes the lab down)")
    args = parser.parse_args()
    if args.yandex:
        return yandex()
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
    second = runs["second_orchestration"]
    notes = "\n\n".join([*([profile(runs["deploy"])] if "deploy" in runs else []),
                          "Second orchestration, start + seconds: " + ", ".join(
                              f"{name} {second['starts'][name]}+{seconds}"
                              for name, seconds in second["steps"].items()) + "."])
    data = {"date": now(), "machine": machine(), **runs}
    text = write_results("deploy", data, f"Deployment, {data['date']}, {data['machine']}; packages "
                         "from the lab's local mirror", table, notes)
    print(text)
    idle = [runs[k].get("changed", 0) + runs[k].get("pending", 0) + runs[k].get("failed", 0)
            for k in ("second_apply", "test_apply", "second_orchestration")]
    return 1 if any(idle) else 0


if __name__ == "__main__":
    sys.exit(main())
