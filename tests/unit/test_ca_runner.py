"""The cluster's CA on the master (_runners/pgcluster_ca.py), through Salt's own salt-run with
a master configuration of its own: it signs a cluster host's key with that host's names only,
whatever the request asks, and refuses any other minion. The asking minion is the master
configuration's ``id`` here; on a real master it is the id the master verified."""

from __future__ import annotations

import base64
import ipaddress
import json
import stat
import subprocess

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import REPO, VENV_BIN

MEMBERS = {"db1": "192.168.7.1", "db2": "192.168.7.2", "db3": "192.168.7.3"}


@pytest.fixture
def master_dir(tmp_path):
    pillar = tmp_path / "pillar"
    pillar.mkdir()
    (pillar / "top.sls").write_text("base:\n  '*':\n    - cluster\n")
    (pillar / "cluster.sls").write_text(yaml.safe_dump({"pgcluster": {
        "name": "elsewhere", "members": {n: {"address": a} for n, a in MEMBERS.items()},
        "web": {"front": {"address": "192.168.7.10"}}, "tls": {"days": 30, "renew_days": 10}}}))
    return tmp_path


def salt_run(master_dir, asking: str, *args: str) -> dict:
    # What a running salt-master would have made: where runner jobs are recorded.
    (master_dir / "root/var/cache/salt/master/proc").mkdir(parents=True, exist_ok=True)
    (master_dir / "master").write_text(yaml.safe_dump({
        "id": asking, "root_dir": str(master_dir / "root"),
        "pillar_roots": {"base": [str(master_dir / "pillar")]},
        "file_roots": {"base": [str(REPO / "salt")]},
        "pillar_dirs": [str(REPO / "_pillar")], "utils_dirs": [str(REPO / "_utils")],
        "runner_dirs": [str(REPO / "_runners")],
        "ext_pillar": [{"pgcluster_defaults": {}},
                       {"pgcluster_credentials": {"store": str(master_dir / "secret" / "creds.yaml")}}],
        "pgcluster_ca_store": str(master_dir / "secret" / "pki"), "log_level": "quiet"}))
    out = subprocess.run([VENV_BIN / "salt-run", "-c", master_dir, "--out=json", *args],
                         capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout)


def csr_for(common_name: str) -> tuple[str, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]), False)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
               .sign(key, hashes.SHA256()))
    der = request.public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(der).decode().rstrip("="), key


def test_a_host_gets_its_own_names_for_its_key_whatever_it_asks(master_dir):
    csr, key = csr_for("front")  # another host's name, a foreign SAN, CA:TRUE
    answer = salt_run(master_dir, "db2", "pgcluster_ca.sign", csr)
    cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
    ca = x509.load_pem_x509_certificate(answer["ca"].encode())
    cert.verify_directly_issued_by(ca)
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(*der) == key.public_key().public_bytes(*der)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "db2"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["db2"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.IPv4Address(MEMBERS["db2"])]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 29 <= life.days <= 30  # pgcluster:tls:days
    assert ca.subject.rfc4514_string() == "CN=elsewhere CA"
    # The CA's key stays on the master, readable by its owner only.
    store = master_dir / "secret" / "pki"
    assert stat.S_IMODE((store / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    # One CA: the next host's certificate is from the same one.
    again = salt_run(master_dir, "front", "pgcluster_ca.sign", csr_for("front")[0])
    assert again["ca"] == answer["ca"]
    assert salt_run(master_dir, "db1", "pgcluster_ca.ca") == {"ca": answer["ca"]}


def test_a_minion_that_is_no_cluster_host_is_refused(master_dir):
    answer = salt_run(master_dir, "monitoring", "pgcluster_ca.sign", csr_for("monitoring")[0])
    assert "certificate" not in answer
    assert answer["error"].startswith("monitoring is not a host of the cluster")
    assert salt_run(master_dir, "monitoring", "pgcluster_ca.ca")["error"] == answer["error"]
    # It made no CA for it either.
    assert not (master_dir / "secret" / "pki" / "ca.key").exists()


def test_a_request_that_is_no_csr_is_refused(master_dir):
    answer = salt_run(master_dir, "db1", "pgcluster_ca.sign", "bm90LWEtY3Ny")
    assert answer == {"error": "csr: not a certificate signing request (DER in URL-safe base64)"}


def test_a_request_not_signed_by_its_key_is_refused(master_dir):
    """Proof of possession: a request must be signed by the key it names."""
    csr, _ = csr_for("db1")
    der = bytearray(base64.urlsafe_b64decode(csr + "=" * (-len(csr) % 4)))
    der[-3] ^= 0x01  # inside the signature
    forged = base64.urlsafe_b64encode(bytes(der)).decode().rstrip("=")
    answer = salt_run(master_dir, "db1", "pgcluster_ca.sign", forged)
    assert answer == {"error": "csr: its signature does not match its key"}
