"""
Whether a certificate fits a cluster host: issued by the cluster's CA, for the host's key, naming
the host and its address and nothing else (its common name the host's), valid now, not a CA,
good for TLS servers and clients. The master's CA runner checks what a user's sign_command
returns with it; the hosts' state checks the certificate they have and the one they are given.

.. code-block:: python

    why = __utils__["pgcluster_x509.unfit"](cert, ca_cert, public_key, "postgres-srv1", "10.0.0.11")
    # None, or what is wrong: "names web, 10.0.0.10, not exactly postgres-srv1, 10.0.0.11"
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SPKI = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
# How far in the future a certificate's start may be: the signer's clock runs a little ahead.
CLOCK_SKEW = datetime.timedelta(minutes=5)
USAGES = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}


def ca_store(opts) -> str:
    """The folder of the master's own CA (``ca.key``, ``ca.crt``): the master option
    ``pgcluster_ca_store``, else ``generated/pki`` beside the pillar."""
    store = opts.get("pgcluster_ca_store")
    if not store:
        roots = opts.get("pillar_roots", {}).get("base") or ["."]
        store = os.path.join(roots[0], "generated", "pki")
    return store


def same_key(a, b) -> bool:
    """Whether two public keys are one."""
    return a.public_bytes(*SPKI) == b.public_bytes(*SPKI)


def _extension(cert, kind):
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def issued_by(cert, ca_cert) -> bool:
    """Whether ``ca_cert`` signed ``cert``."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def unfit(cert, ca_cert, public_key, host: str, address: str) -> str | None:
    """What makes ``cert`` unfit for ``host`` at ``address`` with ``public_key``, or None."""
    if not issued_by(cert, ca_cert):
        return "is not from the cluster's CA"
    if not same_key(cert.public_key(), public_key):
        return "is for another key"
    return _names_problem(cert, host, address) or _use_problem(cert)


def _names_problem(cert, host: str, address: str) -> str | None:
    san = _extension(cert, x509.SubjectAlternativeName)
    names = ((san.get_values_for_type(x509.DNSName),
              [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]) if san else ([], []))
    if names != ([host], [str(ipaddress.ip_address(address))]):
        return f"names {', '.join(names[0] + names[1]) or 'no host'}, not exactly {host}, {address}"
    common = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if common != [host]:  # pgBackRest lets a host in by its certificate's common name
        return f"has the common name {', '.join(map(str, common)) or 'none'}, not {host}"
    return None


def _use_problem(cert) -> str | None:
    now = datetime.datetime.now(datetime.UTC)
    if cert.not_valid_before_utc > now + CLOCK_SKEW or cert.not_valid_after_utc <= now:
        return (f"is valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now")
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is not None and constraints.ca:
        return "is a CA's (basicConstraints CA:TRUE)"
    usages = _extension(cert, x509.ExtendedKeyUsage)
    lacking = [name for oid, name in USAGES.items() if usages is not None and oid not in usages]
    if lacking:
        return f"lacks the extended key usage {', '.join(lacking)} (the hosts are servers and clients)"
    return None
