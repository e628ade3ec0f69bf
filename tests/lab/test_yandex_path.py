"""The Yandex path end to end, on the emulated Yandex Cloud (lab/yandex/cloud.py).

What a user runs (`make yandex-lab`: the provider's ensure_network, `salt-cloud -m
cloud.maps.d/yandex.map -P -y`, bin/deploy) against the fake API on loopback, whose VMs are lab
hosts booted from a cloud image: cloud-init reads each VM's metadata, salt-cloud bootstraps
its minion over SSH with the project's deploy script from the emulated internet's package
mirror, and the deployment builds the cluster across three subnets. Runs after every other
lab test (it needs the lab's names and addresses for itself), from nothing, and ends with
`make yandex-lab-down`, which must leave nothing behind.

Names, zones and addresses come from the map and the Yandex pillar (through the master).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from lab import object_storage, settings
from lab.cluster import Cluster, cluster_ca_file, salt
from tests.conftest import REPO, run

pytestmark = pytest.mark.yandex_lab

LAB = REPO / "bin" / "lab"
MAP = REPO / "cloud.maps.d" / "yandex.map"
PROVIDER = yaml.safe_load((REPO / "cloud.providers.d" / "yandex.conf.example").read_text())["yandex"]
# A member back in the cluster: (its role, its state) in Patroni's REST API.
REJOINED = (("replica", "streaming"), ("sync_standby", "streaming"), ("quorum_standby", "streaming"))


def make(target: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return run("make", "-C", REPO, target, timeout=timeout)


def map_vms() -> dict[str, dict]:
    """{VM name: its map entry (zone, ip_address)} from cloud.maps.d/yandex.map."""
    vms = {}
    for entries in yaml.safe_load(MAP.read_text()).values():
        for entry in entries:
            vms.update(entry)
    return vms


def cloud_nodes() -> dict[str, dict]:
    """The instances as the API reports them through the driver (salt-cloud -F)."""
    out = subprocess.run([settings.VENV / "bin/salt-cloud", "-F", "--out=json"], cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return json.loads(out).get("yandex", {}).get("yandex", {})


@pytest.fixture(scope="module")
def yandex_cluster():
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    if os.environ.get("PGLAB_REUSE") == "1" and (settings.CLOUD_STATE / "ready").exists():
        # For a developer iterating on tests: the emulated cloud's cluster as it stands.
        answers = salt("*", "pgcluster.config", timeout=60, check=True)
        yield Cluster(next(iter(answers.values())))
        return
    if settings.HOSTS_DIR.exists() and any(settings.HOSTS_DIR.iterdir()):
        run(LAB, "down", timeout=300)  # the lab's hosts bear the same names: one lab at a time
    try:
        make("yandex-lab", timeout=2400)
        answers = salt("*", "pgcluster.config", timeout=60, check=True)
        yield Cluster(next(iter(answers.values())))
    finally:
        run(LAB, "down", check=False, timeout=300)


def test_the_map_makes_each_vm_in_its_zone_with_cloud_init_and_the_bootstrapped_minion(yandex_cluster):
    nodes = cloud_nodes()
    vms = map_vms()
    assert set(nodes) == set(vms)
    public_key = (settings.CLOUD_STATE / "id_ed25519.pub").read_text().split()[1]
    for name, spec in vms.items():
        node = nodes[name]
        assert node["status"] == "RUNNING"
        assert node["zoneId"] == spec["zone"]
        assert node["private_ips"] == [spec["ip_address"]]
        # cloud-init made the SSH user from the metadata with salt-cloud's key ...
        keys = run(LAB, "exec", name, "--", "cat",
                   f"/home/{PROVIDER['ssh_username']}/.ssh/authorized_keys").stdout
        assert public_key in keys
        status = run(LAB, "exec", name, "--", "cloud-init", "status", "--long").stdout
        assert "status: done" in status and "DataSourceEc2" in status
        # ... and salt-cloud's deploy script installed the pinned Salt from the package index.
        assert Path(settings.HOSTS_DIR / name / "upper/opt/pgcluster/salt/bin/salt-minion").exists()
    versions = salt("*", "test.version", timeout=30)
    assert versions == {name: settings.SALT_VERSION for name in vms}
    # The minion's config salt-cloud laid: etc/salt/cloud's minion settings with the provider's.
    assert salt("*", "config.get", "lazy_loader_strict_matching", timeout=30) == \
        {name: True for name in vms}


def test_the_cluster_spans_three_subnets_and_the_web_app_works(yandex_cluster):
    listing = salt(yandex_cluster.web, "patroni.list", timeout=60)[yandex_cluster.web]
    roles = sorted(m["role"] for m in listing["members"])
    states = {m["name"]: m["state"] for m in listing["members"]}
    assert roles.count("Leader") == 1 and len(roles) == 3
    assert sorted(states.values()) == ["running", "streaming", "streaming"]
    subnets = {ipaddress.ip_network(f"{a}/24", strict=False) for a in yandex_cluster.members.values()}
    assert len(subnets) == 3
    message_id = _post_message(yandex_cluster, "hello from the emulated cloud")
    assert "hello from the emulated cloud" in _get_message(yandex_cluster, message_id)


def test_every_hosts_certificate_is_from_the_organisations_ca(yandex_cluster):
    """The Yandex pillar's pgcluster:tls:ca (the user's own CA, made by `bin/lab cloud ca` as
    the README has a user make it): every host trusts it and holds a certificate it issued, for
    the host's names, which is what the other tests' TLS connections verify."""
    ca_file = cluster_ca_file(yandex_cluster.model)
    assert ca_file.is_relative_to(REPO / "pillar" / "generated" / "org-ca"), ca_file
    ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    tls = yandex_cluster.model["tls"]["dir"]
    for host, address in yandex_cluster.hosts.items():
        held = salt(host, "cmd.run", f"cat {tls}/ca.crt {tls}/host.crt", timeout=30, check=True)[host]
        *trusted, cert = x509.load_pem_x509_certificates(held.encode())
        assert trusted[0] == ca, host  # the issuing CA first (then its chain, when it has one)
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [host]
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [address]


def test_backups_reach_object_storage_through_the_nat_gateway(yandex_cluster):
    """The Yandex pillar's S3 repository: the deployment's first backup and the WAL archive are
    in (the emulated) Object Storage, by its public name and its certificate from a public CA."""
    backup = yandex_cluster.backup
    stanza = backup["stanza"]
    numbers = [n for n, r in enumerate(backup["repositories"], 1) if r["type"] == "s3"]
    assert numbers, "the Yandex pillar keeps its backups in Object Storage"
    info = salt(yandex_cluster.web, "pgbackrest.info", timeout=120, check=True)[yandex_cluster.web]
    for number in numbers:
        s3 = backup["repositories"][number - 1]["s3"]
        public = (settings.OBJECT_STORAGE_ENDPOINT, None, None)  # no hosts entry, no own CA
        assert (s3["endpoint"], s3["address"], s3["ca_file"]) == public
        assert info["repositories"][str(number)]["status"] == "ok", info["repositories"]
        labels = [b["label"] for b in info["backups"] if b["repo"] == number and b["type"] == "full"]
        assert labels, info["backups"]
        # What the store itself holds: the backup's files and archived WAL.
        prefix = backup["repositories"][number - 1]["path"].strip("/")
        files = object_storage.list_keys(object_storage.INTERNET, s3["port"], s3["bucket"],
                                         f"{prefix}/backup/{stanza}/{labels[0]}/pg_data/")
        assert any(k.endswith("/PG_VERSION.zst") for k in files), files[:20]
        archived = object_storage.list_keys(object_storage.INTERNET, s3["port"], s3["bucket"],
                                            f"{prefix}/archive/{stanza}/")
        assert any(k.endswith(".zst") for k in archived), archived[:20]


def test_a_vm_without_egress_fails_its_bootstrap_saying_why_and_is_deleted(yandex_cluster, tmp_path):
    """A subnet with no NAT route and a VM with no public address: the deploy script cannot
    reach the package index, says so, and the driver deletes the VM."""
    subnet = _api_subnet("pgcluster-no-egress", "ru-central1-a", "10.0.9.0/24")
    vm_map = tmp_path / "no-egress.map"
    vm_map.write_text(yaml.safe_dump({"yandex-db": [{"no-egress": {
        "zone": "ru-central1-a", "subnet_name": "pgcluster-no-egress", "ip_address": "10.0.9.20"}}]}))
    try:
        result = subprocess.run([settings.VENV / "bin/salt-cloud", "-m", vm_map, "-y", "--out=json"],
                                cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
        said = result.stdout + result.stderr
        assert "no egress to the internet" in said, said[-3000:]
        assert "was deleted" in said, said[-3000:]
        assert "no-egress" not in cloud_nodes()
        assert not (settings.HOSTS_DIR / "no-egress").exists()
    finally:
        _api_delete(f"/vpc/v1/subnets/{subnet}")


def test_stopping_the_leader_vm_elects_a_member_in_another_zone_and_it_rejoins_when_started(
        yandex_cluster):
    old = _leader(yandex_cluster)
    run(settings.VENV / "bin/salt-cloud", "-a", "stop", old, "-y", timeout=300)
    assert cloud_nodes()[old]["status"] == "STOPPED"
    deadline = time.monotonic() + 120
    new = None
    while time.monotonic() < deadline:
        new = _leader(yandex_cluster, exclude=old)
        if new and new != old:  # a member may still report the old leader for a moment
            break
        time.sleep(2)
    assert new and new != old
    assert map_vms()[new]["zone"] != map_vms()[old]["zone"]
    message_id = _post_message(yandex_cluster, "after the failover")
    assert "after the failover" in _get_message(yandex_cluster, message_id)
    # Started again through the API, the old leader's VM boots and its member rejoins as a replica.
    run(settings.VENV / "bin/salt-cloud", "-a", "start", old, "-y", timeout=300)
    assert cloud_nodes()[old]["status"] == "RUNNING"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        states = _members(yandex_cluster)
        if states.get(old) in REJOINED:
            break
        time.sleep(2)
    assert states.get(old) in REJOINED, states


def test_yandex_lab_down_deletes_everything_through_salt_cloud(yandex_cluster):
    make("yandex-lab-down", timeout=900)
    assert not settings.HOSTS_DIR.exists() or not any(settings.HOSTS_DIR.iterdir())
    netns = run("ip", "netns", "list").stdout
    assert settings.ROUTER_NS not in netns and settings.INTERNET_NS not in netns
    assert "pglab" not in run("ip", "-o", "link").stdout
    assert not settings.CLOUD_STATE.exists()
    leftovers = subprocess.run(["pgrep", "-f", "bin/lab cloud serve|systemd-nspawn.*--machine="],
                               capture_output=True, text=True, check=False).stdout
    assert leftovers == ""


# --- helpers -------------------------------------------------------------------------------------


def _leader(cluster: Cluster, exclude: str | None = None) -> str | None:
    """The leader as a live member's Patroni REST API reports it."""
    for member in cluster.members:
        if member == exclude:
            continue
        try:
            with cluster.open_patroni(cluster.patroni_url(member, "/cluster"), timeout=3) as r:
                body = json.load(r)
        except OSError:
            continue
        leaders = [m["name"] for m in body.get("members", []) if m.get("role") == "leader"]
        return leaders[0] if leaders else None
    return None


