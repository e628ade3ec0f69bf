#!/usr/bin/env python3
"""The web app's throughput, latency and CPU per request on each of its data paths, interleaved.

Needs the lab up and the cluster deployed (`make lab`). From this machine, wrk GETs random
messages by id (GET /api/messages/<id>) and adds messages (POST /api/messages) through nginx on
the web host, with the app on each data path in turn (pgcluster:webapp:data_path, applied with
`salt web state.sls webapp pillar=...`): `haproxy` (HAProxy's ports on the web host, then
PgBouncer) and `libpq` (the members' PostgreSQL straight, libpq finding the writer or a
standby). The paths take turns round by round, their order turning each round
(bench/common.interleaved); each figure of libpq is divided by haproxy's of the same round.
The web host's CPU per request is what its cgroups (the app's and nginx's services, HAProxy's)
used during a run, divided by the requests served.

    .venv/bin/python bench/web.py [--rounds 5] [--connections 8] [--seconds 10]

Prints a table and writes bench/results/web.json and web.md; the pillar's own data path is
applied again at the end. The load generator runs on the same 2 cores as the lab, so every
figure is a floor.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import interleaved, machine, now, progress, ratios, spread, write_results  # noqa: E402
from lab.cluster import cluster, salt  # noqa: E402
from lab.workload import lab  # noqa: E402

PATHS = ("haproxy", "libpq")
BASELINE = "haproxy"
# The web host's services whose CPU a request costs (their systemd cgroups).
SERVICES = ("webapp", "nginx", "haproxy")


def add_messages(count: int) -> list[int]:
    ids = []
    for i in range(count):
        request = urllib.request.Request(f"{cluster().url}/api/messages", method="POST",
                                         data=json.dumps({"text": f"bench seed {i}"}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            ids.append(json.load(answer)["id"])
    return ids


def apply(targets: list[str], sls: str, path: str | None) -> None:
    """``sls`` on ``targets`` with pgcluster:webapp:data_path ``path`` (None: the pillar's)."""
    args = ["-L", ",".join(targets), "state.sls", sls]
    if path:
        args.append("pillar=" + json.dumps({"pgcluster": {"webapp": {"data_path": path}}}))
    result = salt(*args, timeout=300, check=True)
    failed = [s.get("comment") for ret in result.values()
              for s in (ret.values() if isinstance(ret, dict) else [{"comment": ret}])
              if not s.get("result")]
    if failed or len(result) != len(targets):
        raise SystemExit(f"{sls} with the data path {path or 'of the pillar'}: {failed or result}")


def use_path(path: str | None) -> None:
    """The app on ``path`` (None: the pillar's own), ready to serve."""
    apply([cluster().web], "webapp", path)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{cluster().url}/readyz", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the web app on {path} is not ready after 60 s")
        time.sleep(0.5)


