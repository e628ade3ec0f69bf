"""Patroni's patronictl, with a bound on the wait for etcd.

Patroni's own patronictl, when none of the etcd endpoints in its configuration answers, logs
"Failed to get list of machines" every 5 s and waits without end (``get_etcd_client`` in
patroni/dcs/etcd.py loops until one answers); Patroni's ``retry_timeout`` does not bound that
wait. Run on a member whose etcd is stopped and which is cut off from the others, it never
returns. This asks every endpoint at once first (etcd's member list, the call patronictl starts
with) and, when none answers within ``PGCLUSTER_ETCD_WAIT`` seconds, says which endpoints were
asked and what each did, and exits 1. When one answers, Patroni's patronictl runs as it is, with
this host's configuration (``PATRONICTL_CONFIG_FILE``, set by the ``patronictl`` on the PATH),
and its own timeouts apply from there.

It runs with the Python of Patroni's virtual environment (``patronictl`` is found next to it)
and uses only the standard library and PyYAML, which Patroni needs anyway.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import yaml

DEFAULT_WAIT = 10.0
DCS_SECTIONS = ("etcd3", "etcd")


def config_path(args: list[str]) -> str | None:
    """The configuration file patronictl will read: ``-c``/``--config-file``, else the environment."""
    for i, arg in enumerate(args):
        if arg in ("-c", "--config-file") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--config-file="):
            return arg.split("=", 1)[1]
        if arg.startswith("-c") and len(arg) > 2:
            return arg[2:]
    return os.environ.get("PATRONICTL_CONFIG_FILE")


def asks_etcd(args: list[str]) -> bool:
    """False when patronictl will not reach for the configured etcd: help, its version alone, or
    a DCS given on the command line (the user's own choice of where to look)."""
    if os.environ.get("DCS_URL") or any(a in ("-h", "--help", "-d", "--dcs", "--dcs-url")
                                        or a.startswith(("--dcs=", "--dcs-url=")) for a in args):
        return False
    words = [a for i, a in enumerate(args)
             if not a.startswith("-") and (i == 0 or args[i - 1] not in ("-c", "--config-file"))]
    return bool(words) and words[0] != "version"


def endpoints(config: dict) -> tuple[list[str], dict]:
    """The etcd client URLs and the section they come from (``hosts``, ``host`` or ``url``)."""
    for name in DCS_SECTIONS:
        section = config.get(name)
        if not isinstance(section, dict):
            continue
        protocol = section.get("protocol", "http")
        if section.get("url"):
            return [str(section["url"]).rstrip("/")], section
        hosts = section.get("hosts") or section.get("host") or []
        if isinstance(hosts, str):
            hosts = hosts.split(",")
        return [f"{protocol}://{str(h).strip()}" for h in hosts if str(h).strip()], section
    return [], {}


def tls_context(section: dict) -> ssl.SSLContext | None:
    """The TLS context Patroni would use for etcd: its CA, and its client certificate if any."""
    if not section.get("cacert") and not section.get("cert"):
        return None
    context = ssl.create_default_context(cafile=section.get("cacert"))
    if section.get("cert"):
        context.load_cert_chain(section["cert"], section.get("key"))
    return context


def ask(url: str, timeout: float, context: ssl.SSLContext | None) -> str | None:
    """None when etcd at url answers (any HTTP answer is an answer), else what happened."""
    request = urllib.request.Request(f"{url}/v3/cluster/member/list", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    # As Patroni's client does, straight to etcd: no proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(request, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as e:
        reason = e.reason
    except OSError as e:
        reason = e
    if isinstance(reason, TimeoutError):
        return f"no answer in {timeout:g} s"
    return getattr(reason, "strerror", None) or str(reason)


def first_answer(urls: list[str], timeout: float, context: ssl.SSLContext | None) -> dict[str, str]:
    """Ask every URL at once; {} as soon as one answers, else {url: what happened} for each."""
    failures: dict[str, str] = {}
    pool = ThreadPoolExecutor(max_workers=len(urls))
    pending = {pool.submit(ask, url, timeout, context): url for url in urls}
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                url = pending.pop(future)
                problem = future.result()
                if problem is None:
                    return {}
                failures[url] = problem
        return failures
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def unanswered(args: list[str], wait_s: float) -> str | None:
    """The message to stop with when no configured etcd endpoint answers, else None."""
    path = config_path(args)
    if not asks_etcd(args) or not path or not os.access(path, os.R_OK):
        return None  # patronictl itself says what is wrong with a missing file
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError:
        return None
    urls, section = endpoints(config if isinstance(config, dict) else {})
    if not urls:
        return None
    failures = first_answer(urls, wait_s, tls_context(section))
    if not failures:
        return None
    said = "; ".join(f"{url}: {problem}" for url, problem in failures.items())
    return (f"patronictl: no etcd endpoint of {path} answers ({said}). Patroni's patronictl would "
            f"wait for one without end, so it was not started. Is etcd running on the members "
            f"(systemctl status etcd) and reachable from this host?")


def main() -> None:
    args = sys.argv[1:]
    wait_s = float(os.environ.get("PGCLUSTER_ETCD_WAIT") or DEFAULT_WAIT)
    message = unanswered(args, wait_s)
    if message:
        print(message, file=sys.stderr)
        sys.exit(1)
    patronictl = str(Path(sys.executable).parent / "patronictl")
    os.execv(patronictl, [patronictl, *args])


if __name__ == "__main__":
    main()
