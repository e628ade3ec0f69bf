"""What every benchmark shares: the machine it ran on and writing results. The cluster's names,
addresses, ports and passwords come from its pillar through lab/cluster.py."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def machine() -> str:
    os_name = platform.freedesktop_os_release()["PRETTY_NAME"]
    return f"{platform.machine()}, {os.cpu_count()} cores, {os_name}"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def write_results(name: str, data: dict, title: str, table: list[str], notes: str = "") -> str:
    """bench/results/NAME.json and NAME.md; returns the Markdown, which the caller prints."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    text = f"{title}\n\n" + "\n".join(table) + "\n" + (f"\n{notes}\n" if notes else "")
    (RESULTS / f"{name}.md").write_text(text)
    return text


def interleaved(runs: dict[str, Callable[[], float]], rounds: int,
                on_round: Callable[[int, str], None] | None = None) -> dict[str, list[float]]:
    """Each of ``runs`` once per round, ``rounds`` times: {name: [figure per round]}. The order
    turns round by round (A B C, C B A, A B C, ...), so that the machine's drift, and whatever
    the run before leaves behind, falls on each alike; a ratio is then taken within a round.
    on_round(round, name) is told before each run (for progress)."""
    names = list(runs)
    figures: dict[str, list[float]] = {name: [] for name in names}
    for n in range(rounds):
        for name in names if n % 2 == 0 else reversed(names):
            if on_round:
                on_round(n, name)
            figures[name].append(runs[name]())
    return figures


def spread(values: list[float]) -> dict:
    """Median, min and max of ``values``."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratios(figures: dict[str, list[float]], baseline: str) -> dict[str, dict]:
    """{name: spread of the round-by-round ratios name / baseline} for every name but the
    baseline: each ratio of two runs made one after the other, not of two medians."""
    return {name: spread([v / b for v, b in zip(values, figures[baseline], strict=True)])
            for name, values in figures.items() if name != baseline}
