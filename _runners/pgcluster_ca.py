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
``pgcluster_ca_store`` puts it elsewhere), its key 0600, out of git. A CA the user already has
(``pgcluster:tls:ca``, files on the master) signs instead: with its key, or through the user's
``sign_command``, whose certificate is checked before any host gets it (issued by that CA, for
the request's key, with the host's names and nothing more).

.. code-block:: yaml

    # master configuration
    runner_dirs: [/path/to/repo/_runners]
    peer_run:
      .*:
        - pgcluster_ca\\.(ca|sign)
"""

from __future__ import annotations

import base64
import datetime
import fcntl
import logging
import os
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger(__name__)

__virtualname__ = "pgcluster_ca"

CA_DAYS = 3650
# How long the user's sign_command may take for one certificate: less than the host waits for
# this runner (pgcluster_tls.RUNNER_TIMEOUT, 60 s), so the host gets this runner's error.
SIGN_COMMAND_TIMEOUT = 40


def __virtual__():
    return __virtualname__


def _store():
    return __utils__["pgcluster_x509.ca_store"](__opts__)


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


class _CAError(Exception):
    """The user's CA cannot sign: the message names the pillar key."""


def _on_master(path):
    """A file the pillar names on the master: absolute, or relative to the pillar's directory."""
    roots = __opts__.get("pillar_roots", {}).get("base") or ["."]
    return os.path.join(roots[0], str(path))


def _users_ca_certificate(ca_cfg):
    """(its PEM as the file has it, the issuing CA's certificate) of pgcluster:tls:ca."""
    path = _on_master(ca_cfg["certificate"])
    try:
        with open(path) as fh:
            pem = fh.read()
        cert = x509.load_pem_x509_certificate(pem.encode())
    except OSError as exc:
        raise _CAError(f"pgcluster:tls:ca:certificate: cannot read {path} on the salt-master: "
                       f"{exc.strerror}") from None
    except ValueError:
        raise _CAError(f"pgcluster:tls:ca:certificate: {path} holds no PEM certificate") from None
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise _CAError(f"pgcluster:tls:ca:certificate: {path} ({cert.subject.rfc4514_string()}) "
                       "is no CA's certificate (basicConstraints CA:TRUE)")
    if cert.not_valid_after_utc < datetime.datetime.now(datetime.UTC):
        raise _CAError(f"pgcluster:tls:ca:certificate: {path} ended "
                       f"{cert.not_valid_after_utc:%Y-%m-%d}")
    return pem, cert


def _users_key(ca_cfg, ca_cert):
    """The path of pgcluster:tls:ca:key, checked to be the key of the CA's certificate."""
    path = _on_master(ca_cfg["key"])
    try:
        with open(path, "rb") as fh:
            key = serialization.load_pem_private_key(fh.read(), None)
    except OSError as exc:
        raise _CAError(f"pgcluster:tls:ca:key: cannot read {path} on the salt-master: "
                       f"{exc.strerror}") from None
    except (ValueError, TypeError):
        raise _CAError(f"pgcluster:tls:ca:key: {path} holds no unencrypted PEM private key") from None
    if not __utils__["pgcluster_x509.same_key"](key.public_key(), ca_cert.public_key()):
        raise _CAError(f"pgcluster:tls:ca:key: {path} is not the key of pgcluster:tls:ca:"
                       "certificate")
    return path


def _ca_pem(cfg):
    """The PEM the hosts trust: the user's CA file, or the master's own CA made on first use."""
    if cfg["tls"]["ca"] is not None:
        return _users_ca_certificate(cfg["tls"]["ca"])[0]
    with open(_ensure_ca(cfg["name"])[1]) as fh:
        return fh.read()


