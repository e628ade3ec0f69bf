"""The emulated Yandex Cloud's parts that need no lab: the metadata service's answers (as
cloud-init's Ec2 datasource crawls them), the package mirror's index, who may go out through
the NAT gateway, and the deploy script's Salt. The whole emulation runs in
tests/lab/test_yandex_path.py."""

from __future__ import annotations

import re
import threading
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from lab import settings
from lab.yandex import cloud
from lab.yandex.fake_api import FakeYandex
from tests.conftest import REPO

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheMetadataTest salt-cloud"


def instance(**metadata):
    return {"id": "fhm0instance00000001", "fqdn": "web.ru-central1.internal", "zoneId": "ru-central1-a",
            "metadata": metadata,
            "networkInterfaces": [{"primaryV4Address": {"address": "10.0.1.10"}}]}


def crawl(vm, path="meta-data/"):
    """What cloud-init's Ec2 datasource does with the tree: every listed entry must answer
    (a directory that does not makes it give up the whole crawl and fall back to no data)."""
    listing = cloud.ec2_metadata(vm, path)
    assert listing is not None, f"{path} does not answer"
    found = {}
    for line in listing.splitlines():
        # "0=debian" under public-keys/: the key's folder is 0/.
        entry = line.split("=", 1)[0] + "/" if path.endswith("public-keys/") else line
        if entry.endswith("/"):
            found.update(crawl(vm, path + entry))
        else:
            found[path + entry] = cloud.ec2_metadata(vm, path + entry)
            assert found[path + entry] is not None, f"{path + entry} is listed but does not answer"
    return found


def test_cloud_init_finds_the_instance_its_address_and_the_ssh_key():
    tree = crawl(instance(**{"ssh-keys": f"debian:{KEY}", "user-data": "#cloud-config\n"}))
    assert tree["meta-data/instance-id"] == "fhm0instance00000001"
    assert tree["meta-data/local-ipv4"] == "10.0.1.10"
    assert tree["meta-data/local-hostname"] == "web.ru-central1.internal"
    assert tree["meta-data/public-keys/0/openssh-key"] == KEY
    assert tree["meta-data/placement/availability-zone"] == "ru-central1-a"
    assert cloud.ec2_metadata(instance(**{"user-data": "#cloud-config\n"}), "user-data") == "#cloud-config\n"


def test_a_vm_without_keys_or_user_data_gets_none_and_unknown_paths_are_404():
    vm = instance()
    assert "public-keys/" not in cloud.ec2_metadata(vm, "meta-data/")
    assert cloud.ec2_metadata(vm, "user-data") is None
    assert cloud.ec2_metadata(vm, "meta-data/nothing-here") is None
    assert cloud.ec2_metadata(vm, "dynamic/instance-identity/document") is None
    # cloud-init asks the newest versions first and must be told they are not served.
    assert "2021-03-23" not in cloud.EC2_VERSIONS and "2009-04-04" in cloud.EC2_VERSIONS


def test_a_public_address_shows_in_the_metadata():
    vm = instance()
    vm["networkInterfaces"][0]["primaryV4Address"]["oneToOneNat"] = {"address": "127.0.78.1"}
    assert crawl(vm)["meta-data/public-ipv4"] == "127.0.78.1"


def test_only_subnets_routed_through_a_nat_gateway_and_public_vms_go_out():
    fake = FakeYandex(default_subnet=False)
    network = fake.add_network("pgcluster")
    routed = fake.add_subnet("routed", "ru-central1-a", "10.0.1.0/24", network)
    fake.add_subnet("closed", "ru-central1-b", "10.0.2.0/24", network)
    fake.gateways["gw"] = {"id": "gw", "sharedEgressGateway": {}}
    fake.route_tables["rt"] = {"id": "rt", "staticRoutes": [
        {"destinationPrefix": "0.0.0.0/0", "gatewayId": "gw"}]}
    fake.subnets[routed]["routeTableId"] = "rt"
    for address, nat in (("10.0.1.10", True), ("10.0.2.12", False), ("10.0.2.13", True)):
        vm = instance()
        vm["id"] = address
        vm["networkInterfaces"][0]["primaryV4Address"] = {"address": address}
        if nat:
            vm["networkInterfaces"][0]["primaryV4Address"]["oneToOneNat"] = {"address": "127.0.78.9"}
        fake.instances[address] = vm
    # 10.0.1.10 is inside a routed block already: listed twice it would clash in the router's set.
    assert cloud._egress_sources(fake) == ["10.0.1.0/24", "10.0.2.13"]


@pytest.fixture
def mirror(tmp_path):
    apt, wheels = tmp_path / "apt", tmp_path / "wheels"
    apt.mkdir()
    wheels.mkdir()
    (apt / "Packages").write_text("Package: python3-venv\n")
    (tmp_path / "secret").write_text("not for the VMs\n")
    (wheels / "Jinja2-3.1.6-py3-none-any.whl").write_bytes(b"PK")
    server = ThreadingHTTPServer(("127.0.0.1", 0), cloud._mirror_handler(apt, [wheels]))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, ""


def test_the_mirror_serves_a_flat_debian_repository_and_a_pip_simple_index(mirror):
    assert get(f"{mirror}/debian/./Packages") == (200, "Package: python3-venv\n")
    assert get(f"{mirror}/debian/InRelease")[0] == 404
    assert get(f"{mirror}/debian/%2e%2e%2fsecret")[0] == 404  # ../secret, beside the repository
    assert get(f"{mirror}/debian/..%2fsecret")[0] == 404
    status, page = get(f"{mirror}/simple/jinja2/")
    assert status == 200 and 'href="/wheels/Jinja2-3.1.6-py3-none-any.whl"' in page
    assert get(f"{mirror}/simple/Jinja2/")[0] == 200  # names are normalised, as on PyPI
    assert get(f"{mirror}/wheels/Jinja2-3.1.6-py3-none-any.whl") == (200, "PK")
    assert get(f"{mirror}/simple/salt/")[0] == 404


def _closure(name: str, found: dict) -> dict:
    """The distribution and everything it requires, {name: version}, as installed here."""
    key = canonicalize_name(name)
    if key not in found:
        found[key] = metadata.version(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                _closure(requirement.name, found)
    return found


def test_the_deploy_script_installs_the_masters_salt_with_the_masters_dependencies():
    script = (REPO / "etc/salt/cloud.deploy.d/pgcluster-minion.sh").read_text()
    pinned = re.search(r"^salt==(\S+)$", (REPO / "requirements.txt").read_text(), re.M).group(1)
    assert re.search(r"^SALT_VERSION=(\S+)$", script, re.M).group(1) == pinned == settings.SALT_VERSION
    constraints = re.search(r"<<'CONSTRAINTS'\n(.*?)^CONSTRAINTS$", script, re.M | re.S).group(1)
    assert constraints.split() == [f"{k}=={v}" for k, v in sorted(_closure("salt", {}).items())]
    # salt-cloud adds its bootstrap-salt flags to a script that names it; and it renders the
    # script with Jinja, which must find nothing of its own in the shell.
    assert "bootstrap-salt" not in script
    assert "{%" not in script and "{#" not in script
