"""
The cluster's certificate authority, on the salt-master: each host makes its own key and asks
here for its certificate; the CA's key never leaves the master.

A host asks with ``publish.runner pgcluster_ca.sign`` and a certificate signing request for its
key (state ``pgcluster_tls.certificate_managed``; the master's ``peer_run`` lets minions call
this runner and nothing else). The master knows who asks, the minion id it verified on the
request, and signs by its own policy whatever the request says: a host of the cluster
(``pgcluster:members`` or ``pgcluster:web`` in its pillar) gets its minion id as common name and
DNS name and its pillar address as IP address, for TLS servers and clients, valid
``pgcluster:tls:days``; any other minion is refused. Signing and the CA itself (an EC P-256 key
and a self-signed certificate for ten years, made on first use) are Salt's ``x509_v2``.

The CA lives in ``pillar/generated/pki/`` beside the pillar (master option
``pgcluster_ca_store`` puts it elsewhere), its key 0600, out of git.

.. code-block:: yaml

    # master configuration
    runner_dirs: [/path/to/repo/_runners]
    peer_run:
      .*:
        - pgcluster_ca\\.(ca|sign)
"""

from __future__ import annotations

import base64
import fcntl
import logging
import os

from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger(__name__)

__virtualname__ = "pgcluster_ca"

CA_DAYS = 3650


def __virtual__():
    return __virtualname__


def _store():
    store = __opts__.get("pgcluster_ca_store")
    if not store:
        roots = __opts__.get("pillar_roots", {}).get("base") or ["."]
        store = os.path.join(roots[0], "generated", "pki")
    return store


def _x509(fun, **kwargs):
    """An x509_v2 function, run on the master."""
    return __salt__["salt.cmd"](f"x509.{fun}", **kwargs)


def _write(path, text):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _ensure_ca(cluster_name):
    """The CA's key and certificate paths, both made when the store has none."""
    store = _store()
    os.makedirs(store, mode=0o700, exist_ok=True)
    key, cert = os.path.join(store, "ca.key"), os.path.join(store, "ca.crt")
    with open(os.path.join(store, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (os.path.exists(key) and os.path.exists(cert)):
            _write(key, _x509("create_private_key", algo="ec", keysize=256))
            _write(cert, _x509(
                "create_certificate", signing_private_key=key, CN=f"{cluster_name} CA",
                basicConstraints="critical, CA:TRUE, pathlen:0",
                keyUsage="critical, keyCertSign, cRLSign, digitalSignature",
                subjectKeyIdentifier="hash", days_valid=CA_DAYS))
            log.info("pgcluster_ca: made the CA %s", cert)
    return key, cert


def _cluster(minion):
    """The asking host's cluster model, from its pillar; None when it is no cluster host."""
    pillar = __salt__["pillar.show_pillar"](minion)
    if not isinstance(pillar, dict) or not isinstance(pillar.get("pgcluster"), dict):
        return None
    build = __utils__["pgcluster_model.build"]
    return build(pillar["pgcluster"],
                 __utils__["pgcluster_model.merge_defaults"](pillar.get("pgcluster_defaults") or {}))


def _address(cfg, minion):
    for section in ("members", "web"):
        if minion in cfg[section]:
            return cfg[section][minion]["address"]
    return None


def _asking_host():
    """(the asking minion, its cluster model, its address), or an error's text."""
    minion = __opts__.get("id")
    try:
        cfg = _cluster(minion)
    except ValueError as exc:
        return f"the cluster's pillar for {minion} is not valid: {exc}"
    address = _address(cfg, minion) if cfg else None
    if address is None:
        return (f"{minion} is not a host of the cluster (pgcluster:members, pgcluster:web): the "
                "cluster's CA answers its hosts only")
    return minion, cfg, address


def ca():
    """
    The cluster CA's certificate (PEM), made on first use: ``{"ca": PEM}``, or
    ``{"error": why}``. For the cluster's hosts (on the master, the certificate is
    ``pillar/generated/pki/ca.crt``).

    CLI Example (the state ``pgcluster_tls.ca_managed`` does it):

    .. code-block:: bash

        salt postgres-srv1 publish.runner pgcluster_ca.ca
    """
    asking = _asking_host()
    if isinstance(asking, str):
        return {"error": asking}
    with open(_ensure_ca(asking[1]["name"])[1]) as fh:
        return {"ca": fh.read()}


def sign(csr):
    """
    A certificate for the asking host's key: ``{"certificate": PEM, "ca": PEM}``, or
    ``{"error": why}``. ``csr``: a certificate signing request, DER in URL-safe base64 (a plain
    string survives the publish's argument parsing). Only its key is used; the names are the
    master's.

    CLI Example (from a cluster host; the state ``pgcluster_tls.certificate_managed`` does it):

    .. code-block:: bash

        salt postgres-srv1 publish.runner pgcluster_ca.sign arg=<csr> timeout=60
    """
    asking = _asking_host()
    if isinstance(asking, str):
        return {"error": asking}
    minion, cfg, address = asking
    try:
        request = x509.load_der_x509_csr(base64.urlsafe_b64decode(str(csr) + "=" * (-len(str(csr)) % 4)))
    except ValueError:
        return {"error": "csr: not a certificate signing request (DER in URL-safe base64)"}
    if not request.is_signature_valid:
        return {"error": "csr: its signature does not match its key"}
    public_key = request.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    key, cert = _ensure_ca(cfg["name"])
    issued = _x509(
        "create_certificate", signing_private_key=key, signing_cert=cert, public_key=public_key,
        CN=minion, subjectAltName=f"DNS:{minion}, IP:{address}",
        basicConstraints="critical, CA:FALSE", keyUsage="critical, digitalSignature",
        extendedKeyUsage="serverAuth, clientAuth", subjectKeyIdentifier="hash",
        authorityKeyIdentifier="keyid:always", days_valid=cfg["tls"]["days"])
    log.info("pgcluster_ca: signed a certificate for %s (%s)", minion, address)
    with open(cert) as fh:
        return {"certificate": issued, "ca": fh.read()}
