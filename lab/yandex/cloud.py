"""The emulated Yandex Cloud: the fake API (fake_api.py) whose instances are lab hosts.

One process (`bin/lab cloud up` starts it in the background, `bin/lab cloud down` ends it):
- the API on loopback (settings.CLOUD_API_PORT), with a service account key of its own;
- `LabMachines`, which the API calls: an instance created boots a lab host of kind "cloud"
  (the cloud image, on its subnet's bridge, with its secondary disks), stop/start/restart/delete
  do the same to the host, and the instance's status follows the host's power; subnets become
  bridges, and the NAT gateway routes and public addresses the router's egress (lab/vpc.py);
- the VMs' metadata service at 169.254.169.254 in the router namespace (EC2 format, which
  cloud-init reads: user-data, ssh-keys), answering each VM by its source address;
- "the internet": the lab's apt repository and wheelhouses over HTTP in the internet namespace,
  as a Debian mirror (flat) and a PyPI simple index, and Yandex Object Storage beside them
  (lab/object_storage.py: INTERNET, a process of its own that lives as long as this one).

What the user runs is unchanged: salt-cloud with the yandex driver and a provider config
(written here, CLOUD_STATE/cloud.providers.d/yandex.conf, from cloud.providers.d/
yandex.conf.example) whose endpoints are this API.
"""

from __future__ import annotations

import collections
import concurrent.futures
import html
import ipaddress
import json
import os
import re
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from lab import host as hosts
from lab import image, object_storage, settings, vpc
from lab.system import LabError, in_netns, log, pid_alive
from lab.yandex.fake_api import FOLDER, FakeYandex
from lab.yandex.fake_api import _handler as api_handler

KEY_ID = "ajeemulatedcloudkey0"
SERVICE_ACCOUNT = "ajeemulatedsa0000001"
PROVIDER_EXAMPLE = settings.REPO / "cloud.providers.d/yandex.conf.example"
YANDEX_PILLAR = settings.REPO / "pillar/cluster_yandex.sls"


def providers_dir() -> Path:
    """The provider configs salt-cloud reads while the emulation runs (bin/master paths)."""
    return settings.CLOUD_STATE / "cloud.providers.d"


# --- instances as lab hosts ---------------------------------------------------------------------


def _address_of(instance: dict) -> str:
    return instance["networkInterfaces"][0]["primaryV4Address"]["address"]


def _host_name(instance: dict) -> str:
    return instance["fqdn"].split(".")[0] if not instance["fqdn"].endswith(".auto.internal") \
        else instance["name"]