def _members(cluster: Cluster) -> dict[str, tuple[str, str]]:
    """{member: (role, state)} as the leader's Patroni REST API reports them."""
    leader = _leader(cluster)
    if not leader:
        return {}
    try:
        with cluster.open_patroni(cluster.patroni_url(leader, "/cluster"), timeout=3) as answer:
            return {m["name"]: (m["role"], m["state"]) for m in json.load(answer)["members"]}
    except OSError:
        return {}


def _post_message(cluster: Cluster, text: str) -> int:
    request = urllib.request.Request(f"{cluster.url}/api/messages", method="POST",
                                     data=json.dumps({"text": text}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)["id"]


def _get_message(cluster: Cluster, message_id: int) -> str:
    with urllib.request.urlopen(f"{cluster.url}/api/messages/{message_id}", timeout=30) as answer:
        return answer.read().decode()


def _api_token() -> str:
    import importlib.util

    spec = importlib.util.spec_from_file_location("yandex_driver", REPO / "_clouds/yandex.py")
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    key = json.loads((settings.CLOUD_STATE / "key.json").read_text())
    body = json.dumps({"jwt": driver.make_jwt(key)}).encode()
    request = urllib.request.Request(f"{_api()}/iam/v1/tokens", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)["iamToken"]


def _api() -> str:
    return settings.CLOUD_API_URL


def _api_call(method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(f"{_api()}{path}", method=method,
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {_api_token()}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        operation = json.load(answer)
    while "done" in operation and not operation["done"]:
        time.sleep(0.2)
        operation = _api_call("GET", f"/operations/{operation['id']}")
    return operation


def _api_subnet(name: str, zone: str, cidr: str) -> str:
    """A subnet of the provider's network with no route table: no way out."""
    from lab.yandex.fake_api import FOLDER

    networks = _api_call("GET", f"/vpc/v1/networks?folderId={FOLDER}")["networks"]
    network = next(n["id"] for n in networks if n["name"] == PROVIDER["network"]["name"])
    operation = _api_call("POST", "/vpc/v1/subnets", {"folderId": FOLDER, "name": name, "zoneId": zone,
                                                      "networkId": network, "v4CidrBlocks": [cidr]})
    return operation["response"]["id"]


def _api_delete(path: str) -> None:
    _api_call("DELETE", path)
