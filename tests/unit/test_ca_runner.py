"""The cluster's CA on the master (_runners/pgcluster_ca.py), through Salt's own salt-run with
a master configuration of its own: it signs a cluster host's key with that host's names only,
whatever the request asks, and refuses any other minion. The asking minion is the master
configuration's ``id`` here; on a real master it is the id the master verified."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import stat
import subprocess
import textwrap

import pytest
import salt.config
import salt.loader
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.certificates import issue
from tests.conftest import REPO, VENV_BIN
from tests.unit.conftest import load_module, salt_utils

tls_state = load_module("_states/pgcluster_tls.py")

MEMBERS = {"db1": "192.168.7.1", "db2": "192.168.7.2", "db3": "192.168.7.3"}
PILLAR: dict = {}  # db1's, as its state run has it


def write_pillar(master_dir, **tls) -> None:
    (master_dir / "pillar" / "cluster.sls").write_text(yaml.safe_dump({"pgcluster": {
        "name": "elsewhere", "members": {n: {"address": a} for n, a in MEMBERS.items()},
        "web": {"front": {"address": "192.168.7.10"}},
        "tls": {"days": 30, "renew_days": 10, **tls}}}))


@pytest.fixture
def master_dir(tmp_path):
    pillar = tmp_path / "pillar"
    pillar.mkdir()
    (pillar / "top.sls").write_text("base:\n  '*':\n    - cluster\n")
    write_pillar(tmp_path)
    return tmp_path


@pytest.fixture
def configure_loader_modules(master_dir):
    """The hosts' state as db1 runs it; its publish to the master's runner goes to salt-run."""
    def publish_runner(fun, arg, timeout):
        return salt_run(master_dir, "db1", fun, *arg)

    minion_opts = salt.config.minion_config(None)
    create_csr = salt.loader.minion_mods(minion_opts)["x509.create_csr"]  # Salt's own x509_v2
    PILLAR.clear()
    return {tls_state: {"__opts__": {"test": False, "id": "db1"}, "__utils__": salt_utils(),
                        "__pillar__": PILLAR,
                        "__salt__": {"publish.runner": publish_runner,
                                     "x509.create_csr": create_csr}}}


@pytest.fixture
def users_ca(master_dir):
    """A CA the user already has, in files beside the pillar, as pgcluster:tls:ca names them
    (relative to the pillar's directory)."""
    folder = master_dir / "pillar" / "org-ca"
    folder.mkdir()
    cert, key = issue("Example Org CA")
    (folder / "ca.crt").write_bytes(cert)
    (folder / "ca.key").write_bytes(key)
    (folder / "ca.key").chmod(0o600)
    return folder


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
                       {"pgcluster_credentials": {"store": str(master_dir / "secret" / "creds.yaml")}},
                       {"pgcluster_ca": {}}],
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


def test_the_masters_ca_comes_with_the_pillar_once_made_and_the_host_asks_no_runner(
        master_dir, users_ca, tmp_path):
    """_pillar/pgcluster_ca.py: a cluster host's pillar carries the master's CA certificate once
    the master has made it, so that ca_managed writes it without a runner job and a pillar
    compile on the master in every state run. Before it is made, for a minion that is no
    cluster host, or with a CA of the user's, the pillar has none (the runner is asked)."""
    def pillar(minion):
        return salt_run(master_dir, "db1", "pillar.show_pillar", minion).get("pgcluster_tls_ca")

    assert pillar("db2") is None  # no CA made yet
    made = salt_run(master_dir, "db1", "pgcluster_ca.ca")["ca"]
    assert pillar("db2") == made and pillar("front") == made
    assert pillar("monitoring") is None
    folder = tmp_path / "host"
    PILLAR["pgcluster_tls_ca"] = made

    def no_runner(fun, arg, timeout):
        raise AssertionError(f"asked the runner {fun}")

    tls_state.__salt__["publish.runner"] = no_runner
    ret = tls_state.ca_managed(str(folder / "ca.crt"), certificate=str(folder / "host.crt"))
    assert ret["result"] is True and ret["changes"] == {"ca": "CN=elsewhere CA"}, ret
    assert (folder / "ca.crt").read_text() == made
    # A CA of the user's: the runner checks it and answers; the pillar has none of its own.
    write_pillar(master_dir, ca={"certificate": "org-ca/ca.crt", "key": "org-ca/ca.key"})
    assert pillar("db2") is None


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


def issued(answer: dict) -> x509.Certificate:
    assert "error" not in answer, answer
    return x509.load_pem_x509_certificate(answer["certificate"].encode())


