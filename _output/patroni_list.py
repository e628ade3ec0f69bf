"""
``patroni.list`` as a table, the way ``patronictl list`` shows it.

Anything else (an error, a minion that did not answer) falls back to the nested outputter.
"""

from __future__ import annotations

import salt.output

__virtualname__ = "patroni_list"

COLUMNS = (
    ("Member", "name"),
    ("Host", "host"),
    ("Role", "role"),
    ("State", "state"),
    ("TL", "timeline"),
    ("Receive Lag MB", "receive_lag_mb"),
    ("Replay Lag MB", "replay_lag_mb"),
    ("Pending restart", "pending_restart"),
    ("Tags", "tags"),
)


def __virtual__():
    return __virtualname__


def _cell(value):
    if value is None or value is False or value == {}:
        return ""
    if value is True:
        return "*"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in sorted(value.items()))
    return str(value)


def _table(result):
    rows = [[_cell(member.get(key)) for _, key in COLUMNS] for member in result["members"]]
    widths = [max(len(title), *(len(r[i]) for r in rows)) for i, (title, _) in enumerate(COLUMNS)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    title = f"+ Cluster: {result['cluster']} ({result.get('system_identifier') or 'unknown'}) "
    lines = [title + line[len(title):] if len(title) < len(line) else title]
    lines.append("| " + " | ".join(t.ljust(w) for (t, _), w in zip(COLUMNS, widths, strict=True)) + " |")
    lines.append(line)
    lines.extend("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows)
    lines.append(line)
    if result.get("paused"):
        lines.append(" Maintenance mode: on")
    return "\n".join(lines)


def output(data, **kwargs):
    out = []
    for minion, result in data.items():
        if isinstance(result, dict) and isinstance(result.get("members"), list):
            out.append(f"{minion}:\n{_table(result)}")
        else:
            out.append(salt.output.out_format({minion: result}, "nested", __opts__).rstrip())
    return "\n".join(out)
