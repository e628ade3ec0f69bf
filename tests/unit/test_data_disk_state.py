"""The state pgcluster.filesystem on real block devices (loop devices of this machine): a blank
disk is formatted, anything else on a disk is refused and left as it was, and a home that holds
files is never mounted over."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from salt.modules import cmdmod

from tests.unit.conftest import load_module

state = load_module("_states/pgcluster.py")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root (CI runs as root)")


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def blkid_type(device: str) -> str:
    return subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", device],
                          capture_output=True, text=True, check=False).stdout.strip()


@pytest.fixture
def opts():
    return {"test": False}


@pytest.fixture
def configure_loader_modules(opts):
    grains = {"id": "postgres-srv1", "kernel": "Linux", "os": "Debian", "os_family": "Debian"}
    return {
        state: {"__grains__": grains, "__opts__": opts,
                "__salt__": {"cmd.run_all": cmdmod.run_all}},
        cmdmod: {"__grains__": grains, "__opts__": {"cachedir": "/tmp", "test": False}},
    }


@pytest.fixture
def disk(tmp_path):
    """A blank 64 MiB disk, named as udev names a Yandex secondary disk (a link to the node)."""
    backing = tmp_path / "pgdata.img"
    with open(backing, "wb") as f:
        f.truncate(64 * 2**20)
    loop = sh("losetup", "--find", "--show", str(backing))
    link = tmp_path / "virtio-pgdata"
    link.symlink_to(loop)
    yield str(link)
    for mounted in ("home", "elsewhere"):
        subprocess.run(["umount", str(tmp_path / mounted)], capture_output=True, check=False)
    sh("losetup", "--detach", loop)


def test_a_blank_disk_is_formatted_once(disk):
    first = state.filesystem(disk, fstype="ext4")
    assert first["result"] is True, first["comment"]
    assert first["changes"] == {"formatted": "ext4"}
    assert blkid_type(disk) == "ext4"
    again = state.filesystem(disk, fstype="ext4")
    assert again["result"] is True and again["changes"] == {}


def test_test_mode_says_it_would_format_and_writes_nothing(disk, opts):
    opts["test"] = True
    ret = state.filesystem(disk, fstype="ext4")
    assert ret["result"] is None and ret["changes"] == {"formatted": "ext4"}
    assert blkid_type(disk) == ""


def test_a_disk_with_another_filesystem_is_refused_and_kept(disk):
    sh("mkswap", disk)
    ret = state.filesystem(disk, fstype="ext4")
    assert ret["result"] is False
    assert ret["comment"] == (f"{disk} on postgres-srv1 holds a swap filesystem, not ext4: it is not "
                              f"formatted over. If nothing on it is needed, wipe it (wipefs -a {disk}) "
                              "and apply again")
    assert blkid_type(disk) == "swap"


def test_a_partitioned_disk_is_refused(disk):
    # An MBR with one Linux partition from sector 2048 to the end (what `sfdisk` would write).
    entry = bytes([0, 0, 0, 0, 0x83, 0, 0, 0]) + (2048).to_bytes(4, "little") \
        + (64 * 2048 - 2048).to_bytes(4, "little")
    with open(disk, "r+b") as f:
        f.seek(446)
        f.write(entry + bytes(48) + b"\x55\xaa")
    ret = state.filesystem(disk, fstype="ext4")
    assert ret["result"] is False
    assert f"{disk} on postgres-srv1 holds a dos partition table, not ext4" in ret["comment"]


def test_a_home_that_holds_files_is_not_mounted_over(disk, tmp_path):
    home = tmp_path / "home"
    (home / "15" / "main").mkdir(parents=True)
    ret = state.filesystem(disk, fstype="ext4", mountpoint=str(home))
    assert ret["result"] is False
    assert ret["comment"].startswith(f"postgres-srv1: {home} already holds files (15): mounting "
                                     f"{disk} there would hide them. To move them onto the disk, ")
    assert blkid_type(disk) == ""  # refused before anything was written


def test_home_mounted_from_the_disk_passes_and_an_empty_home_is_fine(disk, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    assert state.filesystem(disk, fstype="ext4", mountpoint=str(home))["changes"]
    sh("mount", disk, str(home))
    Path(home / "15").mkdir()
    ret = state.filesystem(disk, fstype="ext4", mountpoint=str(home))
    assert ret["result"] is True and ret["changes"] == {}


def test_a_missing_disk_says_where_it_should_come_from(tmp_path):
    ret = state.filesystem(str(tmp_path / "virtio-pgdata"), fstype="ext4")
    assert ret["result"] is False
    assert ret["comment"] == (f"postgres-srv1 has no {tmp_path / 'virtio-pgdata'}: is the disk "
                              "attached (the profile's secondary_disks, its device_name)? Without "
                              "one, set pgcluster:postgresql:data_disk:device: null")


def test_a_file_is_not_a_disk(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("")
    ret = state.filesystem(str(plain), fstype="ext4")
    assert ret["result"] is False and ret["comment"] == f"{plain} on postgres-srv1 is not a block device"


def test_a_disk_mounted_elsewhere_is_refused(disk, tmp_path):
    # E.g. a pillar naming the root disk's partition by mistake.
    assert state.filesystem(disk, fstype="ext4")["result"] is True
    (tmp_path / "elsewhere").mkdir()
    sh("mount", disk, str(tmp_path / "elsewhere"))
    ret = state.filesystem(disk, fstype="ext4", mountpoint=str(tmp_path / "home"))
    assert ret["result"] is False
    assert ret["comment"] == (f"postgres-srv1: {disk} ({os.path.realpath(disk)}) is already mounted "
                              f"on {tmp_path / 'elsewhere'}")


def test_a_home_mounted_from_another_device_is_refused(disk, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    sh("mount", "-t", "tmpfs", "other", str(home))
    ret = state.filesystem(disk, fstype="ext4", mountpoint=str(home))
    assert ret["result"] is False
    assert f"{home} is already the mount point of device 0:" in ret["comment"]
    assert blkid_type(disk) == ""


def test_a_symlinked_home_is_refused_before_formatting(disk, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "home").symlink_to(tmp_path / "real")
    ret = state.filesystem(disk, fstype="ext4", mountpoint=str(tmp_path / "home"))
    assert ret["result"] is False
    assert ret["comment"] == (f"postgres-srv1: {tmp_path / 'home'} is a symbolic link (to "
                              f"{tmp_path / 'real'}): a mount unit cannot mount there")
    assert blkid_type(disk) == ""
