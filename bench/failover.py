#!/usr/bin/env python3
"""Failover write outage: seconds without a successful write, on each data path.

Needs the lab up and the cluster deployed (`make lab`). A writer on this machine per data path
inserts a row every 100 ms (reconnecting after errors): `haproxy` through the web host's
primary port, `libpq` with no proxy, the members' PostgreSQL in one multi-host connection
string with target_session_attrs=read-write (lab/workload.libpq_dsn). Both write at once, so
each fault is the same for both; each scenario hurts the leader (or a standby), and the outage
is the longest gap between two acknowledged writes around the fault. The scenarios run
interleaved (A B A B ...), so the machine's drift falls on each alike.
Every acknowledged row is then looked for on the new leader: `lost` must be 0.

Each timing preset is applied through Salt first (pillar override of the patroni and haproxy
states, which reach the running cluster through Patroni's /config and an HAProxy reload), and
the project's defaults are applied again at the end. A probe polls every 50 ms who holds the
leader key in etcd and who answers Patroni's /primary, so each outage is split into phases:
the lock free, a new leader promoted, writes through HAProxy again.

    .venv/bin/python bench/failover.py [--runs 3] [--timings project,stock]
                                       [--scenarios stop,kill9,crash,partition,switchover]
                                       [--paths haproxy,libpq] [--results failover]

Prints a table and writes bench/results/failover.json and failover.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import RESULTS, machine, now, progress, write_results  # noqa: E402
from lab.cluster import cluster, credentials, leader, on_web, salt  # noqa: E402
from lab.workload import (  # noqa: E402
    FAULTS,
    Timeline,
    Writer,
    app_dsn,
    ensure_table,
    libpq_dsn,
    rows_on,
    run_under,
    wait_healthy,
)

# Pillar overrides under `pgcluster`. "project" is the pillar's own defaults (pgcluster.py).
TIMINGS = {
    "project": {},
    # Patroni's defaults and the HAProxy section of Patroni's own sample configuration.
    "stock": {"patroni": {"ttl": 30, "loop_wait": 10, "retry_timeout": 10},
              "haproxy": {"check": {"inter": "3s", "fastinter": "3s", "downinter": "3s",
                                    "fall": 3, "rise": 2}}},
}
PHASES = ("lock_free", "promoted", "writes_resumed")
# How each writer reaches the leader.
PATHS = {"haproxy": app_dsn, "libpq": libpq_dsn}
CALM = 5  # seconds of writes after an outage that end a run's watch


def apply_timing(name: str) -> dict:
    """Apply a preset with Salt and return the timing Patroni then runs with."""
    override = json.dumps({"pgcluster": TIMINGS[name]})
    members = cluster().members
    for target, sls in ((",".join(members), "patroni"), (cluster().web, "haproxy")):
        result = salt("-L", target, "state.apply", sls, f"pillar={override}", timeout=600,
                      check=True)
        failed = [s["comment"] for ret in result.values() for s in
                  (ret.values() if isinstance(ret, dict) else [{"result": False, "comment": ret}])
                  if not s["result"]]
        if failed or not result:
            raise SystemExit(f"applying the {name} timing to {target} failed: {failed or result}")
    config = on_web("patroni.dynamic_config")
    return {key: config.get(key) for key in ("ttl", "loop_wait", "retry_timeout")}


def run_once(name: str, password: str, ttl: int, paths: list[str]) -> list[dict]:
    fault = FAULTS[name]
    if fault.dynamic_config is None:
        return measure(fault, name, password, ttl, paths)
    run_under(fault.dynamic_config)
    try:
        return measure(fault, name, password, ttl, paths)
    finally:
        run_under(None)


def measure(fault, name: str, password: str, ttl: int, paths: list[str]) -> list[dict]:
    """One fault under a writer per path: a result per path."""
    tag = f"{name}-{time.time_ns()}"
    writers = {path: Writer(password, f"{tag}-{path}", PATHS[path](password)) for path in paths}
    for writer in writers.values():
        writer.start()
    time.sleep(3)
    targets = fault.targets()
    timeline = Timeline(cluster().members, targets, cluster().name)
    timeline.start()
    fault_at = time.monotonic()
    for host in targets:
        fault.inject(host)

    def calm(writer) -> bool:
        resumed = writer.resumed_after(fault_at - 1)
        return bool(resumed and writer.longest_gap(fault_at - 1) >= 1 and
                    time.monotonic() - resumed >= CALM and time.monotonic() - writer.ok[-1][0] < 0.5)

    # Watch until every writer's writes have flowed again for CALM seconds after an outage, or
    # for the fault's whole window (longer for a longer ttl: a dead leader's lock lives up to ttl).
    deadline = fault_at + fault.observe * ttl / 20
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if all(calm(w) for w in writers.values()):
            break
    for writer in writers.values():
        writer.stop.set()
        writer.join()
    timeline.finish()
    for host in targets:
        fault.repair(host)
    started = time.monotonic()
    wait_healthy(300, sync_standby=True)
    progress(f"  healthy again {time.monotonic() - started:.0f} s after the repair")
    new = leader()
    events = timeline.events(fault_at)
    results = []
    for path, writer in writers.items():
        resumed = writer.resumed_after(fault_at - 1)
        results.append({"scenario": name, "path": path,
                        "outage_s": round(writer.longest_gap(fault_at - 1), 2),
                        "acked": len(writer.acked), "lost": len(writer.acked - rows_on(new, writer.tag)),
                        "hurt": targets, "new_leader": new, **events,
                        "writes_resumed": round(resumed - fault_at, 2) if resumed else None})
    return results


def summarize(runs: list[dict]) -> dict:
    outages = [r["outage_s"] for r in runs]
    phases = {p: statistics.median(v) if (v := [r[p] for r in runs if r.get(p) is not None])
              else None for p in PHASES}
    return {"runs": len(runs), "median_s": round(statistics.median(outages), 2),
            "max_s": max(outages), "acked": sum(r["acked"] for r in runs),
            "lost": sum(r["lost"] for r in runs),
            **{f"{p}_median_s": round(v, 2) if v is not None else None for p, v in phases.items()}}


def earlier_runs(timings: list[str], scenarios: list[str]) -> dict:
    """{timing: (date, runs, Patroni timing)} of the other timings in the last failover.json."""
    try:
        last = json.loads((RESULTS / "failover.json").read_text())
    except (OSError, ValueError):
        return {}
    kept = {}
    for timing, preset in last.get("timings", {}).items():
        runs = [r for r in last["runs"] if r["timing"] == timing and r["scenario"] in scenarios]
        if timing not in timings and {r["scenario"] for r in runs} == set(scenarios):
            kept[timing] = (preset.get("measured", last["date"]), runs, preset["patroni_runs_with"])
    return kept


def _cell(value) -> str:
    return "" if value is None else str(value)


def _series(run: dict) -> str:
    """A run's column: its timing and data path (runs from before the paths: HAProxy's)."""
    return f"{run['timing']}, {run.get('path', 'haproxy')}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timings", default="project,stock", help=f"any of {','.join(TIMINGS)}")
    parser.add_argument("--scenarios", default="stop,kill9,crash,partition,switchover",
                        help=f"any of {','.join(FAULTS)}")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"any of {','.join(PATHS)}")
    parser.add_argument("--results", default="failover",
                        help="the name of bench/results/NAME.json and .md")
    parser.add_argument("--keep-other-timings", action="store_true",
                        help="keep the runs of the other timings from the last failover.json")
    args = parser.parse_args()
    timings, scenarios = args.timings.split(","), args.scenarios.split(",")
    paths = args.paths.split(",")
    kept = earlier_runs(timings, scenarios) if args.keep_other_timings else {}
    password = credentials()["app"]
    ensure_table(password)
    wait_healthy(300, sync_standby=True)
    results, applied = [], {}
    try:
        for timing in timings:
            progress(f"applying the {timing} timing through Salt ...")
            applied[timing] = apply_timing(timing)
            progress(f"  Patroni runs with {applied[timing]}")
            wait_healthy(300, sync_standby=True)
            # Interleaved (A B A B ...): the machine's drift falls on every scenario alike.
            for run in range(args.runs):
                for name in scenarios:
                    progress(f"{timing}: {name} run {run + 1}/{args.runs} ...")
                    for result in run_once(name, password, applied[timing]["ttl"], paths):
                        results.append({"timing": timing, **result})
                        progress(f"  {results[-1]}")
    finally:
        if timings != ["project"]:
            progress("applying the project's timing again ...")
            apply_timing("project")
    dates = {t: now() for t in timings}
    for timing, (date, runs, runs_with) in kept.items():
        timings.append(timing)
        results += runs
        dates[timing], applied[timing] = date, runs_with
    series = list(dict.fromkeys(_series(r) for r in results))
    summary = {c: {n: summarize([r for r in results if _series(r) == c and r["scenario"] == n])
                   for n in scenarios} for c in series}
    data = {"date": now(), "machine": machine(), "timings": {t: {**TIMINGS[t], "patroni_runs_with":
            applied[t], "measured": dates[t]} for t in timings}, "paths": paths,
            "summary": summary, "runs": results}
    head = "| scenario | " + " | ".join(f"{c}: median / max s" for c in series) + " | acked | lost |"
    table = [head, "|" + " --- |" * (len(series) + 3)]
    for n in scenarios:
        cells = [f"{summary[c][n]['median_s']} / {summary[c][n]['max_s']}" for c in series]
        table.append(f"| {FAULTS[n].description} | " + " | ".join(cells) +
                     f" | {sum(summary[c][n]['acked'] for c in series)} | "
                     f"{sum(summary[c][n]['lost'] for c in series)} |")
    table += ["", "Phases, medians in seconds after the fault:", "",
              "| timing, path | scenario | lock free | new leader answers /primary | writes again |",
              "| --- | --- | --- | --- | --- |"]
    for c in series:
        table += [f"| {c} | {n} | " + " | ".join(_cell(summary[c][n][f"{p}_median_s"])
                                                  for p in PHASES) + " |" for n in scenarios]
    presets = "; ".join(f"{t} (measured {dates[t]}): Patroni {applied[t]}, pillar override "
                        f"{TIMINGS[t] or 'none'}" for t in timings)
    text = write_results(
        args.results, data, f"Failover write outage, a writer every 100 ms on each data path "
        f"(haproxy: HAProxy's primary port; libpq: the members' PostgreSQL, multi-host, "
        f"read-write) under the same faults, {args.runs} runs each, {data['date']}, "
        f"{data['machine']}", table, f"Timings: {presets}.")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
