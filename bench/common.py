"""What every benchmark shares: the machine it ran on and writing results. The cluster's names,
addresses, ports and passwords come from its pillar through lab/cluster.py."""

from __future__ import annotations

import json
import os
import platform
import sys
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