class LabMachines:
    """What the fake API calls to make its instances and networks real."""

    def __init__(self) -> None:
        # Boots of a salt-cloud -P map run side by side, as on a cloud.
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="vm")
        self.cidrs: set[str] = set()  # the subnets made into bridges

    def _host(self, instance: dict) -> hosts.Host:
        return hosts.load(_host_name(instance))

    def create(self, fake: FakeYandex, instance: dict) -> concurrent.futures.Future:
        nic = instance["networkInterfaces"][0]
        subnet = fake.subnets[nic["subnetId"]]["v4CidrBlocks"][0]
        disks = {}
        for attached in instance.get("secondaryDisks", []):
            disks[attached["deviceName"]] = max(1, int(fake.disks[attached["diskId"]]["size"]) // 2**30)
        name = _host_name(instance)
        host = hosts.Host(name, _address_of(instance), disks=disks, kind="cloud", subnet=subnet)
        log(f"instance {instance['name']} ({instance['id']}): booting host {name} at "
            f"{host.address} in {subnet}")
        return self.pool.submit(host.create)

    def delete(self, instance: dict) -> concurrent.futures.Future:
        def destroy() -> None:
            try:
                host = self._host(instance)
            except LabError:
                return  # never booted (or already gone)
            log(f"instance {instance['name']}: destroying host {host.name}")
            host.destroy()
        return self.pool.submit(destroy)

    def power(self, instance: dict, verb: str) -> concurrent.futures.Future:
        host = self._host(instance)

        def act() -> None:
            log(f"instance {instance['name']}: {verb}")
            if verb in ("stop", "restart"):
                host.stop()
            if verb in ("start", "restart"):
                host.start()
        return self.pool.submit(act)

    def observe(self, instance: dict) -> None:
        """A VM powered off from inside (or crashed, in the lab) shows STOPPED, as on Yandex."""
        if instance["status"] not in ("RUNNING", "STOPPED"):
            return
        try:
            running = self._host(instance).nspawn_pid() is not None
        except LabError:
            return
        instance["status"] = "RUNNING" if running else "STOPPED"

    def console(self, instance: dict) -> str:
        try:
            log_file = self._host(instance).folder / "console.log"
            return log_file.read_text(errors="replace")[-(1 << 20):]
        except (LabError, OSError):
            return ""

    def network_changed(self, fake: FakeYandex) -> None:
        """Bridges for the subnets, the machine in the master's subnet, and who may go out.
        A failure is the emulation's, not the API caller's: logged, and the API goes on (a VM
        left without its way out then says so when salt-cloud bootstraps it)."""
        try:
            self._network_changed(fake)
        except (LabError, OSError) as exc:
            log(f"error: the emulated network does not follow the API: {exc}")

    def _network_changed(self, fake: FakeYandex) -> None:
        subnets = [s["v4CidrBlocks"][0] for s in fake.subnets.values()]
        for cidr in subnets:
            vpc.ensure_subnet(cidr)
        for gone in self.cidrs - set(subnets):
            vpc.remove_subnet(gone, keep_bridge=gone == master_subnet())
        self.cidrs = set(subnets)
        vpc.join_machine(master_address(), subnets)
        vpc.set_egress(_egress_sources(fake))


def _egress_sources(fake: FakeYandex) -> list[str]:
    """Subnets whose route table sends 0.0.0.0/0 through a NAT gateway, and VMs with a public
    address (one-to-one NAT)."""
    nat_tables = {
        t["id"] for t in fake.route_tables.values()
        if any(r.get("destinationPrefix") == "0.0.0.0/0" and r.get("gatewayId") in fake.gateways
               for r in t.get("staticRoutes", []))
    }
    sources = [s["v4CidrBlocks"][0] for s in fake.subnets.values() if s.get("routeTableId") in nat_tables]
    blocks = [ipaddress.ip_network(b) for b in sources]
    for instance in fake.instances.values():
        for nic in instance["networkInterfaces"]:
            address = nic["primaryV4Address"]["address"]
            # An address inside a block already out would overlap it in the router's set.
            if nic["primaryV4Address"].get("oneToOneNat") and \
                    not any(ipaddress.ip_address(address) in b for b in blocks):
                sources.append(address)
    return sources


def _provider() -> dict:
    """The user's provider config as the example gives it (the emulation fills in the rest)."""
    return yaml.safe_load(PROVIDER_EXAMPLE.read_text())["yandex"]


def master_subnet() -> str:
    """The block of the provider's network that holds the master's address."""
    address = ipaddress.ip_address(master_address())
    for block in _provider().get("network", {}).get("subnets", {}).values():
        if address in ipaddress.ip_network(block):
            return block
    raise LabError(f"{PROVIDER_EXAMPLE}: the master's address {address} is in none of network:subnets")


def master_address() -> str:
    """The salt-master's address as the VMs see it: the provider's minion:master."""
    address = (_provider().get("minion") or {}).get("master")
    if not address:
        raise LabError(f"{PROVIDER_EXAMPLE} has no minion: master: ADDRESS")
    return str(address)


# --- the metadata service -----------------------------------------------------------------------

# cloud-init's Ec2 datasource asks for these versions, newest first, and takes the first that
# answers; the emulation answers the oldest (and `latest`), as a minimal EC2 metadata service.
EC2_VERSIONS = ("latest", "2009-04-04")


def _ssh_keys(metadata: dict) -> list[tuple[str, str]]:
    """(user, key) from the ssh-keys metadata: one `user:key` per line."""
    keys = []
    for line in metadata.get("ssh-keys", "").splitlines():
        user, sep, key = line.partition(":")
        if sep and key.strip():
            keys.append((user.strip(), key.strip()))
    return keys


def ec2_metadata(instance: dict, path: str) -> str | None:
    """The answer to GET /<version>/<path> for an instance, None for 404."""
    meta = instance.get("metadata", {})
    v4 = instance["networkInterfaces"][0]["primaryV4Address"]
    keys = _ssh_keys(meta)
    tree = {
        "instance-id": instance["id"],
        "hostname": instance["fqdn"],
        "local-hostname": instance["fqdn"],
        "local-ipv4": v4["address"],
        "placement/availability-zone": instance["zoneId"],
    }
    if v4.get("oneToOneNat"):
        tree["public-ipv4"] = v4["oneToOneNat"]["address"]
    for n, (_user, key) in enumerate(keys):
        tree[f"public-keys/{n}/openssh-key"] = key
    if path == "user-data":
        return meta.get("user-data")
    if not path.startswith("meta-data"):
        return None
    rest = path.removeprefix("meta-data").strip("/")
    if rest == "public-keys":
        return "\n".join(f"{n}={user}" for n, (user, _) in enumerate(keys))
    if rest in tree:
        return tree[rest]
    prefix = f"{rest}/" if rest else ""
    children = {k[len(prefix):].split("/")[0] + ("/" if "/" in k[len(prefix):] else "")
                for k in tree if k.startswith(prefix)}
    return "\n".join(sorted(children)) if children else None


def _metadata_handler(fake: FakeYandex):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            with fake.lock:
                instance = next((i for i in fake.instances.values()
                                 if _address_of(i) == self.client_address[0]), None)
                version, _, path = self.path.lstrip("/").partition("/")
                body = ec2_metadata(instance, path) if instance and version in EC2_VERSIONS else None
            data = (body if body is not None else "Not Found\n").encode()
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


# --- the internet: a package mirror ---------------------------------------------------------------


def _normalized(project: str) -> str:
    return re.sub(r"[-_.]+", "-", project).lower()


def _mirror_handler(apt_dir: Path, wheel_dirs: list[Path]):
    wheels: dict[str, Path] = {}
    for folder in wheel_dirs:
        for wheel in folder.glob("*.whl"):
            wheels.setdefault(wheel.name, wheel)
    projects: dict[str, list[str]] = {}
    for name in wheels:
        projects.setdefault(_normalized(name.split("-")[0]), []).append(name)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status: int, data: bytes, content_type: str = "text/html") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(data)

        def _file(self, path: Path) -> None:
            if not path.is_file():
                self._send(404, b"Not Found\n", "text/plain")
                return
            self._send(200, path.read_bytes(), "application/octet-stream")

        def do_GET(self):
            path = unquote(self.path.split("?")[0])
            if path.startswith("/debian/"):
                name = path.removeprefix("/debian/").removeprefix("./")  # a flat repository's "./"
                self._file(apt_dir / name if "/" not in name and name else Path("/nonexistent"))
            elif path == "/simple/":
                links = "".join(f'<a href="/simple/{p}/">{p}</a>\n' for p in sorted(projects))
                self._send(200, f"<!DOCTYPE html><html><body>\n{links}</body></html>\n".encode())
            elif path.startswith("/simple/"):
                project = _normalized(path.removeprefix("/simple/").strip("/"))
                if project not in projects:
                    self._send(404, b"Not Found\n", "text/plain")
                    return
                links = "".join(f'<a href="/wheels/{html.escape(w)}">{html.escape(w)}</a>\n'
                                for w in sorted(projects[project]))
                self._send(200, f"<!DOCTYPE html><html><body>\n{links}</body></html>\n".encode())
            elif path.startswith("/wheels/") and path.removeprefix("/wheels/") in wheels:
                self._file(wheels[path.removeprefix("/wheels/")])
            else:
                self._send(404, b"Not Found\n", "text/plain")

        do_HEAD = do_GET

    return Handler