def names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName) + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def test_the_users_ca_signs_with_its_key_and_the_master_makes_none(master_dir, users_ca):
    write_pillar(master_dir, ca={"certificate": "org-ca/ca.crt", "key": "org-ca/ca.key"})
    answer = salt_run(master_dir, "db3", "pgcluster_ca.sign", csr_for("db3")[0])
    cert = issued(answer)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate((users_ca / "ca.crt").read_bytes()))
    assert names(cert) == ["db3", MEMBERS["db3"]]
    assert answer["ca"] == (users_ca / "ca.crt").read_text()
    assert salt_run(master_dir, "front", "pgcluster_ca.ca") == {"ca": answer["ca"]}
    assert not (master_dir / "secret" / "pki").exists()


def test_a_users_ca_that_cannot_sign_is_named_and_signs_nothing(master_dir, users_ca):
    other_key = issue("another")[1]
    (users_ca / "other.key").write_bytes(other_key)
    write_pillar(master_dir, ca={"certificate": "org-ca/ca.crt", "key": "org-ca/other.key"})
    answer = salt_run(master_dir, "db1", "pgcluster_ca.sign", csr_for("db1")[0])
    assert answer == {"error": f"pgcluster:tls:ca:key: {users_ca}/other.key is not the key of "
                               "pgcluster:tls:ca:certificate"}
    # A host's certificate where the CA's should be.
    signer = (users_ca / "ca.crt").read_bytes(), (users_ca / "ca.key").read_bytes()
    host_cert, _ = issue("db1", issuer=signer)
    (users_ca / "host.crt").write_bytes(host_cert)
    write_pillar(master_dir, ca={"certificate": "org-ca/host.crt", "key": "org-ca/ca.key"})
    answer = salt_run(master_dir, "db1", "pgcluster_ca.ca")
    assert answer["error"] == (f"pgcluster:tls:ca:certificate: {users_ca}/host.crt (CN=db1) is no "
                               "CA's certificate (basicConstraints CA:TRUE)")
    write_pillar(master_dir, ca={"certificate": "org-ca/missing.crt", "key": "org-ca/ca.key"})
    answer = salt_run(master_dir, "db1", "pgcluster_ca.sign", csr_for("db1")[0])
    assert answer["error"] == (f"pgcluster:tls:ca:certificate: cannot read {users_ca}/missing.crt "
                               "on the salt-master: No such file or directory")


