"""The real salt-cloud command, with the repo's Yandex driver, profiles and map, against the fake
Yandex API: what a user runs, and what they see."""

from __future__ import annotations

import ipaddress
import json

import yaml

from tests.conftest import REPO
from tests.yandex.conftest import NETWORK, provider_config, write_key_file

MAP = REPO / "cloud.maps.d" / "yandex.map"
# The cluster as the Yandex master serves it (bin/master --site yandex): the map's VMs must match.
YANDEX = yaml.safe_load((REPO / "pillar" / "cluster_yandex.sls").read_text())["pgcluster"]
PROFILES = yaml.safe_load((REPO / "cloud.profiles.d" / "yandex.conf").read_text())


def creates(fake):
    return len(fake.calls("POST", r"^/compute/v1/instances$"))


def test_a_profile_makes_a_debian_12_vm_as_the_api_documents(salt_cloud, fake, ssh_key):
    result = salt_cloud.json("-p", "yandex-db", "postgres-srv1")
    node = result["postgres-srv1"]
    assert node["state"] == "RUNNING"
    assert node["private_ips"] and node["public_ips"] == []
    assert fake.names() == ["postgres-srv1"]

    _, _, headers, body = fake.calls("POST", r"^/compute/v1/instances$")[0]
    assert headers.get("Idempotency-Key")
    # Sizes in bytes, and int64 fields as strings.
    assert body["resourcesSpec"] == {"memory": str(4 * 1024**3), "cores": "2", "coreFraction": "100"}
    profile = PROFILES["yandex-db"]
    assert body["bootDiskSpec"]["diskSpec"]["size"] == str(profile["disk_size"] * 1024**3)
    assert body["bootDiskSpec"]["diskSpec"]["typeId"] == profile["disk_type"]
    # PostgreSQL's own disk, under the name the Yandex pillar mounts it by.
    data = profile["secondary_disks"][0]
    assert body["secondaryDiskSpecs"] == [{
        "autoDelete": True, "deviceName": data["device_name"],
        "diskSpec": {"size": str(data["size"] * 1024**3), "typeId": data["type"]}}]
    assert YANDEX["postgresql"]["data_disk"]["device"] == \
        f"/dev/disk/by-id/virtio-{data['device_name']}"
    newest_debian = max((i for i in fake.images.values() if i["family"] == "debian-12"),
                        key=lambda i: i["createdAt"])
    assert body["bootDiskSpec"]["diskSpec"]["imageId"] == newest_debian["id"]
    assert body["bootDiskSpec"]["autoDelete"] is True
    public_key = (ssh_key.parent / "id_ed25519.pub").read_text().strip()
    assert body["metadata"]["ssh-keys"] == f"debian:{public_key}"
    assert body["metadata"]["user-data"].startswith("#cloud-config")
    assert public_key in body["metadata"]["user-data"]
    assert body["labels"] == {"project": "pgcluster", "role": "database"}