# --- credentials and the provider config --------------------------------------------------------


def _service_account_key(folder: Path) -> bytes:
    """A service account key file as `yc iam key create` writes it; its public key in PEM."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_private(folder / "key.json", json.dumps({
        "id": KEY_ID, "service_account_id": SERVICE_ACCOUNT, "created_at": "2026-12-01T00:00:00Z",
        "key_algorithm": "RSA_2048", "public_key": public.decode(),
        "private_key": "PLEASE DO NOT REMOVE THIS LINE! Yandex.Cloud SA Key ID <" + KEY_ID + ">\n" + pem,
    }).encode())
    return public


def _write_private(path: Path, data: bytes) -> None:
    """A secret, 0600 from its first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _ssh_key(folder: Path) -> Path:
    key = ed25519.Ed25519PrivateKey.generate()
    path = folder / "id_ed25519"
    _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    (folder / "id_ed25519.pub").write_text(public.decode() + " salt-cloud@pglab\n")
    return path


def write_provider_config(folder: Path) -> Path:
    """cloud.providers.d/yandex.conf.example, as a user fills it in, pointed at this API."""
    text = PROVIDER_EXAMPLE.read_text()
    replacements = {
        r"^  folder_id: .*$": f"  folder_id: {FOLDER}",
        r"^  service_account_key_file: .*$": f"  service_account_key_file: {folder / 'key.json'}",
        r"^  ssh_keyfile: .*$": f"  ssh_keyfile: {folder / 'id_ed25519'}",
    }
    for pattern, value in replacements.items():
        text, count = re.subn(pattern, value, text, flags=re.M)
        if count != 1:
            raise LabError(f"{PROVIDER_EXAMPLE} has no line matching {pattern}")
    endpoints = "\n".join(f"  {kind}_url: {settings.CLOUD_API_URL}"
                          for kind in ("iam", "compute", "vpc", "operation"))
    text += (
        "\n  # The emulated cloud (bin/lab cloud up): its API on loopback.\n"
        f"{endpoints}\n"
    )
    out = providers_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / "yandex.conf").write_text("# Written by bin/lab cloud up; not in git.\n" + text)
    return out / "yandex.conf"