def ca():
    """
    The cluster CA's certificate (PEM): ``{"ca": PEM}``, or ``{"error": why}``. For the
    cluster's hosts. The master's own CA is made on first use (its certificate is
    ``pillar/generated/pki/ca.crt``); a CA of the user's (``pgcluster:tls:ca``) is its
    certificate file as it is, the chain included.

    CLI Example (the state ``pgcluster_tls.ca_managed`` does it when its pillar has no
    ``pgcluster_tls_ca``, _pillar/pgcluster_ca.py):

    .. code-block:: bash

        salt postgres-srv1 publish.runner pgcluster_ca.ca
    """
    asking = _asking_host()
    if isinstance(asking, str):
        return {"error": asking}
    try:
        return {"ca": _ca_pem(asking[1])}
    except _CAError as exc:
        return {"error": str(exc)}


def _issue(cfg, public_key, minion, address):
    """A certificate (PEM) for public_key naming minion and address, from the cluster's CA."""
    ca_cfg = cfg["tls"]["ca"]
    if ca_cfg is None:
        key, cert = _ensure_ca(cfg["name"])
    else:
        cert = _on_master(ca_cfg["certificate"])
        key = _users_key(ca_cfg, _users_ca_certificate(ca_cfg)[1])
    return _x509(
        "create_certificate", signing_private_key=key, signing_cert=cert,
        public_key=public_key.public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
        CN=minion, subjectAltName=f"DNS:{minion}, IP:{address}",
        basicConstraints="critical, CA:FALSE", keyUsage="critical, digitalSignature",
        extendedKeyUsage="serverAuth, clientAuth", subjectKeyIdentifier="hash",
        authorityKeyIdentifier="keyid:always", days_valid=cfg["tls"]["days"])


def _run_sign_command(cfg, request, minion, address):
    """The certificate the user's sign_command writes for the request, checked."""
    command = cfg["tls"]["ca"]["sign_command"]
    env = {**os.environ, "PGCLUSTER_HOST": minion, "PGCLUSTER_ADDRESS": address,
           "PGCLUSTER_DAYS": str(cfg["tls"]["days"])}
    csr_pem = request.public_bytes(serialization.Encoding.PEM).decode()
    try:
        done = subprocess.run(command, input=csr_pem, env=env, capture_output=True, text=True,
                              timeout=SIGN_COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _CAError(f"pgcluster:tls:ca:sign_command: {command[0]} did not run: {exc}") from None
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise _CAError(f"pgcluster:tls:ca:sign_command failed for {minion}: {why[0]}")
    try:
        cert = x509.load_pem_x509_certificate(done.stdout.encode())
    except ValueError:
        raise _CAError(f"pgcluster:tls:ca:sign_command wrote no PEM certificate for {minion}") from None
    ca_cert = _users_ca_certificate(cfg["tls"]["ca"])[1]
    why = __utils__["pgcluster_x509.unfit"](cert, ca_cert, request.public_key(), minion, address)
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    if not why and left <= datetime.timedelta(days=cfg["tls"]["renew_days"]):
        why = (f"lives {left.days} days, not more than pgcluster:tls:renew_days "
               f"({cfg['tls']['renew_days']}): every state.apply would sign again")
    if why:
        raise _CAError(f"pgcluster:tls:ca:sign_command: its certificate for {minion} {why}; "
                       "no host was given it")
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def sign(csr):
    """
    A certificate for the asking host's key: ``{"certificate": PEM, "ca": PEM}``, or
    ``{"error": why}``. ``csr``: a certificate signing request, DER in URL-safe base64 (a plain
    string survives the publish's argument parsing). Only its key is used; the names are the
    master's. The certificate comes from the master's own CA, from the user's CA key, or from
    the user's ``sign_command`` (``pgcluster:tls:ca``).

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
    ca_cfg = cfg["tls"]["ca"]
    try:
        if ca_cfg is not None and "sign_command" in ca_cfg:
            issued = _run_sign_command(cfg, request, minion, address)
        else:
            issued = _issue(cfg, request.public_key(), minion, address)
        ca_pem = _ca_pem(cfg)
    except _CAError as exc:
        return {"error": str(exc)}
    log.info("pgcluster_ca: signed a certificate for %s (%s)", minion, address)
    return {"certificate": issued, "ca": ca_pem}
