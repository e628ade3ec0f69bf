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
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from . import settings
from .image import _digest
from .system import LabError, log, pid_alive, pid_cmdline, run, wait_for

FILES = settings.REPO / "pillar" / "generated" / "lab-object-storage"
CA_CERT, CA_KEY = FILES / "ca.crt", FILES / "ca.key"
CREDENTIALS = FILES / "credentials.yaml"
SERVER_CERT, SERVER_KEY = FILES / "server.crt", FILES / "server.key"
REQUIREMENTS = settings.REPO / "lab" / "object-storage-requirements.txt"
PIDFILE = settings.RUN / "object-storage.pid"
LOGFILE = settings.STATE / "object-storage.log"


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _sign(subject: str, key, issuer_key, *, issuer: x509.Name | None, sans: list[str] | None,
          days: int) -> x509.Certificate:
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
            + [x509.IPAddress(ipaddress.IPv4Address(settings.GATEWAY))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ensure_files() -> None:
    """The store's CA and an access key, where the lab pillar names them; made once."""
    FILES.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not (CA_CERT.exists() and CA_KEY.exists()):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(CA_KEY, _key_pem(key))
        _write(CA_CERT, _pem(_sign("pglab object storage CA", key, key, issuer=None, sans=None, days=3650)))
    if not CREDENTIALS.exists():
        # Any key is accepted by moto; one is made per lab, as a user's would be per account.
        _write(CREDENTIALS, yaml.safe_dump({
            "access_key_id": "YCAJ" + secrets.token_hex(10),
            "secret_access_key": "YC" + secrets.token_urlsafe(30)}).encode())


def stores(model: dict) -> list[dict]:
    """The S3 settings of the repositories that the lab serves (address: the bridge's)."""
    return [repo["s3"] for repo in model["pgbackrest"]["repositories"]
            if repo["type"] == "s3" and repo["s3"]["address"] == settings.GATEWAY]


def _server_cert(endpoints: list[str]) -> None:
    """The store's certificate: each endpoint and, for host-style addressing, its buckets."""
    sans = sorted({n for e in endpoints for n in (e, f"*.{e}")})
    if SERVER_CERT.exists() and SERVER_KEY.exists():
        cert = x509.load_pem_x509_certificate(SERVER_CERT.read_bytes())
        have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ca = x509.load_pem_x509_certificate(CA_CERT.read_bytes())
        try:
            cert.verify_directly_issued_by(ca)
            issued_by_ca = True
        except (ValueError, TypeError, InvalidSignature):
            issued_by_ca = False  # the CA was made again
        if issued_by_ca and sorted(have.get_values_for_type(x509.DNSName)) == sans:
            return
    ca_key = serialization.load_pem_private_key(CA_KEY.read_bytes(), None)
    ca = x509.load_pem_x509_certificate(CA_CERT.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    _write(SERVER_KEY, _key_pem(key))
    _write(SERVER_CERT, _pem(_sign(endpoints[0], key, ca_key, issuer=ca.subject, sans=sans, days=825)))


def venv_dir() -> Path:
    return settings.CACHE / f"object-storage-{_digest(REQUIREMENTS.read_text())}"


def _venv() -> Path:
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


def running_pid() -> int | None:
    try:
        pid = int(PIDFILE.read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) and "gunicorn" in " ".join(pid_cmdline(pid)) else None


def _request(method: str, port: int, path: str) -> int:
    """An unsigned request by address (path-style), checking the store's chain, not its name."""
    context = ssl.create_default_context(cafile=str(CA_CERT))
    context.check_hostname = False
    req = urllib.request.Request(f"https://{settings.GATEWAY}:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, context=context, timeout=5) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _answers(port: int) -> bool:
    try:
        return _request("GET", port, "/") == 200
    except OSError:
        return False


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
    _server_cert([s["endpoint"] for s in wanted])
    if running_pid() is None:
        venv = _venv()
        settings.RUN.mkdir(parents=True, exist_ok=True)
        settings.STATE.mkdir(parents=True, exist_ok=True)
        log(f"starting the lab's object storage (moto's S3) on {settings.GATEWAY}:{port}")
        run(venv / "bin/python", venv / "bin/gunicorn", "--daemon", "--pid", PIDFILE,
            "--bind", f"{settings.GATEWAY}:{port}", "--certfile", SERVER_CERT,
            "--keyfile", SERVER_KEY, "--workers", "1", "--worker-class", "gthread",
            "--threads", "8", "--keep-alive", "75", "--no-control-socket",
            "--error-logfile", LOGFILE, "--chdir", settings.REPO / "lab",
            "object_storage_app:application")
        wait_for(lambda: _answers(port), 60,
                 f"the object storage to answer (its log: {LOGFILE})")
    for bucket in sorted({s["bucket"] for s in wanted}):
        status = _request("PUT", port, f"/{bucket}")
        if status not in (200, 409):
            raise LabError(f"the object storage did not make the bucket {bucket}: HTTP {status}")


def stop() -> None:
    pid = running_pid()
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        try:
            wait_for(lambda: not pid_alive(pid), 20, "the object storage to stop")
        except LabError:
            os.kill(pid, signal.SIGKILL)
    PIDFILE.unlink(missing_ok=True)