# --- the process ---------------------------------------------------------------------------------


def serve() -> None:
    """Run the emulated cloud until SIGTERM (bin/lab cloud up starts this in the background)."""
    folder = settings.CLOUD_STATE
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)  # the service account key and salt-cloud's SSH key live here
    vpc.ensure_router()
    # The master "runs on a VM" of its subnet before salt-cloud makes anything: the machine
    # joins that subnet's bridge now; the router joins it when the API makes the subnet.
    vpc.ensure_subnet(master_subnet(), router=False)
    vpc.join_machine(master_address(), [master_subnet()])
    fake = FakeYandex(page_size=50, polls_until_done=1, token_lifetime=12 * 3600,
                      public_addresses=tuple(f"127.0.78.{n}" for n in range(1, 40)),
                      machines=LabMachines(), default_subnet=False)
    fake.requests = collections.deque(maxlen=200)  # the tests' request log: bounded in a daemon
    fake.add_key(KEY_ID, SERVICE_ACCOUNT, _service_account_key(folder))
    _ssh_key(folder)
    write_provider_config(folder)
    fake.server = ThreadingHTTPServer(("127.0.0.1", settings.CLOUD_API_PORT), api_handler(fake))
    with in_netns(settings.ROUTER_NS):
        metadata = ThreadingHTTPServer((settings.METADATA_ADDRESS, 80), _metadata_handler(fake))
    with in_netns(settings.INTERNET_NS):
        mirror = ThreadingHTTPServer(
            (settings.INTERNET_MIRROR, 80),
            _mirror_handler(image.apt_repo_dir(), [image.wheelhouse_dir(), image.salt_wheelhouse_dir()]))
    object_storage.serve(object_storage.INTERNET, settings.OBJECT_STORAGE_PORT,
                         [settings.OBJECT_STORAGE_ENDPOINT])
    servers = [fake.server, metadata, mirror]
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.2,), daemon=True).start()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    (folder / "ready").write_text(f"{settings.CLOUD_API_URL}\n")
    log(f"emulated Yandex Cloud: API {settings.CLOUD_API_URL}, metadata {settings.METADATA_ADDRESS}, "
        f"mirror {settings.INTERNET_MIRROR}")
    while not stopping.wait(1):
        pass
    for server in servers:
        server.shutdown()
        server.server_close()
    object_storage.stop(object_storage.INTERNET)
    # Boots not yet begun are dropped; `bin/lab cloud down` removes what the others made.
    fake.machines.pool.shutdown(wait=True, cancel_futures=True)
    (folder / "ready").unlink(missing_ok=True)


