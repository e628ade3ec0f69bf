"""Each config file the Salt states render, checked by the config's own tool.

One function per kind of config. Each takes the rendered text, runs the tool that reads that
config on the hosts (haproxy, nginx, nft, Patroni, PgBouncer, PostgreSQL, etcd) and raises
``ConfigInvalid`` (an ``AssertionError``) with the tool's own message when the tool refuses it;
it returns ``None`` when the tool accepts it. ``ToolUnavailable`` means the check could not run
here at all; ``missing(kind)`` tells beforehand, as a reason to skip with.

The rendered files name the cluster's addresses (10.0.0.x) and its ports. The tools that bind
or connect (nginx -t, pgbouncer, etcd, Patroni's validator) run in a network namespace of their
own (``unshare``; a user namespace too when not root): its loopback is up and carries the host
addresses the config listens on, nothing else, so a check never reaches a real network (nor the
lab, which uses 10.0.0.0/24 on this machine) and never collides with a port in use here. The
same namespaces put an empty tmpfs over the directories a tool would write to on the real host
(nginx's log directory, Patroni's data_dir), so the check neither needs root nor touches this
machine. Where a copy of the config has to differ from the rendering, only paths change
(PgBouncer's files, etcd's data dir); every other setting is checked as rendered.
"""

from __future__ import annotations

import atexit
import fcntl
import ipaddress
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import yaml

PATRONI_VERSION = "4.1.5"
PSYCOPG2_VERSION = "2.9.13"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
NOBODY = 65534  # Debian's nobody / nogroup
TOOL_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/local/bin",
                             "/usr/sbin", "/usr/bin", "/sbin", "/bin"])


class ConfigInvalid(AssertionError):
    """The config's own tool refused it; the message is the tool's."""


class ToolUnavailable(RuntimeError):
    """The check cannot run on this machine (a tool or a kernel feature is missing)."""


def _is_root() -> bool:
    return os.geteuid() == 0


def _which(name: str) -> str | None:
    return shutil.which(name, path=TOOL_PATH)


def _tool(name: str) -> str:
    path = _which(name)
    if not path:
        raise ToolUnavailable(f"{name} is not installed (make apt installs it)")
    return path


def _env(**extra: str) -> dict[str, str]:
    """A clean environment: nothing from the caller's (PATRONI_*, ETCD_*...) leaks into a check."""
    return {"PATH": TOOL_PATH, "LANG": "C.UTF-8", "HOME": tempfile.gettempdir(), **extra}


def _run(cmd: Sequence[str], *, stdin: str | None = None, env: dict | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(map(str, cmd)), input=stdin, capture_output=True, text=True,
                          env=env or _env(), timeout=timeout, check=False)


@contextmanager
def _workdir(owner: int | None = None) -> Iterator[Path]:
    """A private temporary folder, removed afterwards; given to ``owner`` (a uid) when set."""
    path = Path(tempfile.mkdtemp(prefix="pgcluster-render-"))
    try:
        if owner is not None:
            os.chown(path, owner, owner)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _write(path: Path, text: str, owner: int | None = None) -> Path:
    path.write_text(text)
    path.chmod(0o644)
    if owner is not None:
        os.chown(path, owner, owner)
    return path


def _fail(what: str, output: str) -> ConfigInvalid:
    return ConfigInvalid(f"{what}:\n{output.strip()}")


# --- namespaces -------------------------------------------------------------------------------

def _host_addresses(hosts: Iterable[str]) -> list[str]:
    """The IPv4 literals among hosts that a namespace's loopback must carry (not 127/8 or any)."""
    found = []
    for host in hosts:
        try:
            address = ipaddress.IPv4Address(host.strip())
        except ValueError:
            continue
        if not address.is_loopback and not address.is_unspecified and str(address) not in found:
            found.append(str(address))
    return found


