"""The state pgcluster_tls.copies_managed: a service's own copies of the CA's certificate, the
host's certificate and its key, kept in step with salt/tls's, owned by the service's user."""

from __future__ import annotations

import grp
import os
import pwd
import stat

import pytest

from tests.certificates import issue
from tests.unit.conftest import load_module

state = load_module("_states/pgcluster_tls.py")
# A user and group other than root's, present on every Debian system (the tests run as root).
USER, GROUP = "nobody", "nogroup"


@pytest.fixture
def opts():
    return {"test": False}


@pytest.fixture
def configure_loader_modules(opts):
    return {state: {"__opts__": opts}}


@pytest.fixture
def source(tmp_path):
    """salt/tls's folder: root's files, the key 0600."""
    folder = tmp_path / "tls"
    folder.mkdir()
    ca, _ = issue("ca")
    cert, key = issue("postgres-srv1")
    for name, pem, mode in (("ca.crt", ca, 0o644), ("host.crt", cert, 0o644), ("host.key", key, 0o600)):
        (folder / name).write_bytes(pem)
        (folder / name).chmod(mode)
    return folder


def copies(tmp_path, source, **kwargs):
    return state.copies_managed(str(tmp_path / "copies"), str(source), USER, GROUP, **kwargs)


def owner_and_mode(path) -> tuple[str, str, str]:
    st = os.stat(path)
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, oct(stat.S_IMODE(st.st_mode))


def test_the_copies_are_made_owned_by_the_service_with_the_key_private(tmp_path, source):
    ret = copies(tmp_path, source)
    assert ret["result"] is True
    folder = tmp_path / "copies"
    assert set(ret["changes"]) == {str(folder), *(str(folder / n) for n in state.COPIES)}
    assert owner_and_mode(folder) == (USER, GROUP, "0o750")
    assert owner_and_mode(folder / "host.key") == (USER, GROUP, "0o600")
    assert owner_and_mode(folder / "host.crt") == (USER, GROUP, "0o644")
    for name in state.COPIES:
        assert (folder / name).read_text() == (source / name).read_text()
    # The key's text is in no part of what the state returns (Salt prints and logs it).
    assert (source / "host.key").read_text().splitlines()[1] not in repr(ret)


def test_a_second_run_changes_nothing(tmp_path, source):
    copies(tmp_path, source)
    again = copies(tmp_path, source)
    assert again["result"] is True and again["changes"] == {}


def test_a_renewed_certificate_changes_only_what_changed(tmp_path, source):
    copies(tmp_path, source)
    cert, key = issue("postgres-srv1")
    (source / "host.crt").write_bytes(cert)
    (source / "host.key").write_bytes(key)
    ret = copies(tmp_path, source)
    folder = tmp_path / "copies"
    assert ret["result"] is True
    assert ret["changes"] == {str(folder / "host.crt"): "changed", str(folder / "host.key"): "changed"}
    assert (folder / "host.key").read_bytes() == key
    assert owner_and_mode(folder / "host.key") == (USER, GROUP, "0o600")


def test_a_copy_made_readable_by_others_is_put_right(tmp_path, source):
    copies(tmp_path, source)
    key = tmp_path / "copies" / "host.key"
    key.chmod(0o644)
    ret = copies(tmp_path, source)
    assert ret["changes"] == {str(key): "owner or mode"}
    assert owner_and_mode(key) == (USER, GROUP, "0o600")


def test_test_mode_says_what_would_change_and_writes_nothing(tmp_path, source, opts):
    copies(tmp_path, source)
    (source / "host.crt").write_bytes(issue("postgres-srv1")[0])
    opts["test"] = True
    ret = copies(tmp_path, source)
    copy = tmp_path / "copies" / "host.crt"
    assert ret["result"] is None and ret["changes"] == {str(copy): "changed"}
    assert copy.read_text() != (source / "host.crt").read_text()


def test_a_missing_source_fails_naming_it_and_test_mode_on_a_new_host_does_not(tmp_path, source, opts):
    (source / "host.crt").unlink()
    ret = copies(tmp_path, source)
    assert ret["result"] is False and str(source / "host.crt") in ret["comment"]
    assert not (tmp_path / "copies").exists()
    opts["test"] = True
    ret = copies(tmp_path, source)
    assert ret["result"] is None and str(source / "host.crt") in ret["comment"]


def test_an_unknown_user_fails_naming_it(tmp_path, source):
    ret = state.copies_managed(str(tmp_path / "copies"), str(source), "no-such-user", GROUP)
    assert ret["result"] is False and "no-such-user" in ret["comment"]