def test_the_map_makes_the_four_servers_once_members_in_three_zones(salt_cloud, fake):
    first = salt_cloud("-m", MAP, "-P")
    assert first.returncode == 0, first.stdout + first.stderr
    hosts = {**YANDEX["members"], **YANDEX["web"]}
    assert fake.names() == sorted(hosts)
    nodes = salt_cloud.json("-Q")["yandex"]["yandex"]
    # Each VM at the address the Yandex pillar gives it, in the zone whose subnet holds it.
    assert {name: n["private_ips"] for name, n in nodes.items()} == {
        name: [host["address"] for host in [entry]] for name, entry in hosts.items()}
    zones = {i["name"]: i["zoneId"] for i in fake.instances.values()}
    assert len({zones[m] for m in YANDEX["members"]}) == 3
    for name, zone in zones.items():
        subnet = fake.subnets[next(i for i in fake.instances.values() if i["name"] == name)
                              ["networkInterfaces"][0]["subnetId"]]
        assert subnet["zoneId"] == zone
        block = ipaddress.ip_network(subnet["v4CidrBlocks"][0])
        assert ipaddress.ip_address(hosts[name]["address"]) in block
    # Every VM is in the network's security group: inside the subnets anything, HTTP and SSH in.
    cluster_group = next(g for g in fake.security_groups.values() if g["name"] == "pgcluster-cluster")
    assert all(i["networkInterfaces"][0]["securityGroupIds"] == [cluster_group["id"]]
               for i in fake.instances.values())
    rules = {(r["direction"], r.get("protocolName"), (r.get("ports") or {}).get("fromPort")):
             r["cidrBlocks"]["v4CidrBlocks"] for r in cluster_group["rules"]}
    assert rules[("INGRESS", "ANY", None)] == list(NETWORK["subnets"].values())
    assert rules[("INGRESS", "TCP", "80")] == rules[("EGRESS", "ANY", None)] == ["0.0.0.0/0"]
    # The members share one spread placement group; the web VM is outside it.
    groups = {i["name"]: (i.get("placementPolicy") or {}).get("placementGroupId")
              for i in fake.instances.values()}
    group = fake.placement_groups[groups["postgres-srv1"]]
    assert group["name"] == "pgcluster-db" and "spreadPlacementStrategy" in group
    assert {groups[m] for m in YANDEX["members"]} == {group["id"]} and not groups["web"]
    # Only the web server has a public address, the reserved one, and the run shows it, as
    # `terraform apply` did.
    reserved = next(a for a in fake.addresses.values() if a["name"] == "pgcluster-web")
    web_public = nodes["web"]["public_ips"]
    assert web_public == [reserved["externalIpv4Address"]["address"]] and reserved["used"] is True
    assert all(not n["public_ips"] for k, n in nodes.items() if k != "web")
    assert web_public[0] in first.stdout
    # Each VM signed in with its own process's token: four creates, each with its own key.
    keys = {c[2]["Idempotency-Key"] for c in fake.calls("POST", r"^/compute/v1/instances$")}
    assert creates(fake) == 4 and len(keys) == 4

    again = salt_cloud("-m", MAP, "-P")
    assert again.returncode == 0, again.stdout + again.stderr
    assert creates(fake) == 4
    assert "already" in (again.stdout + again.stderr).lower()


def test_query_full_query_and_power_actions(salt_cloud, fake):
    salt_cloud.json("-p", "yandex-web", "web")
    full = salt_cloud.json("-F")["yandex"]["yandex"]["web"]
    assert full["zoneId"] == "ru-central1-a" and full["platformId"] == "standard-v3"
    assert full["resources"]["memory"] == str(2 * 1024**3)

    shown = salt_cloud.json("-a", "show_instance", "web")["yandex"]["yandex"]["web"]
    # The user data is in the VM, but not on the screen.
    assert set(shown["metadata"]) == {"ssh-keys", "user-data"}
    assert all(v.startswith("<") and v.endswith(" bytes>") for v in shown["metadata"].values())

    assert salt_cloud.json("-a", "stop", "web")["yandex"]["yandex"]["web"] == {"web": "STOPPED"}
    assert salt_cloud.json("-Q")["yandex"]["yandex"]["web"]["state"] == "STOPPED"
    assert salt_cloud.json("-a", "start", "web")["yandex"]["yandex"]["web"] == {"web": "RUNNING"}
    assert salt_cloud.json("-a", "reboot", "web")["yandex"]["yandex"]["web"] == {"web": "RUNNING"}


