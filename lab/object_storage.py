"""The lab's stand-in for Yandex Object Storage: an S3-compatible store on the bridge's address.

The lab pillar's S3 repository names Object Storage as on Yandex Cloud (its endpoint, region and
a bucket) plus the two things only a private store needs: its ``address`` (written to the
hosts' /etc/hosts, so the endpoint's name reaches the bridge) and a ``ca_file``. This serves it.

Why moto: the store must run here from Debian's or PyPI's packages and pgBackRest 2.45 must work
with it. moto 5.2.5 (PyPI) implements S3's protocol (SigV4-signed requests, host-style
addressing, ListObjectsV2, multipart upload) well enough that backup, async archive-push and
archive-get and a point-in-time restore all work (../shared/notes/backups.md); MinIO and Ceph's
RGW are in neither. Its limits, which the tests do not lean on: it keeps objects in memory (the
repository lives as long as the process, i.e. the lab) and accepts any access key.

moto's S3 application is served by gunicorn (one worker: the objects live in its memory) over
TLS with a certificate of a small CA of the lab's own; pgBackRest checks the certificate by the
name it connects to (the endpoint, or bucket.endpoint: a wildcard covers every bucket). moto's
own development server closes TLS without a shutdown, which pgBackRest refuses. It runs from a
venv of its own in the lab's cache: moto's botocore and Salt disagree on python-dateutil.

The CA and the access key live in pillar/generated/lab-object-storage/ (out of git), where the
lab pillar names them; :func:`ensure_files` makes them before anything renders that pillar.

The emulated Yandex Cloud (lab/yandex/cloud.py) runs a second store, :data:`INTERNET`: Object
Storage itself, at storage.yandexcloud.net on the emulated internet, with a certificate of that
internet's own CA, which its VMs trust as they trust the public ones.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import signal
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from . import settings
from .image import _digest
from .system import LabError, in_netns, log, pid_alive, pid_cmdline, run, wait_for

REQUIREMENTS = settings.REPO / "lab" / "object-storage-requirements.txt"


@dataclass(frozen=True)
class Store:
    """One object store: its CA and certificate (in ``files``), where it listens, its process."""

    name: str
    files: Path
    address: str
    pidfile: Path
    logfile: Path
    netns: str | None = None  # the namespace it runs and answers in (None: the machine's)

    @property
    def ca_cert(self) -> Path:
        return self.files / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.files / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.files / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.files / "server.key"


# The lab's, on the bridge; where the lab pillar's S3 repository names it.
LAB = Store("the lab's object storage", settings.REPO / "pillar" / "generated" / "lab-object-storage",
            settings.GATEWAY, settings.RUN / "object-storage.pid", settings.STATE / "object-storage.log")
# Yandex Object Storage on the emulated internet, beside the package mirror.
INTERNET = Store("the emulated Object Storage", settings.INTERNET_PKI,
                 settings.INTERNET_MIRROR, settings.RUN / "internet-object-storage.pid",
                 settings.CLOUD_STATE / "object-storage.log", netns=settings.INTERNET_NS)
CREDENTIALS = LAB.files / "credentials.yaml"


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _sign(subject: str, key, issuer_key, *, issuer: x509.Name | None, sans: list[str] | None,
          address: str | None = None, days: int) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=sans is None, path_length=None),
                              critical=True))
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(s) for s in sans]
            + [x509.IPAddress(ipaddress.IPv4Address(address))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ensure_ca(store: Store) -> Path:
    """The store's CA certificate, made once."""
    store.files.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not (store.ca_cert.exists() and store.ca_key.exists()):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(store.ca_key, _key_pem(key))
        _write(store.ca_cert, _pem(_sign(f"pglab {store.name} CA", key, key, issuer=None, sans=None,
                                         days=3650)))
    return store.ca_cert


def write_access_key(path: Path) -> None:
    """A static access key in a file, as the pillar reads it; any key is accepted by moto."""
    _write(path, yaml.safe_dump({
        "access_key_id": "YCAJ" + secrets.token_hex(10),
        "secret_access_key": "YC" + secrets.token_urlsafe(30)}).encode())


def ensure_files() -> None:
    """The lab store's CA and an access key, where the lab pillar names them; made once."""
    ensure_ca(LAB)
    if not CREDENTIALS.exists():
        write_access_key(CREDENTIALS)  # one per lab, as a user's would be per account


def stores(model: dict) -> list[dict]:
    """The S3 settings of the repositories that the lab serves (address: the bridge's)."""
    return [repo["s3"] for repo in model["pgbackrest"]["repositories"]
            if repo["type"] == "s3" and repo["s3"]["address"] == settings.GATEWAY]