def users_object_storage() -> list[str]:
    """What the README has a user make with `yc` before deploying with backups in Object
    Storage: the bucket each S3 repository of the Yandex pillar names, and a static access key
    in the file it names (made once; relative to the pillar's directory). What it made."""
    cluster = yaml.safe_load(YANDEX_PILLAR.read_text())["pgcluster"]
    made = []
    for repo in (cluster.get("pgbackrest") or {}).get("repositories") or []:
        if repo.get("type") != "s3":
            continue
        s3 = repo["s3"]
        where = (s3["endpoint"], s3.get("port", settings.OBJECT_STORAGE_PORT))
        if where != (settings.OBJECT_STORAGE_ENDPOINT, settings.OBJECT_STORAGE_PORT):
            raise LabError(f"{YANDEX_PILLAR.name}: the emulated internet serves Object Storage at "
                           f"{settings.OBJECT_STORAGE_ENDPOINT}:{settings.OBJECT_STORAGE_PORT}, "
                           f"not at {where[0]}:{where[1]}")
        object_storage.make_bucket(object_storage.INTERNET, settings.OBJECT_STORAGE_PORT, s3["bucket"])
        made.append(f"bucket {s3['bucket']}")
        key_file = YANDEX_PILLAR.parent / s3["credentials_file"]  # an absolute path stays one
        if not key_file.exists():
            key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            object_storage.write_access_key(key_file)
            made.append(f"access key {key_file}")
    return made


def users_ca() -> list[str]:
    """What a user who brings the organisation's CA has before deploying: its certificate and
    key in the files the Yandex pillar's pgcluster:tls:ca names (relative to the pillar's
    directory), made here once with the openssl command the README gives. What it made."""
    cluster = yaml.safe_load(YANDEX_PILLAR.read_text())["pgcluster"]
    ca = (cluster.get("tls") or {}).get("ca")
    if not ca or "key" not in ca:
        return []
    cert, key = (YANDEX_PILLAR.parent / ca["certificate"], YANDEX_PILLAR.parent / ca["key"])
    if cert.exists() and key.exists():
        return []
    for folder in {cert.parent, key.parent}:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "3650",
                    "-subj", "/O=Example Org/CN=Example Org CA",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                   check=True, capture_output=True, timeout=60)
    key.chmod(0o600)
    return [f"CA certificate {cert}", f"CA key {key}"]


def wait_ready(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (settings.CLOUD_STATE / "ready").exists():
        if time.monotonic() > deadline or not pid_alive(pid):
            raise LabError(f"the emulated cloud did not start in {timeout:.0f}s; see "
                           f"{settings.CLOUD_STATE / 'cloud.log'}")
        time.sleep(0.2)