def test_destroy_one_then_the_whole_map(salt_cloud, fake):
    assert salt_cloud("-m", MAP, "-P").returncode == 0
    result = salt_cloud("-d", "postgres-srv3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert fake.names() == ["postgres-srv1", "postgres-srv2", "web"]
    # Its boot and data disks went with it; the others' are all still attached.
    attached = {d["diskId"] for i in fake.instances.values()
                for d in [i["bootDisk"], *i.get("secondaryDisks", [])]}
    assert set(fake.disks) == attached and len(attached) == 5

    result = salt_cloud("-m", MAP, "-d")
    assert result.returncode == 0, result.stdout + result.stderr
    assert fake.names() == [] and fake.disks == {}


def test_a_quota_error_is_shown_at_once_and_leaves_nothing(salt_cloud, fake):
    fake.instance_quota = 0
    result = salt_cloud("-p", "yandex-db", "postgres-srv1")
    output = result.stdout + result.stderr
    assert "Quota limit compute.instances.count exceeded" in output
    assert "request id" in output
    assert creates(fake) == 1  # waiting does not lift a quota: no retries
    assert fake.names() == []


def test_a_key_the_cloud_does_not_know_is_refused_with_its_message(salt_cloud, fake, tmp_path, ssh_key):
    stranger = tmp_path / "other-key.json"
    write_key_file(stranger, key_id="ajeunknownkey0000001")
    salt_cloud.set_provider(provider_config(fake, stranger, ssh_key))
    result = salt_cloud("-p", "yandex-db", "postgres-srv1")
    output = result.stdout + result.stderr
    assert "Unknown key id ajeunknownkey0000001" in output and "HTTP 401" in output
    assert fake.names() == []
    # The key never shows: not in the output, not in the log.
    private_key = json.loads(stranger.read_text())["private_key"].splitlines()[3]
    assert private_key not in output and private_key not in salt_cloud.log


def test_a_wrong_signature_is_refused(salt_cloud, fake, tmp_path, ssh_key, key_file):
    forged = tmp_path / "forged-key.json"
    write_key_file(forged)  # the registered key id, with another private key
    salt_cloud.set_provider(provider_config(fake, forged, ssh_key))
    result = salt_cloud("-Q")
    output = result.stdout + result.stderr
    assert "JWT signature validation failed" in output


def test_a_create_operation_that_fails_leaves_no_vm(salt_cloud, fake):
    fake.fail_next_operation(8, "Not enough resources in zone ru-central1-a")
    result = salt_cloud("-p", "yandex-db", "postgres-srv1")
    output = result.stdout + result.stderr
    assert "Not enough resources in zone ru-central1-a" in output
    assert "was deleted" in output
    assert fake.names() == [] and fake.disks == {}


def test_a_failed_bootstrap_deletes_the_vm_and_its_minion_key(salt_cloud, fake, key_file, ssh_key,
                                                            banner_only_ssh):
    salt_cloud.set_provider(provider_config(fake, key_file, ssh_key, deploy=True, ssh_port=banner_only_ssh,
                                            wait_for_passwd_maxtries=1))
    result = salt_cloud("-p", "yandex-web", "web")
    output = result.stdout + result.stderr
    assert "bootstrapping web at 127.0.77.1 failed" in output
    assert "was deleted" in output
    assert fake.names() == [] and fake.disks == {}
    # Its public address is free again, and still reserved for the next web VM.
    reserved = next(a for a in fake.addresses.values() if a["name"] == "pgcluster-web")
    assert reserved["used"] is False
    pki = salt_cloud.root / "etc" / "pki" / "master"
    assert not list(pki.glob("minions*/web"))


CHANGES = r"^/(vpc|compute)/"  # every POST but the token exchange


def made(report):
    return {what: how.split()[0] for what, how in report.items()}


def test_ensure_network_makes_what_is_missing_once_and_destroy_network_waits_for_the_vms(bare_salt_cloud,
                                                                                        fake):
    salt_cloud = bare_salt_cloud
    first = salt_cloud.json("-f", "ensure_network", "yandex")["yandex"]["yandex"]
    subnet_names = [f"subnet {NETWORK['name']}-{zone}" for zone in NETWORK["subnets"]]
    expected = {f"network {NETWORK['name']}", f"gateway {NETWORK['name']}-egress",
                f"route table {NETWORK['name']}-egress", *subnet_names,
                f"security group {NETWORK['name']}-cluster",
                *(f"placement group {g}" for g in NETWORK["placement_groups"]),
                *(f"address {a}" for a in NETWORK["addresses"])}
    assert set(first) == expected and set(made(first).values()) == {"made"}, first
    changes = len(fake.calls("POST", CHANGES)) + len(fake.calls("PATCH"))
    second = salt_cloud.json("-f", "ensure_network", "yandex")["yandex"]["yandex"]
    assert set(second) == expected and set(made(second).values()) == {"found"}, second
    assert len(fake.calls("POST", CHANGES)) + len(fake.calls("PATCH")) == changes
    # Every subnet sends 0.0.0.0/0 through the NAT gateway.
    network = next(n for n in fake.networks.values() if n["name"] == NETWORK["name"])
    gateway = next(g for g in fake.gateways.values() if g["name"] == f"{NETWORK['name']}-egress")
    for zone, cidr in NETWORK["subnets"].items():
        subnet = next(s for s in fake.subnets.values() if s["name"] == f"{NETWORK['name']}-{zone}")
        assert (subnet["networkId"], subnet["zoneId"]) == (network["id"], zone)
        assert subnet["v4CidrBlocks"] == [cidr]
        table = fake.route_tables[subnet["routeTableId"]]
        assert [(r["destinationPrefix"], r["gatewayId"]) for r in table["staticRoutes"]] == \
            [("0.0.0.0/0", gateway["id"])]

    assert salt_cloud("-m", MAP, "-P").returncode == 0
    refused = salt_cloud("-f", "destroy_network", "yandex")
    output = refused.stdout + refused.stderr
    assert f"network {NETWORK['name']} is still in use, nothing was deleted" in output, output
    group = f"security group {NETWORK['name']}-cluster"
    assert f"postgres-srv2 (subnet {NETWORK['name']}-ru-central1-b, {group}, placement group pgcluster-db)" \
        in output
    assert f"web (subnet pgcluster-ru-central1-a, {group}, address pgcluster-web)" in output
    assert network["id"] in fake.networks and len(fake.calls("DELETE")) == 0

    assert salt_cloud("-m", MAP, "-d").returncode == 0
    gone = salt_cloud.json("-f", "destroy_network", "yandex")["yandex"]["yandex"]
    assert set(gone) == expected and set(made(gone).values()) == {"deleted"}, gone
    ours = [r for store in (fake.networks, fake.subnets, fake.gateways, fake.route_tables,
                            fake.placement_groups, fake.addresses) for r in store.values()
            if r.get("labels", {}).get("managed-by") == "salt-cloud"]
    assert ours == [] and fake.instances == {} and fake.disks == {}


def test_a_subnet_that_is_not_what_the_network_says_is_named_with_both(bare_salt_cloud, fake):
    fake.add_subnet(f"{NETWORK['name']}-ru-central1-b", "ru-central1-b", "10.0.9.0/24")
    result = bare_salt_cloud("-f", "ensure_network", "yandex")
    output = result.stdout + result.stderr
    assert f"subnet {NETWORK['name']}-ru-central1-b" in output
    assert "['10.0.9.0/24'] in ru-central1-b" in output
    assert f"the provider's network wants {NETWORK['subnets']['ru-central1-b']} in ru-central1-b" in output


def test_a_bad_network_block_is_refused_before_any_call(bare_salt_cloud, fake, key_file, ssh_key):
    network = {**NETWORK, "subnets": {**NETWORK["subnets"], "ru-central1-d": "10.0.1.128/25"}}
    bare_salt_cloud.set_provider(provider_config(fake, key_file, ssh_key, network=network))
    result = bare_salt_cloud("-f", "ensure_network", "yandex")
    output = result.stdout + result.stderr
    assert "network:subnets:ru-central1-d: 10.0.1.128/25 overlaps 10.0.1.0/24 of ru-central1-a" in output
    assert fake.requests == []


def test_a_quota_error_midway_says_what_was_made_and_a_second_run_finishes(bare_salt_cloud, fake):
    fake.inject("POST", r"^/vpc/v1/routeTables$", 8, "Quota limit vpc.routeTables.count exceeded")
    result = bare_salt_cloud("-f", "ensure_network", "yandex")
    output = result.stdout + result.stderr
    assert "Quota limit vpc.routeTables.count exceeded" in output
    assert f"made before that: network {NETWORK['name']} (made " in output
    assert f"gateway {NETWORK['name']}-egress (made " in output and "Run ensure_network again" in output
    assert not fake.route_tables
    ours = {f"{NETWORK['name']}-{zone}" for zone in NETWORK["subnets"]}
    assert not [s for s in fake.subnets.values() if s["name"] in ours]
    again = bare_salt_cloud.json("-f", "ensure_network", "yandex")["yandex"]["yandex"]
    assert made(again)[f"network {NETWORK['name']}"] == "found"
    assert made(again)[f"route table {NETWORK['name']}-egress"] == "made"
