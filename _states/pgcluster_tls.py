"""
This host's certificate from the cluster's CA on the salt-master (``_runners/pgcluster_ca.py``).

The host's key is made here and stays here (Salt's ``x509.private_key_managed``); these states
write the CA's certificate (with the pillar, or asked of the master) and have the master sign
the host's key when the certificate is missing, for another key, from another CA, for other
names, or near its end. Under
``test=True`` they say what they would do; the CA is asked, nothing is signed.

.. code-block:: yaml

    tls-ca:
      pgcluster_tls.ca_managed:
        - name: /etc/pgcluster/tls/ca.crt

    tls-certificate:
      pgcluster_tls.certificate_managed:
        - name: /etc/pgcluster/tls/host.crt
        - private_key: /etc/pgcluster/tls/host.key
        - ca: /etc/pgcluster/tls/ca.crt
        - address: 10.0.0.11
        - renew_days: 132
        - issued_after: 2026-12-03T16:00:00+00:00   # optional: a rotation

    postgresql-tls-copies:
      pgcluster_tls.copies_managed:
        - name: /var/lib/postgresql/tls
        - source: /etc/pgcluster/tls
        - user: postgres
        - group: postgres

A service watches its copies through that one ID (``onchanges: - pgcluster_tls:
postgresql-tls-copies``) to reload when a renewed certificate arrives.
"""

from __future__ import annotations

import base64
import datetime
import grp
import os
import pwd
import stat

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__virtualname__ = "pgcluster_tls"

RUNNER_TIMEOUT = 60


def __virtual__():
    if "x509.create_csr" not in __salt__:
        return False, "pgcluster_tls needs Salt's x509_v2 module"
    return __virtualname__


def _ask(fun, *args):
    """A function of the master's pgcluster_ca runner; its answer, or raise with its error."""
    answer = __salt__["publish.runner"](f"pgcluster_ca.{fun}", arg=list(args),
                                        timeout=RUNNER_TIMEOUT)
    if isinstance(answer, dict) and "error" not in answer:
        return answer
    why = answer.get("error") if isinstance(answer, dict) else (answer or "no answer")
    raise RuntimeError(f"the salt-master's CA (runner pgcluster_ca.{fun}) answered: {why}")


