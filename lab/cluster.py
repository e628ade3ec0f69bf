"""The deployed cluster as its pillar describes it, for the lab tests and the benchmarks.

Names, addresses, ports and timings come from the cluster model as Salt renders it from the
repo's pillar (``salt-call --local pgcluster.config``, the same function every state reads),
never from constants of their own: change a port in pillar and the tests follow. Also the one
Salt wrapper (``salt``) and the one "who is the leader" (``leader``) they share.
"""

from __future__ import annotations

import functools
import json
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import settings

SALT_BIN = settings.VENV / "bin"


def salt(*args: str, tool: str = "salt", timeout: int = 120, check: bool = False) -> dict:
    """`.venv/bin/<tool> ARGS --out=json` from the repo root, parsed ({minion: return} for
    salt). A run that printed no JSON gives {}, or with check=True raises RuntimeError with
    what it printed; so does, with check=True, a non-zero exit."""
    extra = ["--static", "-t", str(timeout)] if tool == "salt" else []
    out = subprocess.run([SALT_BIN / tool, *args, "--out=json", *extra], cwd=settings.REPO,
                         capture_output=True, text=True, check=False, timeout=timeout + 600)
    try:
        parsed = json.loads(out.stdout or "{}")
    except json.JSONDecodeError:
        parsed = None
    if check and (parsed is None or out.returncode != 0):
        raise RuntimeError(f"{tool} {' '.join(args)} exited {out.returncode}:\n"
                           f"{out.stdout[-4000:]}{out.stderr[-4000:]}")
    return parsed if isinstance(parsed, dict) else {}


@dataclass(frozen=True)
class Cluster:
    """The model (pgcluster.config) and what the tests ask of it most."""

    model: dict

    @property
    def name(self) -> str:
        return self.model["name"]

    @property
    def members(self) -> dict[str, str]:
        """{member: address}, in member order."""
        return {n: self.model["members"][n]["address"] for n in self.model["member_names"]}

    @property
    def web(self) -> str:
        """The (first) web host's minion id."""
        return self.model["web_names"][0]

    @property
    def web_address(self) -> str:
        return self.model["web"][self.web]["address"]

    @property
    def hosts(self) -> dict[str, str]:
        """Every host of the cluster: {minion id: address}."""
        return {**self.members, self.web: self.web_address}

    @property
    def url(self) -> str:
        port = self.model["webapp"]["port"]
        return f"http://{self.web_address}" + ("" if port == 80 else f":{port}")

    @property
    def primary_port(self) -> int:
        return self.model["haproxy"]["primary_port"]

    @property
    def replica_port(self) -> int:
        return self.model["haproxy"]["replica_port"]

    @property
    def patroni_port(self) -> int:
        return self.model["patroni"]["restapi_port"]

    @property
    def etcd_port(self) -> int:
        return self.model["etcd"]["client_port"]

    @property
    def ttl(self) -> int:
        return self.model["patroni"]["ttl"]

    @property
    def retry_timeout(self) -> int:
        return self.model["patroni"]["retry_timeout"]

    @property
    def settled_roles(self) -> list[str]:
        """patroni.list's roles, sorted, once a healthy cluster has named its synchronous
        standbys as the pillar's synchronous_mode asks: with quorum every replica is one of
        the quorum, with true synchronous_node_count of them are named."""
        patroni = self.model["patroni"]
        replicas = len(self.members) - 1
        mode, count = patroni["synchronous_mode"], patroni["synchronous_node_count"]
        if mode == "quorum":
            standbys = ["Quorum Standby"] * replicas
        elif mode:
            standbys = ["Sync Standby"] * count + ["Replica"] * (replicas - count)
        else:
            standbys = ["Replica"] * replicas
        return sorted(["Leader", *standbys])

    @property
    def app(self) -> dict[str, str]:
        return self.model["app"]

    @property
    def backup(self) -> dict:
        """pgcluster:pgbackrest (host and stanza filled in)."""
        return self.model["pgbackrest"]

    def patroni_url(self, member: str, path: str = "") -> str:
        """A member's REST API as Patroni advertises it (https with pgcluster:patroni:tls)."""
        return self.model["patroni"]["urls"][member] + path

    def open_patroni(self, request: str | urllib.request.Request, timeout: float):
        """urlopen for Patroni's REST API: over HTTPS it trusts only the cluster's CA."""
        context = _cluster_ca_context(self.model) if self.model["patroni"]["tls"] else None
        return urllib.request.urlopen(request, timeout=timeout, context=context)

    def etcd_url(self, member: str) -> str:
        """A member's etcd client URL (https with pgcluster:etcd:tls)."""
        return self.model["etcd"]["urls"][member]

    def etcd(self, member: str, path: str, body: dict | None = None, timeout: float = 2,
             user: str | None = "reader") -> dict:
        """One call to a member's etcd (its v3 JSON gateway): with etcd's TLS, trusting the
        cluster's CA only; with its authentication, as ``user`` (None: no token). etcd's
        refusals raise urllib's HTTPError."""
        etcd = self.model["etcd"]
        tls = _cluster_ca_context(self.model) if etcd["tls"] else None
        token = _etcd_token(self, member, user, tls) if user and etcd["auth"] else None
        for attempt in (1, 2):
            # The v3 gateway takes POSTs with a JSON body; /health is a GET.
            data = json.dumps(body or {}).encode() if path.startswith("/v3/") else None
            request = urllib.request.Request(
                self.etcd_url(member) + path, data=data,
                headers={"Content-Type": "application/json",
                         **({"Authorization": token} if token else {})})
            try:
                with urllib.request.urlopen(request, timeout=timeout, context=tls) as answer:
                    return json.load(answer)
            except urllib.error.HTTPError as error:
                if attempt == 2 or error.code != 401 or not token:
                    raise
                # etcd forgets an unused token after 5 minutes: ask for another, once.
                _ETCD_TOKENS.pop((member, user), None)
                token = _etcd_token(self, member, user, tls)
        raise AssertionError("unreachable")


