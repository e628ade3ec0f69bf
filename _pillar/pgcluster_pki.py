"""
The cluster's own certificate authority, made on first use and kept on the master, out of git,
and one certificate per host, issued by it and renewed when it nears its end.

An external pillar, like ``pgcluster_credentials``: it reads the hosts (``pgcluster:members``
and ``pgcluster:web``, with their addresses) from the compiled pillar and gives each of them,
and no other minion, ``pgcluster_tls``: the CA's certificate, the host's certificate (its
minion id as common name and DNS name, its address as IP address) and the host's key. The
services that authenticate each other with it (pgBackRest's TLS server and its clients, which
map a client certificate's common name to what it may do) read them from files the states
write 0600. The CA's key never leaves the master.

A host's certificate is issued again when it is missing, when its names or address changed,
or when less than a third of its life is left; ``state.apply`` then writes the new one. The
store keeps one certificate per host *and address*: a pillar that gives a host another address
for one run (``bin/deploy --pillar``, refused at its addresses step) gets a certificate of its
own and leaves the host's real one as it was, so the next ``state.apply`` changes nothing.

The store (``pillar/generated/pki/`` beside the pillar by default) is written 0600, atomically,
under a lock: several minions render their pillar at once.

.. code-block:: yaml

    # master (and a masterless minion) configuration
    ext_pillar:
      - pgcluster_pki: {}             # or {store: /srv/secrets/pki, days: 397}
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import logging
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

__virtualname__ = "pgcluster_pki"

CA_DAYS = 3650


def __virtual__():
    return __virtualname__


def _default_store():
    roots = __opts__.get("pillar_roots", {}).get("base") or ["."]
    return os.path.join(roots[0], "generated", "pki")


def _now():
    return datetime.datetime.now(datetime.UTC)


def _write(path, data: bytes):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _read(path):
    with open(path, "rb") as fh:
        return fh.read()


def _ca(store, cluster_name):
    """The CA's key and certificate, made when the store has none."""
    key_path, cert_path = os.path.join(store, "ca.key"), os.path.join(store, "ca.crt")
    if os.path.exists(key_path) and os.path.exists(cert_path):
        return (serialization.load_pem_private_key(_read(key_path), None),
                x509.load_pem_x509_certificate(_read(cert_path)))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster_name} CA")])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _write(key_path, _pem_key(key))
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    log.info("pgcluster_pki: made the CA %s", cert_path)
    return key, cert


def _still_good(cert, host, address, ca_cert) -> bool:
    if cert.issuer != ca_cert.subject:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if san.get_values_for_type(x509.DNSName) != [host] or \
            [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] != [address]:
        return False
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return _now() < end - (end - start) / 3


def _issue(ca_key, ca_cert, host, address, days):
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(host), x509.IPAddress(ipaddress.IPv4Address(address))]),
                critical=False)
            # Each host is a server (its TLS server) and a client (of the others').
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    log.info("pgcluster_pki: issued a certificate for %s (%s)", host, address)
    return key, cert


def _host_tls(store, cluster_name, host, address, days):
    os.makedirs(store, mode=0o700, exist_ok=True)
    with open(os.path.join(store, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ca_key, ca_cert = _ca(store, cluster_name)
        key_path, cert_path = (os.path.join(store, f"{host}_{address}.{ext}")
                               for ext in ("key", "crt"))
        cert = None
        if os.path.exists(key_path) and os.path.exists(cert_path):
            cert = x509.load_pem_x509_certificate(_read(cert_path))
        if cert is None or not _still_good(cert, host, address, ca_cert):
            key, cert = _issue(ca_key, ca_cert, host, address, days)
            _write(key_path, _pem_key(key))
            _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return {"ca": ca_cert.public_bytes(serialization.Encoding.PEM).decode(),
                "cert": cert.public_bytes(serialization.Encoding.PEM).decode(),
                "key": _read(key_path).decode()}


def _address(pillar, minion_id):
    cluster = pillar.get("pgcluster")
    if not isinstance(cluster, dict):
        return None
    for section in ("members", "web"):
        hosts = cluster.get(section)
        host = hosts.get(minion_id) if isinstance(hosts, dict) else None
        if isinstance(host, dict):
            # A malformed address is the cluster model's to report, naming the key.
            try:
                return str(ipaddress.IPv4Address(host.get("address")))
            except ValueError:
                return None
    return None


def ext_pillar(minion_id, pillar, store=None, days=397):
    """This host's certificate and key and the CA's certificate, when it is a cluster host."""
    address = _address(pillar, minion_id)
    if address is None:
        return {}
    name = pillar["pgcluster"].get("name") or "pgcluster"
    return {"pgcluster_tls": _host_tls(store or _default_store(), str(name), minion_id, address,
                                       int(days))}