def _read(path):
    try:
        with open(path) as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _write(path, text, mode=0o644, owner=None):
    """Write ``path`` whole (a reader never sees half a key), owned (uid, gid) and with its
    mode before it appears."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    if owner is not None:
        os.chown(tmp, *owner)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _ret(name):
    return {"name": name, "changes": {}, "result": True, "comment": ""}


def ca_managed(name, certificate=None):
    """
    The CA's certificate at ``name`` (0644), as the master has it (from the pillar, else asked
    of the master's runner). ``certificate``: this host's
    certificate. While it is from the CA at ``name`` and the master now has another CA, the
    switch is refused and nothing changes (see ``_switch_refused``).
    """
    ret = _ret(name)
    # The master's own CA comes with the pillar once made (_pillar/pgcluster_ca.py); a first
    # deployment, or a CA of the user's, is asked of the master's runner.
    pem = __pillar__.get("pgcluster_tls_ca")
    if not pem:
        try:
            pem = _ask("ca")["ca"]
        except RuntimeError as exc:
            return {**ret, "result": False, "comment": str(exc)}
    have = _read(name)
    if have == pem:
        ret["comment"] = "the cluster's CA certificate is in place"
        return ret
    refused = _switch_refused(have, pem, certificate)
    if refused:
        return {**ret, "result": False, "comment": refused}
    subject = x509.load_pem_x509_certificate(pem.encode()).subject.rfc4514_string()
    ret["changes"] = {"ca": subject}
    if __opts__["test"]:
        return {**ret, "result": None, "comment": f"{name} would be written: the CA {subject}"}
    os.makedirs(os.path.dirname(name), exist_ok=True)
    _write(name, pem)
    ret["comment"] = f"wrote the CA {subject}"
    return ret


def _switch_refused(have, pem, certificate):
    """Why the CA must not change under this host, or None. A host whose certificate is from
    the CA it has is part of a running cluster: moving the hosts to another CA one by one
    would make them refuse each other midway (etcd, replication, Patroni), and etcd keeps the
    CA it started with until it restarts. A new host, or one whose certificate the new CA also
    verifies (the same CA re-issued), may take it."""
    text = _read(certificate) if have is not None and certificate else None
    if text is None:
        return None
    cert = x509.load_pem_x509_certificate(text.encode())
    issued_by = __utils__["pgcluster_x509.issued_by"]
    new_cas = x509.load_pem_x509_certificates(pem.encode())
    if any(issued_by(cert, ca) for ca in new_cas) or \
            not issued_by(cert, x509.load_pem_x509_certificate(have.encode())):
        return None  # the new bundle still verifies this host (e.g. it holds the old CA too)
    subject = {which: x509.load_pem_x509_certificate(p.encode()).subject.rfc4514_string()
               for which, p in (("old", have), ("new", pem))}
    return (f"the salt-master's CA is now {subject['new']}, but this host's certificate is from "
            f"{subject['old']}, which the other hosts trust: switching a running cluster to "
            "another CA is refused (the hosts would refuse each other while they move, and etcd "
            "keeps its CA until it restarts). Put back the CA it had (pgcluster:tls:ca, or "
            "pillar/generated/pki on the master), or deploy the cluster anew with the new one")


def _why_new(name, *, private_key, ca, names, renew_days, issued_after=None):
    """Why the certificate at ``name`` must be issued again, or None. names: (host, address)."""
    text, ca_pem = _read(name), _read(ca)
    if text is None:
        return "there is none"
    if ca_pem is None:
        return "the CA's certificate is missing"
    cert = x509.load_pem_x509_certificate(text.encode())
    why = _mismatch(cert, ca_pem, private_key, names)
    if why is None and issued_after is not None:
        # When it was written here, not its notBefore, which a CA may set in the past.
        written = datetime.datetime.fromtimestamp(os.stat(name).st_mtime, datetime.UTC)
        if written < datetime.datetime.fromisoformat(issued_after):
            why = (f"it was written {written:%Y-%m-%d %H:%M:%S}Z, before {issued_after} "
                   "(pgcluster:tls:issued_after)")
    if why is None:
        left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
        if left < datetime.timedelta(days=renew_days):
            why = f"it ends {cert.not_valid_after_utc:%Y-%m-%d}, within {renew_days} days"
    return why


def _mismatch(cert, ca_pem, private_key, names):
    """What makes the certificate wrong for this host, its key and the CA, or None."""
    with open(private_key, "rb") as fh:
        key = serialization.load_pem_private_key(fh.read(), None)
    why = __utils__["pgcluster_x509.unfit"](
        cert, x509.load_pem_x509_certificate(ca_pem.encode()), key.public_key(), *names)
    return f"it {why}" if why else None


# Salt fills a state's arguments by name from its argspec's plain arguments, not keyword-only ones.
def certificate_managed(name, private_key, ca, address, renew_days=30, issued_after=None):  # noqa: PLR0917
    """
    This host's certificate at ``name`` (0644), for its key at ``private_key``, from the CA
    whose certificate is at ``ca``, naming this minion and ``address``; issued again
    ``renew_days`` before its end, and when it was written before ``issued_after`` (an ISO
    8601 moment with its time zone: a rotation).
    """
    ret = _ret(name)
    host = __opts__["id"]
    if issued_after and datetime.datetime.fromisoformat(issued_after) > \
            datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5):
        return {**ret, "result": False,
                "comment": f"pgcluster:tls:issued_after {issued_after} is in the future: every "
                           "state.apply until then would sign again; give a moment past"}
    why = _why_new(name, private_key=private_key, ca=ca, names=(host, address),
                   renew_days=int(renew_days), issued_after=issued_after)
    if why is None:
        ret["comment"] = "the host's certificate is current"
        return ret
    if __opts__["test"]:
        return {**ret, "result": None, "changes": {"certificate": why},
                "comment": f"the master would sign a new certificate: {why}"}
    csr = __salt__["x509.create_csr"](private_key=private_key, CN=host)
    der = x509.load_pem_x509_csr(csr.encode()).public_bytes(serialization.Encoding.DER)
    try:
        answer = _ask("sign", base64.urlsafe_b64encode(der).decode().rstrip("="))
    except RuntimeError as exc:
        return {**ret, "result": False, "comment": str(exc)}
    cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
    unfit = _mismatch(cert, _read(ca), private_key, (host, address))
    if unfit:  # e.g. the master's CA changed since this host wrote its ca.crt
        return {**ret, "result": False,
                "comment": f"the master's new certificate was not written: {unfit}"}
    os.makedirs(os.path.dirname(name), exist_ok=True)
    _write(name, answer["certificate"])
    ret["changes"] = {"certificate": why, "serial": format(cert.serial_number, "x"),
                      "not_after": cert.not_valid_after_utc.isoformat()}
    ret["comment"] = f"the master signed a new certificate: {why}"
    return ret


# What a service needs from salt/tls, and the mode of its copy: the key for its owner only.
COPIES = {"ca.crt": 0o644, "host.crt": 0o644, "host.key": 0o600}
COPIES_DIR_MODE = 0o750


def _owned_as(path, uid, gid, mode):
    """Whether ``path`` has that owner, group and mode (False when it is missing)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, mode)