# The cluster's own CA as the master keeps it (_runners/pgcluster_ca.py): ca.crt, ca.key.
CA_STORE = settings.REPO / "pillar" / "generated" / "pki"


def cluster_ca_file(model: dict) -> Path:
    """The certificate of the CA that signs the hosts': the user's (pgcluster:tls:ca, relative
    to the pillar's directory), or the master's own."""
    users = model["tls"]["ca"]
    return settings.REPO / "pillar" / users["certificate"] if users else CA_STORE / "ca.crt"


def _cluster_ca_context(model: dict) -> ssl.SSLContext:
    """Trusts the cluster's CA only."""
    return ssl.create_default_context(cafile=cluster_ca_file(model))


_ETCD_TOKENS: dict[tuple[str, str], str] = {}


def _etcd_token(c: Cluster, member: str, user: str, tls: ssl.SSLContext | None) -> str:
    """etcd's token for ``user`` (its generated password, pgcluster_credentials:etcd_USER)."""
    if (member, user) not in _ETCD_TOKENS:
        request = urllib.request.Request(
            c.etcd_url(member) + "/v3/auth/authenticate",
            data=json.dumps({"name": user, "password": credentials()[f"etcd_{user}"]}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5, context=tls) as answer:
            _ETCD_TOKENS[(member, user)] = json.load(answer)["token"]
    return _ETCD_TOKENS[(member, user)]


def _local(*args: str) -> object:
    """A masterless salt-call over the repo's states and pillar (etc/salt/minion)."""
    return salt("--local", *args, tool="salt-call", check=True, timeout=120)["local"]


@functools.cache
def cluster() -> Cluster:
    return Cluster(_local("pgcluster.config"))


@functools.cache
def credentials() -> dict[str, str]:
    """The generated passwords (a member's share is all of them), as the pillar gives them."""
    return _local("--id", cluster().model["bootstrap_member"], "pillar.get",
                  "pgcluster_credentials", "unmask=True")


def secrets() -> list[str]:
    """Every secret the pillar gives the hosts, as strings: the passwords and the object
    storage's access keys (not its CA's certificate, which is public)."""
    found: list[str] = []

    def walk(value: object, key: str | None = None) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, str) and value and key != "ca":
            found.append(value)

    walk(credentials())
    return found


def on_web(function: str, *args: str, timeout: int = 120, check: bool = False) -> object:
    """An execution module function on the web host: what it returned (None if no answer)."""
    web = cluster().web
    return salt(web, function, *args, timeout=timeout, check=check).get(web)


# The roles patroni.list gives a replica that acknowledges commits: named by Patroni with
# synchronous_mode true, one of the quorum with synchronous_mode quorum.
SYNCHRONOUS_ROLES = ("Sync Standby", "Quorum Standby")


def roles() -> dict[str, str]:
    """{member: role} as `patroni.list` reports it ("Leader", "Quorum Standby", "Sync Standby",
    "Replica")."""
    listing = on_web("patroni.list")
    return {m["name"]: m["role"] for m in listing["members"]}


def spare_replica() -> str:
    """A replica whose loss stalls no write: an asynchronous one when there is one, else (with
    quorum commit, where any one standby may be lost) the first of the standbys."""
    current = roles()
    spare = [n for n, r in sorted(current.items()) if r == "Replica"]
    return (spare or [n for n, r in sorted(current.items()) if r in SYNCHRONOUS_ROLES])[0]


def leader() -> str:
    """The member Patroni lists as the leader."""
    return next(name for name, role in roles().items() if role == "Leader")
