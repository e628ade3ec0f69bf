"""The lab salt-cloud driver's contract, loaded the way Salt's own driver tests load theirs."""

from __future__ import annotations

import importlib.util

import pytest
from salt.exceptions import SaltCloudSystemExit

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("lab_cloud", REPO / "_clouds" / "lab.py")
lab_cloud = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lab_cloud)


@pytest.fixture
def configure_loader_modules():
    return {
        lab_cloud: {
            "__opts__": {
                "providers": {"lab": {"lab": {"driver": "lab", "minion": {"master": "10.0.0.1"}}}},
                "profiles": {"lab-web": {"provider": "lab:lab"}},
                "sock_dir": "/nonexistent",
                "transport": "zeromq",
                "pki_dir": "/nonexistent",
            },
            "__active_provider_name__": "lab:lab",
            "__utils__": {"cloud.fire_event": lambda *a, **k: None},
        }
    }


@pytest.mark.parametrize("function", ["avail_images", "avail_sizes", "avail_locations",
                                      "list_nodes", "list_nodes_full"])
def test_functions_refuse_to_be_called_as_actions(function):
    with pytest.raises(SaltCloudSystemExit, match="-f or --function"):
        getattr(lab_cloud, function)(call="action")


@pytest.mark.parametrize("action", ["show_instance", "start", "stop", "reboot"])
def test_actions_refuse_to_be_called_as_functions(action):
    with pytest.raises(SaltCloudSystemExit, match="-a or --action"):
        getattr(lab_cloud, action)("web", call="function")


def test_destroy_refuses_to_be_called_as_a_function():
    with pytest.raises(SaltCloudSystemExit, match="-d, --destroy"):
        lab_cloud.destroy("web", call="function")


def test_create_without_an_address_says_which_option_is_missing():
    vm_ = {"name": "web", "profile": "lab-web", "driver": "lab:lab"}
    with pytest.raises(SaltCloudSystemExit, match="web: set ip_address"):
        lab_cloud.create(vm_)


def test_the_provider_is_recognised():
    assert lab_cloud.__virtual__() == "lab"


@pytest.mark.parametrize(("disks", "message"), [
    ([{"size": 8}] * 4, "postgres-srv1: secondary_disks must be a list of at most 3 disks"),
    ([{"device_name": "pgdata"}], r"postgres-srv1: secondary_disks\[0\] needs a size in GB"),
    ([{"size": "8"}], r"postgres-srv1: secondary_disks\[0\] needs a size in GB"),
])
def test_bad_secondary_disks_are_refused_before_anything_is_made(disks, message):
    # pki_dir does not exist: reaching key generation or bin/lab would fail differently.
    vm_ = {"name": "postgres-srv1", "profile": "lab-web", "driver": "lab:lab",
           "ip_address": "10.0.0.11", "secondary_disks": disks}
    with pytest.raises(SaltCloudSystemExit, match=f"^{message}$"):
        lab_cloud.create(vm_)


def test_secondary_disks_become_bin_labs_disk_arguments():
    vm_ = {"name": "postgres-srv1", "profile": "lab-web", "driver": "lab:lab",
           "secondary_disks": [{"size": 8, "device_name": "pgdata"}, {"size": 2}]}
    assert lab_cloud._disk_args(vm_) == ["--disk", "pgdata:8", "--disk", "data1:2"]