def _copy_plan(name, source, uid, gid):
    """{what: why} for the directory and each copy that differs; raises naming a missing
    source."""
    plan = {}
    if not os.path.isdir(name):
        plan[name] = "missing"
    elif not _owned_as(name, uid, gid, COPIES_DIR_MODE):
        plan[name] = "owner or mode"
    for file, mode in COPIES.items():
        wanted = _read(os.path.join(source, file))
        if wanted is None:
            raise FileNotFoundError(f"{os.path.join(source, file)} is missing (salt/tls makes it)")
        path = os.path.join(name, file)
        have = _read(path)
        if have is None:
            plan[path] = "missing"
        elif have != wanted:
            plan[path] = "changed"
        elif not _owned_as(path, uid, gid, mode):
            plan[path] = "owner or mode"
    return plan


def copies_managed(name, source, user, group):
    """
    Copies of the CA's certificate, this host's certificate and its key from ``source`` (the
    folder salt/tls keeps them in) in the directory ``name``, owned by ``user`` and ``group``
    (0750; the key 0600, the certificates 0644), for a service that reads them as its own user
    and refuses a key others can read. Contents are never shown; the changes name the files
    that changed, so one ``onchanges`` on this state reloads the service.
    """
    ret = _ret(name)
    try:
        uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
        plan = _copy_plan(name, source, uid, gid)
    except (KeyError, FileNotFoundError) as exc:
        why = f"no such user or group: {exc}" if isinstance(exc, KeyError) else str(exc)
        if __opts__["test"]:
            # On a new host the package that makes the user, or salt/tls, has not run yet.
            return {**ret, "result": None, "changes": {name: "missing"},
                    "comment": f"would make the copies in {name} once it can: {why}"}
        return {**ret, "result": False, "comment": why}
    if not plan:
        ret["comment"] = f"the copies in {name} are current"
        return ret
    ret["changes"] = plan
    if __opts__["test"]:
        return {**ret, "result": None, "comment": f"would update in {name}: {', '.join(plan)}"}
    os.makedirs(name, exist_ok=True)
    os.chown(name, uid, gid)
    os.chmod(name, COPIES_DIR_MODE)
    for file, mode in COPIES.items():
        path = os.path.join(name, file)
        if path in plan:
            _write(path, _read(os.path.join(source, file)), mode, owner=(uid, gid))
    ret["comment"] = f"updated in {name}: {', '.join(plan)}"
    return ret

