"""Throw-away certificates for the tests: a CA of their own, and certificates it signs."""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def issue(common_name: str, issuer: tuple | None = None, address: str | None = None) -> tuple[bytes, bytes]:
    """A certificate for common_name valid for a day and its key, as PEM: self-signed and a CA
    when no issuer (cert PEM, key PEM) is given, signed by the issuer otherwise; naming also
    ``address`` (an IP address) when given, as the cluster's host certificates do."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    if issuer:
        issuer_cert = x509.load_pem_x509_certificate(issuer[0])
        issuer_name, signer = issuer_cert.subject, serialization.load_pem_private_key(issuer[1], None)
    else:
        issuer_name, signer = name, key
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1)))
    if not issuer:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                        critical=True)
    if address:
        names = [x509.DNSName(common_name), x509.IPAddress(ipaddress.ip_address(address))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(signer, hashes.SHA256())
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