def _namespaced(argv: Sequence[str], *, addresses: Iterable[str] = (), tmpfs: Iterable[str] = (),
                unprivileged: bool = False) -> list[str]:
    """argv run in new network and mount namespaces (and a user namespace unless root): lo up
    with ``addresses`` on it, an empty tmpfs over each existing folder in ``tmpfs``. With
    ``unprivileged`` the program runs as a non-root user (nobody when root, else the caller)."""
    script = ["set -e", f"{_tool('ip')} link set lo up"]
    script += [f"{_tool('ip')} addr add {shlex.quote(a)}/32 dev lo" for a in addresses]
    script += [f"{_tool('mount')} -t tmpfs -o mode=0755 tmpfs {shlex.quote(d)}"
               for d in tmpfs if os.path.isdir(d)]
    script.append('exec "$@"')
    if _is_root():
        ns = [_tool("unshare"), "--net", "--mount"]
        drop = [_tool("setpriv"), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    else:
        ns = [_tool("unshare"), "--user", "--map-root-user", "--net", "--mount"]
        # Inside, the caller is root of its own user namespace: a nested one maps it back to
        # its own uid, for programs that refuse to run as root (PgBouncer).
        drop = [_tool("unshare"), "--user", f"--map-user={os.getuid()}", f"--map-group={os.getgid()}"]
    return [*ns, "--", "/bin/sh", "-c", "\n".join(script), "sh",
            *(drop if unprivileged else []), *map(str, argv)]


@cache
def _namespace_problem() -> str | None:
    try:
        result = _run(_namespaced(["true"], unprivileged=True), timeout=30)
    except ToolUnavailable as e:
        return str(e)
    if result.returncode != 0:
        who = "root" if _is_root() else "this user (unprivileged user namespaces)"
        return (f"cannot make network and mount namespaces as {who}: "
                f"{(result.stderr or result.stdout).strip()}")
    return None


def _need_namespaces() -> None:
    problem = _namespace_problem()
    if problem:
        raise ToolUnavailable(problem)


def _run_until_ready(cmd: Sequence[str], ready: str, *, env: dict | None = None,
                     timeout: float = 20) -> tuple[bool, list[str]]:
    """Start a server, read its merged output until a line contains ``ready`` (then stop it)
    or it exits. Returns whether it came up, and what it printed."""
    proc = subprocess.Popen(list(map(str, cmd)), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env or _env(),
                            start_new_session=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    output, came_up = [], False
    try:
        while True:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                raise ToolUnavailable(f"{cmd[-1]}: neither up nor failed after {timeout} s:\n"
                                      + "\n".join(output[-40:])) from None
            if line is None:
                break
            output.append(line)
            if ready in line:
                came_up = True
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        proc.stdout.close()
    return came_up, output


# --- HAProxy ----------------------------------------------------------------------------------

def haproxy_cfg(text: str) -> None:
    """``haproxy -c`` in zero-warning mode (-dW): a warning fails too. HAProxy parses and
    resolves everything but binds nothing, so the hosts' addresses need not exist here. It does
    load each ``ca-file``: the cluster CA's path is given a throw-away CA (_tls_files)."""
    haproxy = _tool("haproxy")
    with _workdir() as tmp:
        _tls_files(tmp, None)
        text = re.sub(r"(?<=\bca-file )\S+", str(tmp / "tls-ca.pem"), text)
        path = _write(tmp / "haproxy.cfg", text)
        result = _run([haproxy, "-dW", "-c", "-f", path])
    if result.returncode != 0:
        output = "\n".join(line for line in (result.stdout + result.stderr).splitlines()
                           if not line.startswith("[NOTICE]"))
        raise _fail(f"haproxy -c refused the config (exit {result.returncode})", output)


# --- nginx ------------------------------------------------------------------------------------

NGINX_MAIN = """\
# The context Debian's /etc/nginx/nginx.conf gives a site in conf.d/, with this check's own
# paths. user root: nginx -t runs as (namespace) root, and gives its temp folders to this user.
user root;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log stderr;
include /etc/nginx/modules-enabled/*.conf;
events {{
    worker_connections 768;
}}
http {{
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
{mime}    default_type application/octet-stream;
    access_log {tmp}/access.log;
    include {tmp}/site.conf;
}}
"""


def nginx_site(text: str) -> None:
    """``nginx -t`` on a main config that includes the site inside ``http {}``, as Debian's
    nginx.conf includes conf.d/*.conf. nginx -t opens the log files and binds the listen
    sockets: it runs in its own namespaces, with a tmpfs over the logs' folders and the
    listen addresses on its loopback."""
    nginx = _tool("nginx")
    _need_namespaces()
    logs = {os.path.dirname(p) for p in re.findall(r"^\s*(?:access|error)_log\s+(/[^\s;]+)", text, re.M)}
    listens = re.findall(r"^\s*listen\s+(\d+\.\d+\.\d+\.\d+)", text, re.M)
    mime = "    include /etc/nginx/mime.types;\n" if os.path.exists("/etc/nginx/mime.types") else ""
    with _workdir() as tmp:
        tmp.chmod(0o755)
        _write(tmp / "site.conf", text)
        conf = _write(tmp / "nginx.conf", NGINX_MAIN.format(tmp=tmp, mime=mime))
        result = _run(_namespaced([nginx, "-t", "-q", "-e", "stderr", "-p", tmp, "-c", conf],
                                  addresses=_host_addresses(listens), tmpfs=sorted(logs)))
    if result.returncode != 0:
        raise _fail(f"nginx -t refused the site (exit {result.returncode})", result.stderr + result.stdout)


# --- nftables ---------------------------------------------------------------------------------

def nftables_conf(text: str) -> None:
    """``nft -c -f``: parsed and checked by the kernel (netlink), not applied; in a network
    namespace of its own, so neither root nor this machine's ruleset is involved."""
    nft = _tool("nft")
    _need_namespaces()
    with _workdir() as tmp:
        path = _write(tmp / "nftables.conf", text)
        result = _run(_namespaced([nft, "-c", "-f", path]))
    if result.returncode != 0:
        raise _fail(f"nft -c refused the ruleset (exit {result.returncode})", result.stderr + result.stdout)


# --- Patroni ----------------------------------------------------------------------------------

def _cache_root() -> Path:
    if os.environ.get("PGCLUSTER_TEST_CACHE"):
        return Path(os.environ["PGCLUSTER_TEST_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    try:
        (base / "pgcluster-tests").mkdir(parents=True, exist_ok=True)
        if os.access(base / "pgcluster-tests", os.W_OK):
            return base / "pgcluster-tests"
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"pgcluster-tests-{os.getuid()}"


def patroni_venv() -> Path:
    """Patroni as the hosts run it (patroni[etcd3]==4.1.5, psycopg2-binary==2.9.13 in a venv
    of Debian's python3), made once under the user's cache folder and reused: ~10 s the first
    time, nothing after. Returns the venv's ``bin/patroni``."""
    py = f"py{sys.version_info.major}.{sys.version_info.minor}"
    venv = _cache_root() / f"patroni-{PATRONI_VERSION}-psycopg2-{PSYCOPG2_VERSION}-{py}"
    patroni = venv / "bin" / "patroni"
    if (venv / ".installed").exists():
        return patroni
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / ".installed").exists():
            return patroni
        shutil.rmtree(venv, ignore_errors=True)
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        steps = [[python, "-m", "venv", venv],
                 [venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check",
                  f"patroni[etcd3]=={PATRONI_VERSION}", f"psycopg2-binary=={PSYCOPG2_VERSION}"]]
        for step in steps:
            result = _run(step, env={**os.environ}, timeout=600)
            if result.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                said = (result.stderr or result.stdout)[-2000:]
                raise ToolUnavailable(f"cannot install Patroni into {venv}: {' '.join(map(str, step))} "
                                      f"exited {result.returncode}:\n{said}")
        (venv / ".installed").touch()
    return patroni


# Patroni checks that each DCS host answers a TCP connect: no etcd runs here (and none may be
# reached from a check), so that one message is dropped. Its host:port parsing still applies.
_UNREACHABLE = re.compile(r"^\S+ (\S+) didn't pass validation: \1 is not reachable$")


def patroni_config(text: str) -> None:
    """``patroni --validate-config --ignore-listen-port``, Patroni's own validator: required
    keys, types, values, bin_dir's programs. Run in a network namespace (no connection to the
    addresses in the file) with an empty tmpfs over data_dir where this machine has one, as on
    a host not yet bootstrapped. Patroni's validator ignores keys it does not know: a typo'd
    optional key (``ttl`` as ``tll``) passes it, a typo'd required one does not."""
    _need_namespaces()
    patroni = patroni_venv()
    try:
        data_dir = ((yaml.safe_load(text) or {}).get("postgresql") or {}).get("data_dir")
    except (yaml.YAMLError, AttributeError):
        data_dir = None  # Patroni says what is wrong with it
    tmpfs = [data_dir] if isinstance(data_dir, str) and data_dir.startswith("/") else []
    with _workdir() as tmp:
        tmp.chmod(0o755)
        path = _write(tmp / "patroni.yml", text)
        result = _run(_namespaced([patroni, "--validate-config", "--ignore-listen-port", path],
                                  tmpfs=tmpfs))
    if result.returncode == 0:
        return
    output = (result.stderr + result.stdout).strip().splitlines()
    if "Traceback (most recent call last):" in output:
        # A file Patroni could not load (YAML): its exception, without the frames.
        start = max(i for i, line in enumerate(output) if line.startswith("  File "))
        while start + 1 < len(output) and output[start + 1].startswith("    "):
            start += 1
        output = output[start + 1:]
    errors = [line for line in output if not _UNREACHABLE.match(line)]
    if errors or not output:
        raise _fail(f"patroni --validate-config refused the config (exit {result.returncode})",
                    "\n".join(errors or ["(no output)"]))


# --- PgBouncer --------------------------------------------------------------------------------

# Settings that name files or folders: pointed into the check's own folder in the copy it runs.
_PGBOUNCER_PATHS = {"logfile": "pgbouncer.log", "pidfile": "pgbouncer.pid", "unix_socket_dir": "sock",
                    "auth_file": "userlist.txt",
                    # TLS: a throw-away certificate, key and CA of the check's own (_tls_files).
                    **{f"{side}_tls_{kind}_file": f"tls-{kind}.pem"
                       for side in ("client", "server") for kind in ("cert", "key", "ca")}}


def _tls_files(tmp: Path, owner: int | None) -> None:
    """A self-signed certificate and its key in tmp, standing in for a host's and its CA's: the
    check is of the settings, not of the files the host will have."""
    from tests.certificates import issue

    cert, key = issue("pgcluster-render-check")
    _write(tmp / "tls-cert.pem", cert.decode(), owner)
    _write(tmp / "tls-ca.pem", cert.decode(), owner)
    _write(tmp / "tls-key.pem", key.decode(), owner).chmod(0o600)


def _pgbouncer_copy(text: str, tmp: Path) -> tuple[str, list[str]]:
    """The ini with only its paths moved into tmp, and the addresses it listens on."""
    out, section, listen = [], None, []
    for line in text.splitlines():
        stripped = line.strip()
        header = re.match(r"^\[(.+)\]$", stripped)
        if header:
            section = header.group(1).strip().lower()
        setting = re.match(r"^([A-Za-z_]+)\s*=\s*(.*)$", stripped)
        if section == "pgbouncer" and setting:
            key = setting.group(1).lower()
            if key in _PGBOUNCER_PATHS:
                out.append(f"{key} = {tmp / _PGBOUNCER_PATHS[key]}")
                continue
            if key == "listen_addr":
                listen = setting.group(2).split(",")
        out.append(line)
    return "\n".join(out) + "\n", listen


def pgbouncer_ini(text: str, userlist_text: str) -> None:
    """PgBouncer has no check flag: it is started in the foreground on a copy of the ini whose
    paths (logfile, pidfile, unix_socket_dir, auth_file) point into a temporary folder and
    every other setting is as rendered, in a network namespace carrying its listen addresses
    (same port), as an unprivileged user. Valid when it logs "process up" with no warning or
    error before; its own ERROR/FATAL lines otherwise (an unknown key, a bad value...)."""
    pgbouncer = _tool("pgbouncer")
    _need_namespaces()
    owner = NOBODY if _is_root() else None
    with _workdir(owner) as tmp:
        (tmp / "sock").mkdir()
        if owner is not None:
            os.chown(tmp / "sock", owner, owner)
        ini, listen = _pgbouncer_copy(text, tmp)
        _tls_files(tmp, owner)
        path = _write(tmp / "pgbouncer.ini", ini, owner)
        _write(tmp / "userlist.txt", userlist_text, owner)
        came_up, output = _run_until_ready(
            _namespaced([pgbouncer, path], addresses=_host_addresses(listen), unprivileged=True),
            "process up:")
    complaints = [line for line in output if re.search(r"\b(WARNING|ERROR|FATAL)\b", line)]
    if not came_up or complaints:
        what = "pgbouncer refused the config" if not came_up else "pgbouncer complained about the config"
        raise _fail(what, "\n".join(complaints or output[-20:]))


# --- pg_hba.conf ------------------------------------------------------------------------------

class _HbaChecker:
    """A throw-away PostgreSQL 15 data folder (initdb once per process, ~1 s) whose stand-alone
    backend (postgres --single: no server, no port) reads a pg_hba file through the
    pg_hba_file_rules view, i.e. with the server's own parser."""

    QUERY = ("SELECT 'hba-error ' || line_number || ': ' || error FROM pg_hba_file_rules"
             " WHERE error IS NOT NULL ORDER BY line_number\n"
             "SELECT 'hba-rules ' || count(*) FROM pg_hba_file_rules\n")

    def __init__(self):
        for program in ("initdb", "postgres"):
            if not (PG_BIN / program).exists():
                raise ToolUnavailable(f"{PG_BIN / program} is missing: PostgreSQL 15 is not installed "
                                      "(make apt installs postgresql-15)")
        self.prefix = ["runuser", "-u", "postgres", "--"] if _is_root() else []
        self.lock = threading.Lock()
        self.dir = Path(tempfile.mkdtemp(prefix="pgcluster-hba-"))
        atexit.register(shutil.rmtree, self.dir, True)
        self.dir.chmod(0o755)
        if _is_root():
            shutil.chown(self.dir, "postgres")
        self.data = self.dir / "data"
        result = _run([*self.prefix, PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust",
                       "-E", "UTF8", "--locale", "C.UTF-8", "--no-sync"], timeout=120)
        if result.returncode != 0:
            raise ToolUnavailable(f"initdb failed:\n{result.stderr or result.stdout}")

    def errors(self, text: str) -> list[str]:
        with self.lock:
            hba = _write(self.dir / "pg_hba.conf", text)
            result = _run([*self.prefix, PG_BIN / "postgres", "--single", "-D", self.data,
                           "-c", f"hba_file={hba}", "-c", "log_min_messages=fatal",
                           # hostssl lines are refused unless ssl is on (the single-user
                           # backend loads no certificate).
                           "-c", "ssl=on", "postgres"],
                          stdin=self.QUERY, timeout=60)
        values = re.findall(r'= "(hba-(?:error|rules) .*)"\t\(typeid', result.stdout)
        if result.returncode != 0 or not any(v.startswith("hba-rules ") for v in values):
            raise ToolUnavailable(f"postgres --single failed (exit {result.returncode}):\n"
                                  f"{result.stderr[-2000:]}{result.stdout[-2000:]}")
        return [v.removeprefix("hba-error ") for v in values if v.startswith("hba-error ")]


@cache
def _hba_checker() -> _HbaChecker:
    return _HbaChecker()


def pg_hba(lines: Sequence[str] | str) -> None:
    """PostgreSQL 15's own parser on pg_hba.conf lines (Patroni's ``postgresql.pg_hba`` list,
    which Patroni writes one per line, or the file's text): every line pg_hba_file_rules marks
    with an error fails, with PostgreSQL's message and the line."""
    text = lines if isinstance(lines, str) else "\n".join(lines) + "\n"
    errors = _hba_checker().errors(text)
    if errors:
        numbered = text.splitlines()
        shown = []
        for error in errors:
            number = int(error.split(":", 1)[0])
            shown.append(f"line {error}\n    {numbered[number - 1] if number <= len(numbered) else ''}")
        raise _fail("PostgreSQL 15 refused pg_hba lines", "\n".join(shown))


# --- etcd -------------------------------------------------------------------------------------

def _env_file(text: str) -> dict[str, str]:
    """An EnvironmentFile as systemd reads it (KEY=VALUE, quotes, # and ; comments)."""
    env = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", stripped)
        if not match:
            raise ConfigInvalid(f"etcd env file line {number}: not KEY=VALUE: {line!r}")
        try:
            words = shlex.split(match.group(2))
        except ValueError as e:
            raise ConfigInvalid(f"etcd env file line {number}: {e}: {line!r}") from None
        env[match.group(1)] = " ".join(words)
    return env


def etcd_env(text: str) -> None:
    """etcd 3.4 has no check flag: it is started with the file's variables (data and WAL dirs
    moved into a temporary folder, nothing else changed) in a network namespace that carries
    the addresses it listens on. Valid when it gets as far as listening for its peers, with no
    complaint from its flag parser (a misspelled ETCD_* variable is only a warning there: here
    it fails); etcd's own error otherwise (a bad value, a name missing from the initial
    cluster, an advertise URL that does not match it...). Its certificate files are stand-ins.
    It waits for its peers, which cannot be reached from the namespace, and is stopped."""
    etcd = _tool("etcd")
    _need_namespaces()
    env = _env_file(text)
    with _workdir() as tmp:
        for key in ("ETCD_DATA_DIR", "ETCD_WAL_DIR"):
            if key in env:
                env[key] = str(tmp / key.lower())
        # The certificate files the host will have: throw-away ones stand in for them.
        _tls_files(tmp, None)
        stand_ins = {"CERT_FILE": "tls-cert.pem", "KEY_FILE": "tls-key.pem",
                     "TRUSTED_CA_FILE": "tls-ca.pem"}
        for key in list(env):
            for suffix, name in stand_ins.items():
                if key in (f"ETCD_{suffix}", f"ETCD_PEER_{suffix}"):
                    env[key] = str(tmp / name)
        urls = ",".join(env.get(k, "") for k in ("ETCD_LISTEN_PEER_URLS", "ETCD_LISTEN_CLIENT_URLS"))
        hosts = []
        for url in filter(None, (u.strip() for u in urls.split(","))):
            try:
                hosts.append(urlsplit(url).hostname or "")
            except ValueError:
                pass  # etcd says what is wrong with it
        args = shlex.split(env.pop("DAEMON_ARGS", ""))
        came_up, output = _run_until_ready(
            _namespaced([etcd, *args], addresses=_host_addresses(hosts)),
            "listening for peers on", env=_env(**env))
    complaints = [line for line in output
                  if re.search(r" (?:[ECF] \| |W \| pkg/flags)", line) or '"level":"error"' in line]
    if not came_up or complaints:
        raise _fail("etcd refused the environment" if not came_up else "etcd did not take every variable",
                    "\n".join(complaints or output[-20:]))


# --- Prometheus and Alertmanager -------------------------------------------------------------

def prometheus_config(config_text: str, rules_text: str) -> None:
    """``promtool check config`` on prometheus.yml with its rule files (``promtool check
    rules`` on each): the rule_files glob points at this check's copy of the rules."""
    promtool = _tool("promtool")
    with _workdir() as tmp:
        (tmp / "rules").mkdir()
        _write(tmp / "rules" / "pgcluster.yml", rules_text)
        config = yaml.safe_load(config_text)
        config["rule_files"] = [str(tmp / "rules" / "*.yml")]
        path = _write(tmp / "prometheus.yml", yaml.safe_dump(config))
        result = _run([promtool, "check", "config", path])
    if result.returncode != 0:
        raise _fail(f"promtool check config refused it (exit {result.returncode})",
                    result.stdout + result.stderr)


def alertmanager_config(text: str) -> None:
    """``amtool check-config``."""
    amtool = _tool("amtool")
    with _workdir() as tmp:
        result = _run([amtool, "check-config", _write(tmp / "alertmanager.yml", text)])
    if result.returncode != 0:
        raise _fail(f"amtool check-config refused it (exit {result.returncode})",
                    result.stdout + result.stderr)


# --- availability -----------------------------------------------------------------------------

def missing(kind: str) -> str | None:
    """Why the validator ``kind`` (its function's name) cannot run here, or None."""
    tools = {"haproxy_cfg": ["haproxy"], "nginx_site": ["nginx"], "nftables_conf": ["nft"],
             "patroni_config": [], "pgbouncer_ini": ["pgbouncer"], "pg_hba": [], "etcd_env": ["etcd"],
             "prometheus_config": ["promtool"], "alertmanager_config": ["amtool"]}
    for tool in tools[kind]:
        if not _which(tool):
            return f"{tool} is not installed (make apt installs it)"
    if kind not in {"haproxy_cfg", "pg_hba", "prometheus_config", "alertmanager_config"}:
        problem = _namespace_problem()
        if problem:
            return problem
    try:
        if kind == "pg_hba":
            _hba_checker()
        if kind == "patroni_config":
            if not (PG_BIN / "pg_ctl").exists():
                return f"PostgreSQL 15 is not installed ({PG_BIN}, Patroni's bin_dir check needs it)"
            patroni_venv()
    except ToolUnavailable as e:
        return str(e)
    return None