def sign_command(users_ca, name: str, san: str = "DNS:$PGCLUSTER_HOST,IP:$PGCLUSTER_ADDRESS",
                 extra: str = "", days: str = "$PGCLUSTER_DAYS") -> str:
    """A user's signing command: openssl signs the request on stdin with the user's CA."""
    script = users_ca / name
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        set -e
        ext=$(mktemp)
        trap 'rm -f "$ext"' EXIT
        printf 'subjectAltName=%s\\nextendedKeyUsage=serverAuth,clientAuth\\n' "{san}" > "$ext"
        exec openssl x509 -req -CA {users_ca}/ca.crt -CAkey {users_ca}/ca.key \\
            -days "{days}" -extfile "$ext" {extra} 2>/dev/null
        """))
    script.chmod(0o755)
    return str(script)


def test_the_users_sign_command_signs_what_the_master_checked(master_dir, users_ca):
    write_pillar(master_dir, ca={"certificate": "org-ca/ca.crt",
                                 "sign_command": [sign_command(users_ca, "sign-host")]})
    csr, key = csr_for("front")
    answer = salt_run(master_dir, "front", "pgcluster_ca.sign", csr)
    cert = issued(answer)
    assert names(cert) == ["front", "192.168.7.10"]
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert 29 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 30
    assert answer["ca"] == (users_ca / "ca.crt").read_text()


def test_a_sign_command_that_names_too_much_or_fails_gives_no_host_a_certificate(master_dir, users_ca):
    wide = sign_command(users_ca, "sign-wide", san="DNS:$PGCLUSTER_HOST,DNS:*.example,IP:$PGCLUSTER_ADDRESS")
    write_pillar(master_dir, ca={"certificate": "org-ca/ca.crt", "sign_command": [wide]})
    answer = salt_run(master_dir, "db2", "pgcluster_ca.sign", csr_for("db2")[0])
    assert answer == {"error": "pgcluster:tls:ca:sign_command: its certificate for db2 names db2, "
                               "*.example, 192.168.7.2, not exactly db2, 192.168.7.2; no host was "
                               "given it"}
    # Another host's common name (pgBackRest lets a host in by it), or too short a life.
    for command, why in (
            (sign_command(users_ca, "sign-cn", extra="-subj /CN=db1"), "has the common name db1, not db2"),
            (sign_command(users_ca, "sign-short", days="5"),
             "lives 4 days, not more than pgcluster:tls:renew_days (10): every state.apply "
             "would sign again")):
        write_pillar(master_dir, ca={"certificate": "org-ca/ca.crt", "sign_command": [command]})
        answer = salt_run(master_dir, "db2", "pgcluster_ca.sign", csr_for("db2")[0])
        assert answer == {"error": f"pgcluster:tls:ca:sign_command: its certificate for db2 {why}; "
                                   "no host was given it"}
    failing = users_ca / "sign-refuses"
    failing.write_text("#!/bin/sh\necho 'vault: permission denied' >&2\nexit 3\n")
    failing.chmod(0o755)
    write_pillar(master_dir, ca={"certificate": "org-ca/ca.crt", "sign_command": [str(failing)]})
    answer = salt_run(master_dir, "db2", "pgcluster_ca.sign", csr_for("db2")[0])
    assert answer == {"error": "pgcluster:tls:ca:sign_command failed for db2: vault: permission denied"}


def test_a_host_of_a_running_cluster_refuses_another_ca_and_keeps_its_own(master_dir, users_ca, tmp_path):
    """The state on a host whose certificate is from the master's CA, when the pillar names the
    user's CA: refused, naming both, nothing written. The master's answers come from the real
    runner (salt-run) in place of the publish."""
    folder = tmp_path / "host"
    folder.mkdir()
    first = salt_run(master_dir, "db1", "pgcluster_ca.sign", csr_for("db1")[0])
    (folder / "ca.crt").write_text(first["ca"])
    (folder / "host.crt").write_text(first["certificate"])
    write_pillar(master_dir, ca={"certificate": "org-ca/ca.crt", "key": "org-ca/ca.key"})
    ret = tls_state.ca_managed(str(folder / "ca.crt"), certificate=str(folder / "host.crt"))
    assert ret["result"] is False
    assert ret["comment"].startswith("the salt-master's CA is now CN=Example Org CA, but this "
                                     "host's certificate is from CN=elsewhere CA, which the other "
                                     "hosts trust: switching a running cluster to another CA is refused")
    assert (folder / "ca.crt").read_text() == first["ca"]
    # A new host (no certificate yet) takes the user's CA.
    (folder / "host.crt").unlink()
    ret = tls_state.ca_managed(str(folder / "ca.crt"), certificate=str(folder / "host.crt"))
    assert ret["result"] is True and ret["changes"] == {"ca": "CN=Example Org CA"}


def test_a_rotation_issues_again_each_certificate_written_before_its_moment(master_dir, tmp_path):
    """pgcluster:tls:issued_after: a certificate written before it is issued again (test mode
    says so, signing nothing); one written after it is current, whatever its notBefore."""
    folder = tmp_path / "host"
    folder.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    (folder / "host.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    der = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "db1")]))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    csr = base64.urlsafe_b64encode(der).decode().rstrip("=")
    first = salt_run(master_dir, "db1", "pgcluster_ca.sign", csr)
    (folder / "ca.crt").write_text(first["ca"])
    (folder / "host.crt").write_text(first["certificate"])
    written = (folder / "host.crt").stat().st_mtime

    def plan(issued_after):
        tls_state.__opts__["test"] = True
        return tls_state.certificate_managed(
            str(folder / "host.crt"), str(folder / "host.key"), str(folder / "ca.crt"),
            MEMBERS["db1"], renew_days=10, issued_after=issued_after)

    moment = datetime.datetime.fromtimestamp(written + 60, datetime.UTC).isoformat()
    ret = plan(moment)
    assert ret["result"] is None, ret
    assert ret["changes"]["certificate"].endswith(f"before {moment} (pgcluster:tls:issued_after)")
    assert plan(datetime.datetime.fromtimestamp(written - 60, datetime.UTC).isoformat())["result"] is True
    assert plan(None)["comment"] == "the host's certificate is current"


def test_a_host_writes_no_certificate_its_own_ca_file_does_not_verify(master_dir, users_ca, tmp_path):
    """The master's CA changed between the host's ca.crt and its signing request (a new host,
    so no refusal yet): the certificate it is given is not written, and the state says why."""
    folder = tmp_path / "host"
    folder.mkdir()
    (folder / "ca.crt").write_text(salt_run(master_dir, "db1", "pgcluster_ca.ca")["ca"])
    key = ec.generate_private_key(ec.SECP256R1())
    (folder / "host.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    write_pillar(master_dir, ca={"certificate": "org-ca/ca.crt", "key": "org-ca/ca.key"})
    ret = tls_state.certificate_managed(str(folder / "host.crt"), str(folder / "host.key"),
                                        str(folder / "ca.crt"), MEMBERS["db1"], renew_days=10)
    assert ret["result"] is False
    assert ret["comment"] == ("the master's new certificate was not written: it is not from "
                              "the cluster's CA")
    assert not (folder / "host.crt").exists()
    # With the CA it has, it is written.
    (folder / "ca.crt").write_text(salt_run(master_dir, "db1", "pgcluster_ca.ca")["ca"])
    ret = tls_state.certificate_managed(str(folder / "host.crt"), str(folder / "host.key"),
                                        str(folder / "ca.crt"), MEMBERS["db1"], renew_days=10)
    assert ret["result"] is True and ret["changes"]["certificate"] == "there is none"
    assert (folder / "host.crt").exists()
