#!/usr/bin/env python3
"""What TLS inside the cluster costs: the same measurements with it off and on, interleaved
(off, on, off, on ...) on the same lab, with the pair-by-pair ratios.

Needs the lab up and the cluster deployed (`make lab`). "on" is the project's defaults; "off"
turns TLS off for PostgreSQL (its clients, replication), PgBouncer, Patroni's REST API
(HAProxy's checks, the modules) and etcd (its peers, and Patroni as its client; bin/deploy
moves it member by member, _runners/pgcluster_etcd.py). Each switch is what an operator does:
the override in pillar/local.sls (merged over the site's pillar, out of git; removed again at
the end), then `bin/deploy`. In each mode:
- pgbench from this machine, 8 clients for 15 s each: TPC-B through HAProxy's primary port,
  select-only through its replica port, and select-only with a new connection per transaction
  (-C) through the primary port, where every connection pays TLS's handshakes;
- the failover bench's writer (a row every 100 ms through HAProxy's primary port) through a
  planned switchover and a stopped leader's Patroni: the longest gap between two acknowledged
  writes, and no acknowledged row lost.

    .venv/bin/python bench/tls.py [--pairs 3] [--scenarios switchover,stop]

Prints a table and writes bench/results/tls.json and tls.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import machine, now, progress, write_results  # noqa: E402
from bench.failover import run_once  # noqa: E402
from bench.routing import pgbench, pgbench_init  # noqa: E402
from lab.cluster import cluster, credentials, leader  # noqa: E402
from lab.workload import ensure_table, wait_healthy  # noqa: E402

LOCAL_PILLAR = REPO / "pillar" / "local.sls"
TLS_OFF = {"pgcluster": {"postgresql": {"tls": False}, "pgbouncer": {"tls": False},
                         "patroni": {"tls": False}, "etcd": {"tls": False}}}
MODES = ("off", "on")
CLIENTS, SECONDS, SCALE = 8, 15, 5


def _deploy(pillar: dict | None) -> None:
    if pillar:
        LOCAL_PILLAR.write_text("# Written by bench/tls.py, removed when it ends.\n"
                                + json.dumps(pillar, indent=2) + "\n")
    else:
        LOCAL_PILLAR.unlink(missing_ok=True)
    subprocess.run([REPO / "bin" / "deploy"], check=True, capture_output=True, text=True,
                   timeout=1800)


def switch(mode: str) -> float:
    """TLS as ``mode`` says, the way an operator switches it; returns bin/deploy's seconds."""
    started = time.monotonic()
    _deploy(TLS_OFF if mode == "off" else None)
    took = time.monotonic() - started
    cluster.cache_clear()  # the model now says https or http
    wait_healthy(300, sync_standby=True)
    model = cluster().model
    assert all(model[c]["tls"] is (mode == "on") for c in TLS_OFF["pgcluster"])
    return round(took, 1)


def measure(mode: str, password: str, scenarios: list[str]) -> dict:
    c = cluster()
    load = ["-n", "-c", str(CLIENTS), "-j", "2", "-T", str(SECONDS)]
    figures = {}
    for name, port, flags in (("tpcb", c.primary_port, []),
                              ("select-only replicas", c.replica_port, ["-S"]),
                              ("select-only, connection per transaction", c.primary_port,
                               ["-S", "-C"])):
        progress(f"  {mode}: {name} ...")
        figures[name] = pgbench(c.web_address, port, password, *load, *flags)["tps"]
    outages, phases = {}, {}
    for scenario in scenarios:
        progress(f"  {mode}: {scenario} ...")
        run = run_once(scenario, password, c.model["patroni"]["ttl"])
        if run["lost"]:
            raise SystemExit(f"{run['lost']} acknowledged writes lost in {scenario} with TLS {mode}")
        outages[scenario] = run["outage_s"]
        # Seconds after the fault (the failover bench's phases): where the time goes.
        phases[scenario] = {p: run.get(p) for p in ("lock_free", "promoted", "writes_resumed")}
    return {"mode": mode, "tps": figures, "outage_s": outages, "phases": phases}


