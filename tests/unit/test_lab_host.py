"""The lab's own rules, without booting anything."""

from __future__ import annotations

import stat

import pytest

from lab import host, image, network
from lab.system import LabError


@pytest.mark.parametrize("address", ["10.0.0.11", "10.0.0.254"])
def test_addresses_in_the_lab_subnet_are_accepted(address):
    assert network.validate_address(address) == address


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("10.1.0.11", "not a host address in the lab subnet"),
        ("10.0.0.1", "not a host address in the lab subnet"),  # the bridge / salt-master
        ("10.0.0.255", "not a host address"),
        ("web", "not an IPv4 address"),
    ],
)
def test_other_addresses_are_refused_with_the_reason(address, why):
    with pytest.raises(LabError, match=why):
        network.validate_address(address)


def test_interface_names_fit_the_kernel_limit():
    assert len(network.veth_name("10.0.0.254")) <= 15
    # The emulated cloud's hosts, its subnets' bridges and the router's legs in them.
    assert len(network.veth_name("10.0.255.254")) <= 15
    assert network.veth_name("10.0.1.11") != network.veth_name("10.0.2.11")
    assert len(network.subnet_bridge("10.0.123.0/24")) <= 15


@pytest.mark.parametrize("name", ["Web", "postgres_srv1", "1web", "web-", "a" * 64])
def test_bad_host_names_are_refused_before_anything_is_made(name, tmp_path):
    with pytest.raises(LabError, match="not a valid host name"):
        host.Host(name, "10.0.0.50").create()


def test_seed_files_never_change_the_modes_of_existing_folders(tmp_path):
    """A private (0700) seed folder once made a host's / unreadable and its boot hang."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    root.chmod(0o755)
    (root / "etc").chmod(0o755)
    seed = tmp_path / "seed"
    (seed / "etc/salt/pki/minion").mkdir(parents=True)
    seed.chmod(0o700)
    (seed / "etc/salt/minion").write_text("master: 10.0.0.1\n")
    key = seed / "etc/salt/pki/minion/minion.pem"
    key.write_text("KEY")
    key.chmod(0o400)
    host._overlay_files(seed, root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "etc").stat().st_mode) == 0o755
    assert (root / "etc/salt/minion").read_text() == "master: 10.0.0.1\n"
    assert stat.S_IMODE((root / "etc/salt/pki/minion/minion.pem").stat().st_mode) == 0o400


def test_the_mirror_comes_from_this_machines_apt_sources():
    sources = image.debian_sources()
    assert any(suite == "bookworm" for _, suite in sources)
    assert all(uri.startswith(("http://", "https://", "file:")) for uri, _ in sources)


@pytest.mark.parametrize(("disks", "why"), [
    ({"Disk0": 8}, "disk Disk0:8 must be NAME:GiB"),
    ({"pgdata": 0}, "disk pgdata:0 must be NAME:GiB"),
    ({f"d{n}": 1 for n in range(4)}, "at most 3 data disks, not 4"),
])
def test_bad_data_disks_are_refused_before_anything_is_made(disks, why):
    with pytest.raises(LabError, match=why):
        host.Host("db9", "10.0.0.59", disks=disks).create()
    assert not host.Host("db9", "10.0.0.59").folder.exists()


def test_data_disks_appear_as_virtio_nodes_in_order():
    h = host.Host("db9", "10.0.0.59", disks={"pgdata": 8, "wal": 2})
    assert h.disk_nodes() == {"pgdata": "/dev/vdb", "wal": "/dev/vdc"}