def _server_cert(store: Store, endpoints: list[str]) -> None:
    """The store's certificate: each endpoint and, for host-style addressing, its buckets."""
    sans = sorted({n for e in endpoints for n in (e, f"*.{e}")})
    if store.server_cert.exists() and store.server_key.exists():
        cert = x509.load_pem_x509_certificate(store.server_cert.read_bytes())
        have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ca = x509.load_pem_x509_certificate(store.ca_cert.read_bytes())
        try:
            cert.verify_directly_issued_by(ca)
            issued_by_ca = True
        except (ValueError, TypeError, InvalidSignature):
            issued_by_ca = False  # the CA was made again
        if issued_by_ca and sorted(have.get_values_for_type(x509.DNSName)) == sans:
            return
    ca_key = serialization.load_pem_private_key(store.ca_key.read_bytes(), None)
    ca = x509.load_pem_x509_certificate(store.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    _write(store.server_key, _key_pem(key))
    _write(store.server_cert, _pem(_sign(endpoints[0], key, ca_key, issuer=ca.subject, sans=sans,
                                         address=store.address, days=825)))


def venv_dir() -> Path:
    return settings.CACHE / f"object-storage-{_digest(REQUIREMENTS.read_text())}"


def ensure_venv() -> Path:
    """moto and gunicorn in a venv of their own (Debian's python3), built once."""
    target = venv_dir()
    if (target / ".complete").exists():
        return target
    log("building the object storage's venv (moto, gunicorn; downloads once)")
    scratch = target.with_name(target.name + ".build")
    subprocess.run(["rm", "-rf", str(scratch)], check=True)
    run("/usr/bin/python3", "-m", "venv", scratch)
    run(scratch / "bin/pip", "install", "-q", "--disable-pip-version-check", "-r", REQUIREMENTS,
        quiet=True)
    (scratch / ".complete").write_text("")
    scratch.rename(target)
    # Its scripts name the build folder in their first line: call them through the python.
    return target


def running_pid(store: Store = LAB) -> int | None:
    try:
        pid = int(store.pidfile.read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) and "gunicorn" in " ".join(pid_cmdline(pid)) else None


def request(store: Store, method: str, port: int, path: str) -> tuple[int, bytes]:
    """An unsigned request by address (path-style), checking the store's chain, not its name:
    (HTTP status, body)."""
    context = ssl.create_default_context(cafile=str(store.ca_cert))
    context.check_hostname = False
    req = urllib.request.Request(f"https://{store.address}:{port}{path}", method=method)

    def send() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(req, context=context, timeout=10) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
    if store.netns is None:
        return send()
    with in_netns(store.netns):
        return send()


def list_keys(store: Store, port: int, bucket: str, prefix: str) -> list[str]:
    """The keys under prefix in a bucket, as the store itself lists them (ListObjectsV2)."""
    status, body = request(store, "GET", port, f"/{bucket}?list-type=2&prefix={prefix}")
    if status != 200:
        raise LabError(f"{store.name} did not list {bucket}/{prefix}: HTTP {status}")
    return [e.text for e in ElementTree.fromstring(body).iter() if e.tag.endswith("}Key")]


def _answers(store: Store, port: int) -> bool:
    try:
        return request(store, "GET", port, "/")[0] == 200
    except OSError:
        return False


def serve(store: Store, port: int, endpoints: list[str]) -> None:
    """Run the store (moto's S3 under gunicorn, over TLS) unless it runs, and wait for it."""
    ensure_ca(store)
    _server_cert(store, endpoints)
    if running_pid(store) is not None:
        return
    venv = ensure_venv()
    for folder in (store.pidfile.parent, store.logfile.parent):
        folder.mkdir(parents=True, exist_ok=True)
    log(f"starting {store.name} (moto's S3) on {store.address}:{port}")
    netns = ("ip", "netns", "exec", store.netns) if store.netns else ()
    # moto takes the first label of a host name with dots for the bucket (host style) unless
    # the name is one of these: then the bucket is the path's first part (path style).
    custom = ",".join(f"https://{e}{p}" for e in endpoints for p in ("", f":{port}"))
    env = {**os.environ, "MOTO_S3_CUSTOM_ENDPOINTS": custom}
    run(*netns, venv / "bin/python", venv / "bin/gunicorn", "--daemon", "--pid", store.pidfile,
        "--bind", f"{store.address}:{port}", "--certfile", store.server_cert,
        "--keyfile", store.server_key, "--workers", "1", "--worker-class", "gthread",
        "--threads", "8", "--keep-alive", "75", "--no-control-socket",
        "--error-logfile", store.logfile, "--chdir", settings.REPO / "lab",
        "object_storage_app:application", env=env)
    wait_for(lambda: _answers(store, port), 60, f"{store.name} to answer (its log: {store.logfile})")


def make_bucket(store: Store, port: int, bucket: str) -> None:
    status, _ = request(store, "PUT", port, f"/{bucket}")
    if status not in (200, 409):
        raise LabError(f"{store.name} did not make the bucket {bucket}: HTTP {status}")


def start(model: dict) -> None:
    """Serve the lab's S3 repositories, and make their buckets, as a user makes theirs."""
    wanted = stores(model)
    if not wanted:
        return
    ports = {s["port"] for s in wanted}
    if len(ports) > 1:
        raise LabError(f"the lab serves one object store: its S3 repositories give the ports "
                       f"{sorted(ports)}; give them one")
    port = ports.pop()
    ensure_files()
    serve(LAB, port, [s["endpoint"] for s in wanted])
    for bucket in sorted({s["bucket"] for s in wanted}):
        make_bucket(LAB, port, bucket)


def stop(store: Store = LAB) -> None:
    pid = running_pid(store)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        try:
            wait_for(lambda: not pid_alive(pid), 20, f"{store.name} to stop")
        except LabError:
            os.kill(pid, signal.SIGKILL)
    store.pidfile.unlink(missing_ok=True)