def _spread(values: list[float], digits: int = 2) -> dict:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def summarize(runs: list[dict]) -> dict:
    """Per figure: each mode's median (min, max), and the on/off ratio pair by pair."""
    pairs = list(zip(runs[0::2], runs[1::2], strict=True))
    summary = {}
    for kind in ("tps", "outage_s"):
        for name in runs[0][kind]:
            ratios = [on[kind][name] / off[kind][name] for off, on in pairs if off[kind][name]]
            summary[f"{kind}:{name}"] = {
                **{mode: _spread([r[kind][name] for r in runs if r["mode"] == mode],
                                 1 if kind == "tps" else 2) for mode in MODES},
                "on/off": _spread(ratios) if ratios else None}
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--scenarios", default="switchover,stop")
    args = parser.parse_args()
    if LOCAL_PILLAR.exists():
        raise SystemExit(f"{LOCAL_PILLAR} exists: this bench switches TLS with that file; move "
                         "it away first (it holds this checkout's own overrides)")
    scenarios = args.scenarios.split(",")
    password = credentials()["app"]
    ensure_table(password)
    wait_healthy(300, sync_standby=True)
    progress(f"pgbench -i -s {SCALE} on the leader ...")
    pgbench_init(cluster().members[leader()], cluster().model["postgresql"]["port"], password, SCALE)
    runs, deploys = [], []
    try:
        for pair in range(args.pairs):
            for mode in MODES:
                progress(f"pair {pair + 1}/{args.pairs}: TLS {mode}: bin/deploy ...")
                deploys.append({"mode": mode, "deploy_s": switch(mode)})
                runs.append(measure(mode, password, scenarios))
                progress(f"  {runs[-1]}")
    finally:
        if LOCAL_PILLAR.exists():  # an error with TLS off: the defaults come back
            progress("TLS back on: bin/deploy ...")
            switch("on")
    summary = summarize(runs)
    data = {"date": now(), "machine": machine(), "pairs": args.pairs, "clients": CLIENTS,
            "seconds": SECONDS, "scale": SCALE, "summary": summary, "runs": runs,
            "deploys": deploys}
    table = ["| figure | TLS off, median (min-max) | TLS on, median (min-max) | on / off, pair by "
             "pair: median (min-max) |", "| --- | --- | --- | --- |"]
    for key, s in summary.items():
        kind, name = key.split(":", 1)
        label = f"{name}, TPS" if kind == "tps" else f"{name}: write outage, s"
        cells = [f"{s[m]['median']} ({s[m]['min']}-{s[m]['max']})" for m in MODES]
        ratio = s["on/off"]
        table.append(f"| {label} | {cells[0]} | {cells[1]} | "
                     + (f"{ratio['median']} ({ratio['min']}-{ratio['max']}) |" if ratio else "|"))
    switched = {m: statistics.median(d["deploy_s"] for d in deploys if d["mode"] == m) for m in MODES}
    phases = []
    for scenario in scenarios:
        for mode in MODES:
            got = {p: [r["phases"][scenario][p] for r in runs if r["mode"] == mode
                       and r["phases"][scenario][p] is not None] for p in ("promoted", "writes_resumed")}
            shown = ", ".join(f"{p.replace('_', ' ')} {statistics.median(v):.2f} s"
                              for p, v in got.items() if v)
            phases.append(f"{scenario} with TLS {mode}: {shown or 'no phases seen'}")
    notes = (f"TLS off: PostgreSQL, PgBouncer, Patroni's REST API and etcd. pgbench "
             f"-c {CLIENTS} -j 2 -T {SECONDS}, scale {SCALE}, from the lab's host machine through "
             f"HAProxy on the web host. Each switch is pillar/local.sls and bin/deploy: "
             f"{switched['off']} s to off, {switched['on']} s to on (medians); no acknowledged "
             f"write was lost in any run. After the fault, medians: " + "; ".join(phases) + ".")
    title = (f"The cost of TLS inside the cluster, off and on interleaved, {args.pairs} pairs, "
             f"{data['date']}, {data['machine']}")
    text = write_results("tls", data, title, table, notes)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