def cpu_usec() -> dict[str, int]:
    """CPU microseconds each of the web host's SERVICES has used so far: their cgroup v2
    cpu.stat (under /sys/fs/cgroup/unified in the lab's containers, whose systemd runs hybrid)."""
    script = "; ".join(f"echo {s}; cat /sys/fs/cgroup/unified/system.slice/{s}.service/cpu.stat "
                       f"2>/dev/null || cat /sys/fs/cgroup/system.slice/{s}.service/cpu.stat"
                       for s in SERVICES)
    out = lab("exec", cluster().web, "--", "sh", "-ec", script).stdout
    found = dict(re.findall(r"^(\S+)\nusage_usec (\d+)$", out, re.M))
    if set(found) != set(SERVICES):
        raise SystemExit(f"the web host's cgroups gave CPU figures for {sorted(found)}, not "
                         f"{', '.join(SERVICES)}:\n{out}")
    return {service: int(usec) for service, usec in found.items()}


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(script: str, connections: int, seconds: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        before = cpu_usec()
        out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
                              "-s", lua.name, cluster().url], capture_output=True, text=True,
                             check=True).stdout
        after = cpu_usec()
        used = {service: after[service] - before[service] for service in SERVICES}
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": _ms(latency["50"]), "p99_ms": _ms(latency["99"]),
            "errors": int(errors.group(1)) if errors else 0,
            "cpu_us_per_request": round(sum(used.values()) / max(requests, 1), 1),
            **{f"cpu_us_{service}": round(used[service] / max(requests, 1), 1)
               for service in SERVICES}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    ids = add_messages(200)
    scripts = {
        "GET": (f"ids = {{{', '.join(map(str, ids))}}}\n"
                "request = function() return wrk.format('GET', '/api/messages/' .. "
                "ids[math.random(#ids)]) end\n"),
        "POST": ("wrk.method = 'POST'\nwrk.path = '/api/messages'\n"
                 "wrk.headers['Content-Type'] = 'application/json'\n"
                 "wrk.body = '{\"text\": \"bench\"}'\n"),
    }
    runs: dict[str, dict[str, list[dict]]] = {p: {m: [] for m in scripts} for p in PATHS}

    def one_round(path: str) -> float:
        use_path(path)
        for method, script in scripts.items():
            progress(f"  {method} on {path}, {args.connections} connections, {args.seconds} s ...")
            runs[path][method].append(wrk(script, args.connections, args.seconds))
        return runs[path]["GET"][-1]["rps"]

    members = list(cluster().members)
    try:
        # The members' pg_hba lets the web host in for libpq (and keeps HAProxy's way in): the
        # rounds then switch the app alone.
        progress("pg_hba for both data paths on the members ...")
        apply(members, "patroni", "libpq")
        interleaved({p: (lambda p=p: one_round(p)) for p in PATHS}, args.rounds,
                    on_round=lambda n, p: progress(f"round {n + 1}/{args.rounds}: {p}"))
    finally:
        progress("the pillar's own data path again ...")
        use_path(None)
        apply(members, "patroni", None)
    table = ["| request | data path | requests/s, median (min-max) | p50 ms | p99 ms | "
             f"CPU per request on web, µs (its {' / '.join(SERVICES)}) | "
             "requests/s / haproxy's, median of rounds (min-max) | "
             "errors |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    summary = {}
    for method in scripts:
        rps = {p: [r["rps"] for r in runs[p][method]] for p in PATHS}
        relative = ratios(rps, BASELINE)
        for p in PATHS:
            rs = runs[p][method]
            med = {k: spread([r[k] for r in rs])["median"]
                   for k in ("p50_ms", "p99_ms", "cpu_us_per_request",
                             *(f"cpu_us_{service}" for service in SERVICES))}
            t, r = spread(rps[p]), relative.get(p)
            summary.setdefault(method, {})[p] = {"rps": t, "ratio": r, **med,
                                                 "errors": sum(x["errors"] for x in rs)}
            cell = f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})" if r else "1"
            by_service = " / ".join(f"{med['cpu_us_' + service]:.0f}" for service in SERVICES)
            table.append(f"| {method} | {p} | {t['median']:.0f} ({t['min']:.0f}-{t['max']:.0f}) | "
                         f"{med['p50_ms']:.2f} | {med['p99_ms']:.2f} | "
                         f"{med['cpu_us_per_request']:.0f} ({by_service}) | "
                         f"{cell} | "
                         f"{summary[method][p]['errors']} |")
    data = {"date": now(), "machine": machine(), "rounds": args.rounds,
            "connections": args.connections, "seconds": args.seconds, "summary": summary,
            "runs": runs}
    text = write_results(
        "web", data, f"Web app throughput by data path, {data['date']}, {data['machine']}; wrk "
        f"-t2 -c{args.connections}, {args.seconds} s each, {args.rounds} rounds, paths "
        "interleaved, load generated on the same machine", table,
        f"CPU per request: the web host's {', '.join(SERVICES)} services' cgroups, during the "
        "run, over the requests served.")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
