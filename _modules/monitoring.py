"""
The cluster's monitoring, read from Prometheus's HTTP API on the Prometheus host
(``pgcluster:monitoring:host``): the alerts that fire, and whether every target answers.

Any minion of the cluster can ask (the firewall lets the cluster's hosts and the admin sources
reach Prometheus). Every call is bounded by
``timeout`` (default 5 s) and names Prometheus's URL when it does not answer.

CLI Example:

.. code-block:: bash

    salt web monitoring.alerts
    salt web monitoring.targets
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

from salt.exceptions import CommandExecutionError

__virtualname__ = "monitoring"
DEFAULT_TIMEOUT = 5.0


def __virtual__():
    if "pgcluster.config" not in __salt__:
        return (False, f"{__virtualname__}: the execution module pgcluster is not synced "
                       "(salt '*' saltutil.sync_all)")
    return __virtualname__


def _prometheus(pillar=None) -> str:
    """Prometheus's URL, from the master's pillar as it is now."""
    cfg = __salt__["pgcluster.config"](fresh=True, pillar=pillar)
    monitoring = cfg["monitoring"]
    if not monitoring["enabled"]:
        raise CommandExecutionError("monitoring is off (pillar pgcluster:monitoring:enabled)")
    return monitoring["url"]


def _api(path: str, timeout: float, pillar=None, **params) -> dict | list:
    """GET Prometheus's ``/api/v1/<path>``; its ``data``, or an error that says why not."""
    url = f"{_prometheus(pillar)}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            body = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error") or exc.reason
        except ValueError:
            message = exc.reason
        raise CommandExecutionError(f"Prometheus ({url}) answered {exc.code}: {message}") from None
    except (OSError, ValueError) as exc:
        raise CommandExecutionError(f"Prometheus does not answer at {url}: "
                                    f"{getattr(exc, 'reason', exc)}") from None
    if body.get("status") != "success":
        raise CommandExecutionError(f"Prometheus ({url}): {body.get('error', body)}")
    return body["data"]


def alerts(state="firing", timeout=DEFAULT_TIMEOUT, pillar=None):
    """
    The alerts in ``state`` (``firing``, the default; ``pending``: their condition holds but
    not yet for its ``for``; ``all``), each with its name, host, severity, summary and since
    when; the most severe first. An empty list: nothing is wrong.

    CLI Example:

    .. code-block:: bash

        salt web monitoring.alerts
        salt web monitoring.alerts state=all
    """
    if state not in ("firing", "pending", "all"):
        raise CommandExecutionError(f"state={state!r}: firing, pending or all")
    found = []
    for alert in _api("alerts", float(timeout), pillar)["alerts"]:
        if state != "all" and alert["state"] != state:
            continue
        labels = alert["labels"]
        found.append({
            "alert": labels.get("alertname"),
            "instance": labels.get("instance"),
            "severity": labels.get("severity"),
            "state": alert["state"],
            "summary": alert.get("annotations", {}).get("summary", ""),
            "since": alert.get("activeAt"),
            "labels": {k: v for k, v in labels.items()
                       if k not in ("alertname", "instance", "severity")},
        })
    order = {"critical": 0, "warning": 1}
    return sorted(found, key=lambda a: (order.get(a["severity"], 2), a["alert"] or "",
                                        a["instance"] or ""))


def targets(timeout=DEFAULT_TIMEOUT, pillar=None):
    """
    Every target Prometheus scrapes, by job and host: ``up`` or ``down`` and, when down, the
    scrape's error.

    CLI Example:

    .. code-block:: bash

        salt web monitoring.targets
    """
    found = {}
    for target in _api("targets", float(timeout), pillar, state="active")["activeTargets"]:
        labels = target["labels"]
        entry = {"health": target["health"], "url": target["scrapeUrl"]}
        if target.get("lastError"):
            entry["error"] = target["lastError"]
        found.setdefault(labels.get("job"), {})[labels.get("instance")] = entry
    return found


def query(expr, timeout=DEFAULT_TIMEOUT, pillar=None):
    """
    An instant PromQL query: a list of ``{labels, value}``.

    CLI Example:

    .. code-block:: bash

        salt web monitoring.query 'patroni_primary == 1'
    """
    data = _api("query", float(timeout), pillar, query=expr)
    if data["resultType"] != "vector":
        return data["result"]
    return [{"labels": item["metric"], "value": float(item["value"][1])} for item in data["result"]]
