"""The real salt-cloud command, with the repo's Yandex driver, profiles and map, against the fake
Yandex API: what a user runs, and what they see."""

from __future__ import annotations

import json

from tests.conftest import REPO
from tests.yandex.conftest import provider_config, write_key_file

MAP = REPO / "cloud.maps.d" / "yandex.map"


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
    assert body["bootDiskSpec"]["diskSpec"]["size"] == str(20 * 1024**3)
    newest_debian = max((i for i in fake.images.values() if i["family"] == "debian-12"),
                        key=lambda i: i["createdAt"])
    assert body["bootDiskSpec"]["diskSpec"]["imageId"] == newest_debian["id"]
    assert body["bootDiskSpec"]["autoDelete"] is True
    public_key = (ssh_key.parent / "id_ed25519.pub").read_text().strip()
    assert body["metadata"]["ssh-keys"] == f"debian:{public_key}"
    assert body["metadata"]["user-data"].startswith("#cloud-config")
    assert public_key in body["metadata"]["user-data"]
    assert body["labels"] == {"project": "pgcluster", "role": "database"}


def test_the_map_makes_the_four_servers_once(salt_cloud, fake):
    first = salt_cloud("-m", MAP, "-P")
    assert first.returncode == 0, first.stdout + first.stderr
    assert fake.names() == ["postgres-srv1", "postgres-srv2", "postgres-srv3", "web"]
    nodes = salt_cloud.json("-Q")["yandex"]["yandex"]
    assert {name: n["private_ips"] for name, n in nodes.items()} == {
        "postgres-srv1": ["10.0.0.11"], "postgres-srv2": ["10.0.0.12"],
        "postgres-srv3": ["10.0.0.13"], "web": ["10.0.0.10"]}
    # Only the web server has a public address, and the run shows it, as `terraform apply` did.
    web_public = nodes["web"]["public_ips"]
    assert len(web_public) == 1 and all(not n["public_ips"] for k, n in nodes.items() if k != "web")
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
    assert len(fake.disks) == 3  # the boot disk went with its VM

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
    assert len(fake.public_pool) == 3  # its public address went back too
    pki = salt_cloud.root / "etc" / "pki" / "master"
    assert not list(pki.glob("minions*/web"))
