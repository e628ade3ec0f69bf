"""The Yandex driver's functions, loaded the way Salt's own driver tests load theirs, against the
fake API over real HTTP: retries, idempotency, tokens, pages and checks made before the API."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import logging
import time

import pytest
import salt.utils.cloud
from salt.exceptions import SaltCloudSystemExit

from tests.conftest import REPO
from tests.yandex.conftest import provider_config

spec = importlib.util.spec_from_file_location("yandex_cloud", REPO / "_clouds" / "yandex.py")
yandex = importlib.util.module_from_spec(spec)
spec.loader.exec_module(yandex)

PROFILE = {"provider": "yandex:yandex", "zone": "ru-central1-a", "cores": 2, "memory": 2,
           "disk_size": 10, "subnet_name": "pgcluster-subnet"}


@pytest.fixture
def provider(fake, key_file, ssh_key):
    return provider_config(fake, key_file, ssh_key)


@pytest.fixture
def configure_loader_modules(provider, tmp_path):
    yandex._TOKENS.clear()
    (tmp_path / "pki" / "minions").mkdir(parents=True)
    opts = {
        "providers": {"yandex": {"yandex": provider}},
        "profiles": {"test": PROFILE},
        "sock_dir": str(tmp_path), "transport": "zeromq", "pki_dir": str(tmp_path / "pki"),
        "update_cachedir": False, "query.selection": ["id", "state"],
    }
    return {yandex: {
        "__opts__": opts,
        "__active_provider_name__": "yandex:yandex",
        "__utils__": {
            "cloud.fire_event": lambda *a, **k: None,
            "cloud.filter_event": lambda tag, data, keys: {k: data[k] for k in keys},
            "cloud.cache_node": lambda *a, **k: None,
            "cloud.bootstrap": salt.utils.cloud.bootstrap,
        },
    }}


def vm(name, **options):
    return {"name": name, "profile": "test", "driver": "yandex:yandex", **PROFILE, **options}


def test_the_provider_needs_a_folder(provider):
    assert yandex.__virtual__() == "yandex"
    del provider["folder_id"]
    assert yandex.__virtual__() is False


@pytest.mark.parametrize("function", ["avail_images", "avail_sizes", "avail_locations",
                                      "list_nodes", "list_nodes_full"])
def test_functions_refuse_to_be_called_as_actions(function):
    with pytest.raises(SaltCloudSystemExit, match="-f or --function"):
        getattr(yandex, function)(call="action")


@pytest.mark.parametrize("action", ["show_instance", "start", "stop", "reboot"])
def test_actions_refuse_to_be_called_as_functions(action):
    with pytest.raises(SaltCloudSystemExit, match="-a or --action"):
        getattr(yandex, action)("web", call="function")


def test_destroy_refuses_to_be_called_as_a_function():
    with pytest.raises(SaltCloudSystemExit, match="-d, --destroy"):
        yandex.destroy("web", call="function")


@pytest.mark.parametrize(("options", "message"), [
    ({"name": "Postgres.srv1"}, "VM name 'Postgres.srv1' is not a valid Yandex Cloud name"),
    ({"hostname": "db-"}, "hostname 'db-' is not a valid Yandex Cloud name"),
    ({"core_fraction": 30}, r"core_fraction 30 is not offered on standard-v3 \(it has 20, 50, 100\)"),
    ({"memory": "lots"}, "memory must be a number, not 'lots'"),
    ({"disk_size": 2}, r"disk_size 2 GB is smaller than image fd8\w+ needs \(3 GB\)"),
    ({"ip_address": "10.1.0.5"}, r"ip_address 10.1.0.5 is outside subnet pgcluster-subnet \(10.0.0.0/24\)"),
    ({"zone": "ru-central1-b"},
     "subnet pgcluster-subnet is in ru-central1-a, the VM's zone is ru-central1-b"),
    ({"subnet_name": "nope"}, "no subnet named nope in folder"),
    ({"image_family": "windows-3-11"}, "Image family windows-3-11 not found"),
])
def test_bad_profiles_are_refused_naming_the_option_and_nothing_is_made(fake, options, message):
    with pytest.raises(SaltCloudSystemExit, match=message):
        yandex.create(vm(options.pop("name", "db1"), **options))
    assert fake.calls("POST", r"^/compute/v1/instances$") == []
    assert fake.names() == []


def test_lists_follow_every_page(fake):
    for n in range(5):
        yandex.create(vm(f"db{n}"))
    assert sorted(yandex.list_nodes()) == ["db0", "db1", "db2", "db3", "db4"]
    # The fake serves two to a page: three pages of instances, three of disks.
    assert len(fake.calls("GET", r"^/compute/v1/instances$")) >= 3
    assert sorted(yandex.list_nodes_select()) == ["db0", "db1", "db2", "db3", "db4"]
    assert set(yandex.avail_locations()) == {"ru-central1-a", "ru-central1-b", "ru-central1-d"}
    images = yandex.avail_images()
    assert {i["family"] for i in images.values()} == {"debian-12", "ubuntu-2204-lts"}
    assert "standard-v3" in yandex.avail_sizes()
    node = yandex.list_nodes()["db0"]
    debian = max((i for i in fake.images.values() if i["family"] == "debian-12"),
                 key=lambda i: i["createdAt"])
    assert node["image"] == debian["id"] and node["size"] == "standard-v3"


def test_a_lost_answer_is_retried_with_the_same_key_and_makes_one_vm(fake):
    # The API made the VM, then the gateway timed out: the retry must not make a second one.
    fake.inject("POST", r"^/compute/v1/instances$", 4, "Deadline exceeded", lose=True)
    yandex.create(vm("db1"))
    posts = fake.calls("POST", r"^/compute/v1/instances$")
    assert len(posts) == 2 and posts[0][2]["Idempotency-Key"] == posts[1][2]["Idempotency-Key"]
    assert fake.names() == ["db1"]


def test_rate_limits_and_outages_are_retried(fake):
    fake.inject("GET", r"^/compute/v1/instances$", 8, "Request rate limit exceeded")
    fake.inject("GET", r"^/compute/v1/instances$", 14, "Service is unavailable")
    assert yandex.list_nodes() == {}
    assert len(fake.calls("GET", r"^/compute/v1/instances$")) == 3


def test_retries_end_with_the_apis_message(fake, provider):
    provider["api_retries"] = 2
    fake.inject("GET", r"^/compute/v1/instances$", 14, "Service is unavailable", times=10)
    with pytest.raises(SaltCloudSystemExit, match=r"Service is unavailable \(HTTP 503, code 14, request id"):
        yandex.list_nodes()
    assert len(fake.calls("GET", r"^/compute/v1/instances$")) == 3


def test_a_revoked_token_is_renewed_once(fake):
    yandex.list_nodes()
    fake.revoke_tokens()
    assert yandex.list_nodes() == {}
    assert len(fake.calls("POST", r"^/iam/v1/tokens$")) == 2


def test_tokens_are_cached_and_renewed_before_they_expire(fake):
    fake.token_lifetime = 2.0
    yandex.list_nodes()
    yandex.list_nodes()
    assert len(fake.calls("POST", r"^/iam/v1/tokens$")) == 1
    time.sleep(1.7)  # a fifth of its life left: renewed before the API refuses it
    yandex.list_nodes()
    assert len(fake.calls("POST", r"^/iam/v1/tokens$")) == 2
    # Each list went through on its first try: no call was refused for an expired token.
    assert len(fake.calls("GET", r"^/compute/v1/instances$")) == 3


def test_an_oauth_token_and_a_plain_iam_token_sign_in(fake, provider):
    del provider["service_account_key_file"]
    provider["oauth_token"] = "y0_fake_oauth"
    fake.oauth_tokens.add("y0_fake_oauth")
    assert yandex.list_nodes() == {}
    iam_token = fake._iam_token({"yandexPassportOauthToken": "y0_fake_oauth"})["iamToken"]
    yandex._TOKENS.clear()
    provider["iam_token"] = iam_token
    del provider["oauth_token"]
    exchanges = len(fake.calls("POST", r"^/iam/v1/tokens$"))
    assert yandex.list_nodes() == {}
    assert len(fake.calls("POST", r"^/iam/v1/tokens$")) == exchanges
    fake.revoke_tokens()
    with pytest.raises(SaltCloudSystemExit, match="The token is invalid"):
        yandex.list_nodes()


def test_secrets_stay_out_of_logs_and_output(fake, caplog, key_file):
    caplog.set_level(logging.DEBUG)
    created = yandex.create(vm("db1", user_data="#cloud-config\npassword: hunter2\n"))
    fake.revoke_tokens()
    shown = yandex.show_instance("db1", call="action")
    tokens = [c[2]["Authorization"].split()[1] for c in fake.requests if "Authorization" in c[2]]
    text = caplog.text + repr(created) + repr(shown) + repr(yandex.list_nodes_full())
    assert "hunter2" not in text
    assert not any(token in text for token in tokens)
    assert shown["metadata"]["user-data"].endswith(" bytes>")


def test_a_create_that_times_out_is_cleaned_up(fake, provider):
    provider["operation_timeout"] = 0.2
    fake.polls_until_done = 1000
    with pytest.raises(SaltCloudSystemExit, match="not done after"):
        yandex.create(vm("db1"))
    # The delete operation never finishes here either: the error says what was left.
    assert fake.instances and all(i["status"] == "DELETING" for i in fake.instances.values())


def test_keep_on_failure_keeps_the_vm_for_debugging(fake):
    fake.fail_next_operation(13, "Internal error")
    with pytest.raises(SaltCloudSystemExit, match=r"instance db1 \(\w+\) is kept for debugging"):
        yandex.create(vm("db1", keep_on_failure=True))
    assert fake.names() == ["db1"]


# --- the network: ensure_network, destroy_network and the profile options that use it ---------

NETWORK = {"name": "pgcluster",
           "subnets": {"ru-central1-a": "10.0.1.0/24", "ru-central1-b": "10.0.2.0/24",
                       "ru-central1-d": "10.0.3.0/24"},
           "placement_groups": ["pgcluster-db"], "addresses": {"pgcluster-web": "ru-central1-a"}}


def with_network(provider, **changes):
    provider["network"] = {**NETWORK, **changes}


def network_vm(name, **options):
    """A VM of a profile that names no subnet: the provider's network gives the zone's."""
    return {"name": name, "profile": "test", "driver": "yandex:yandex", **PROFILE, "subnet_name": None,
            **options}


@pytest.mark.parametrize(("changes", "message"), [
    ({"subnets": {"ru-central1-c": "10.0.1.0/24"}}, "network:subnets:ru-central1-c: unknown zone"),
    ({"subnets": {"ru-central1-a": "10.0.1.0/24", "ru-central1-b": "10.0.1.128/25"}},
     "network:subnets:ru-central1-b: 10.0.1.128/25 overlaps 10.0.1.0/24 of ru-central1-a"),
    ({"subnets": {"ru-central1-a": "10.0.1.5/24"}}, "10.0.1.5/24' is not an IPv4 network: .*host bits"),
    ({"subnets": {"ru-central1-a": "10.0.1.0/29"}}, "10.0.1.0/29 must be an IPv4 network of /16 to /28"),
    ({"subnets": {"ru-central1-a": "8.8.8.0/24"}}, "8.8.8.0/24 is not in a private range"),
    ({"name": "PG_cluster"}, "network:name 'PG_cluster' must be 3-54 lowercase letters"),
    ({"name": "pg"}, "network:name 'pg' must be 3-54 lowercase letters"),
    ({"nat": True}, "network: unknown key nat"),
    ({"nat_gateway": "yes"}, "network:nat_gateway must be true or false"),
    ({"placement_groups": ["db_1"]}, "network:placement_groups: 'db_1' must be 3-63 lowercase"),
    ({"addresses": {"pgcluster-web": "ru-central1-c"}},
     "network:addresses:pgcluster-web: unknown zone 'ru-central1-c'"),
], ids=["unknown-zone", "overlap", "host-bits", "too-small", "public-range", "bad-name", "short-name",
        "unknown-key", "bad-nat", "bad-group", "address-zone"])
def test_a_bad_network_is_refused_before_any_api_call(fake, provider, changes, message):
    with_network(provider, **changes)
    with pytest.raises(SaltCloudSystemExit, match=message):
        yandex.ensure_network(call="function")
    assert fake.requests == []


def test_network_functions_refuse_to_be_called_as_actions(provider):
    with_network(provider)
    for function in (yandex.ensure_network, yandex.destroy_network):
        with pytest.raises(SaltCloudSystemExit, match="-f or --function"):
            function(call="action")


@pytest.mark.parametrize(("options", "message"), [
    ({"zone": "ru-central1-c"},
     "zone 'ru-central1-c' is not one of ru-central1-a, ru-central1-b, ru-central1-d"),
    ({"cores": 3}, r"cores 3 is not offered on standard-v3 at core_fraction 100 \(it has 2, 4, 6"),
    ({"cores": 8, "memory": 8, "core_fraction": 20},
     r"cores 8 is not offered on standard-v3 at core_fraction 20 \(it has 2, 4\)"),
    ({"core_fraction": 5}, r"core_fraction 5 is not offered on standard-v3 \(it has 20, 50, 100\)"),
    ({"memory": 40},
     "memory 40 GB is 20 GB per core; standard-v3 at core_fraction 100 with 2 cores takes 1, 2,"),
    ({"cores": 96, "memory": 960},
     "memory 960 GB is 10 GB per core; .* with 96 cores takes 1, 2, 3, 4, 5, 6 GB"),
    ({"platform_id": "standard-v9"}, "platform_id 'standard-v9' is not one of standard-v1"),
    ({"secondary_disks": [{"size": 10}] * 4}, "secondary_disks must be a list of at most 3 disks"),
    ({"secondary_disks": [{"size": 10, "device_name": "Disk0"}]}, "device_name 'Disk0' must be"),
    ({"zone": "ru-central1-b", "ip_address": "10.0.1.12"},
     r"ip_address 10.0.1.12 is outside subnet pgcluster-ru-central1-b \(10.0.2.0/24\)"),
    ({"placement_group": "pgcluster-web"},
     r"placement_group pgcluster-web is not in the provider's network:placement_groups \(pgcluster-db\)"),
], ids=["retired-zone", "odd-cores", "fraction-cores", "fraction-platform", "memory-per-core",
        "v3-96-cores", "platform", "four-disks", "device-name", "address-zone", "unknown-group"])
def test_a_bad_profile_is_refused_before_any_api_call(fake, provider, options, message):
    with_network(provider)
    with pytest.raises(SaltCloudSystemExit, match=message):
        yandex.create(network_vm("db1", **options))
    assert fake.requests == []


def test_a_zone_without_a_subnet_in_the_network_is_refused_before_any_api_call(fake, provider):
    with_network(provider, subnets={"ru-central1-a": "10.0.1.0/24"})
    with pytest.raises(SaltCloudSystemExit,
                       match=r"zone ru-central1-b has no subnet in the provider's network \(network:subnets "
                             r"has ru-central1-a\)"):
        yandex.create(network_vm("db2", zone="ru-central1-b"))
    assert fake.requests == []


@pytest.mark.parametrize(("platform", "cores", "memory", "fraction"), [
    ("standard-v2", 2, 0.5, 5), ("standard-v1", 4, 2, 5), ("standard-v3", 4, 16, 50),
    ("standard-v3", 96, 576, 100), ("highfreq-v3", 56, 896, 100), ("standard-v2", 80, 1280, 100),
])
def test_every_documented_size_passes_the_check(platform, cores, memory, fraction):
    yandex._check_size({"name": "db1"}, platform, cores, memory, fraction)


def test_on_a_vm_the_driver_signs_in_through_the_metadata_service(fake, provider):
    """No credential in the provider: the token of the VM's service account, from the metadata
    service (Metadata-Flavor: Google), as on the salt-master VM in Yandex Cloud."""
    del provider["service_account_key_file"]
    provider["metadata_url"] = fake.url
    fake.metadata_service = True
    assert yandex.list_nodes() == {}
    asked = fake.calls("GET", r"^/computeMetadata/v1/instance/service-accounts/default/token$")
    assert len(asked) == 1 and asked[0][2].get("Metadata-Flavor") == "Google"
    assert fake.calls("POST", r"^/iam/v1/tokens$") == []
    fake.metadata_service = False
    yandex._TOKENS.clear()
    with pytest.raises(SaltCloudSystemExit, match="getting a token from the metadata service"):
        yandex.list_nodes()


def test_terraform_options_reach_the_request(fake, provider):
    with_network(provider, security_group=True)
    yandex.ensure_network(call="function")
    network = next(n["id"] for n in fake.networks.values() if n["name"] == "pgcluster")
    second = fake.add_subnet("pgcluster-admin-a", "ru-central1-a", "10.0.4.0/24", network_id=network)
    yandex.create(network_vm(
        "db1", zone="ru-central1-b", ip_address="10.0.2.12", placement_group="pgcluster-db",
        security_groups=["pgcluster-cluster"], secondary_disks=[{"size": 30, "device_name": "pgdata"}],
        metadata_options={"gce_http_token": "enabled", "aws_v1_http_endpoint": "disabled"},
        serial_port_enable=True, additional_network_interfaces=[]))
    body = fake.calls("POST", r"^/compute/v1/instances$")[-1][3]
    group = next(g for g in fake.security_groups.values() if g["name"] == "pgcluster-cluster")
    assert body["networkInterfaceSpecs"][0]["securityGroupIds"] == [group["id"]]
    assert body["metadataOptions"] == {"gceHttpToken": "ENABLED", "awsV1HttpEndpoint": "DISABLED"}
    assert body["metadata"]["serial-port-enable"] == "1"
    assert body["secondaryDiskSpecs"] == [{"autoDelete": True, "deviceName": "pgdata",
                                           "diskSpec": {"typeId": "network-ssd", "size": str(30 * 1024**3)}}]
    placement = next(g for g in fake.placement_groups.values() if g["name"] == "pgcluster-db")
    assert body["placementPolicy"] == {"placementGroupId": placement["id"]}
    # A second interface, in another subnet of the VM's zone.
    yandex.create(network_vm("web1", zone="ru-central1-a", additional_network_interfaces=[
        {"subnet_name": "pgcluster-admin-a", "ip_address": "10.0.4.10"}]))
    nics = next(i for i in fake.instances.values() if i["name"] == "web1")["networkInterfaces"]
    assert [(n["subnetId"], n["primaryV4Address"]["address"]) for n in nics][1] == (second, "10.0.4.10")


@pytest.mark.parametrize(("options", "message"), [
    ({"metadata_options": {"gce_http_token": "maybe"}}, "metadata_options:gce_http_token must be enabled or"),
    ({"metadata_options": {"http_token": "enabled"}}, "metadata_options: unknown option http_token"),
    ({"additional_network_interfaces": [{"ip_address": "10.0.1.20"}]},
     r"additional_network_interfaces\[0\] needs subnet_id or subnet_name"),
], ids=["bad-value", "unknown-option", "no-subnet"])
def test_bad_terraform_options_are_refused_before_any_api_call(fake, provider, options, message):
    with_network(provider)
    with pytest.raises(SaltCloudSystemExit, match=message):
        yandex.create(network_vm("db1", **options))
    assert fake.requests == []


@pytest.mark.parametrize(("options", "wanted"), [
    ({}, "10.0.0.7"),
    ({"nat": True}, "127.0.77.1"),
    ({"nat": True, "ssh_interface": "private_ips"}, "10.0.0.7"),
    ({"ssh_interface": "public_ips", "nat": True}, "127.0.77.1"),
])
def test_salt_cloud_reaches_the_vm_at_the_address_ssh_interface_names(monkeypatch, options, wanted):
    reached = {}
    monkeypatch.setitem(yandex.__utils__, "cloud.bootstrap",
                        lambda vm_, opts: reached.setdefault("host", vm_["ssh_host"]) and {})
    yandex.create(vm("db1", ip_address="10.0.0.7", **options))
    assert reached["host"] == wanted


@pytest.mark.parametrize(("options", "message"), [
    ({"ssh_interface": "lan"}, "ssh_interface must be private_ips or public_ips, not 'lan'"),
    ({"ssh_interface": "public_ips"}, "ssh_interface is public_ips but the VM gets no public address"),
])
def test_an_ssh_interface_that_cannot_work_is_refused_and_nothing_is_made(fake, options, message):
    with pytest.raises(SaltCloudSystemExit, match=message):
        yandex.create(vm("db1", **options))
    assert fake.calls("POST", r"^/compute/v1/instances$") == []


class SerialConsole:
    """Machines for the fake whose only trait is a VM's serial console (what the emulated
    cloud's lab hosts print there): the driver reads it back when a bootstrap fails."""

    def __init__(self, text):
        self.text = text

    @staticmethod
    def _done(*_):
        future = concurrent.futures.Future()
        future.set_result(None)
        return future

    create = delete = power = _done

    def observe(self, instance):
        pass

    def network_changed(self, fake):
        pass

    def console(self, instance):
        return self.text


def test_a_failed_bootstrap_says_why_in_the_deploy_scripts_words_and_deletes_the_vm(fake, monkeypatch):
    fake.machines = SerialConsole("[  OK  ] Started ssh.service\r\npgcluster bootstrap of db1 failed: cannot "
                                  "reach the package sources: the VM has no egress to the internet.\r\n")

    def bootstrap(vm_, opts):
        raise SaltCloudSystemExit("Command 'ssh ... deploy.sh' failed. Exit code: 1")

    monkeypatch.setitem(yandex.__utils__, "cloud.bootstrap", bootstrap)
    with pytest.raises(SaltCloudSystemExit) as failure:
        yandex.create(vm("db1"))
    message = str(failure.value)
    assert message.startswith("bootstrapping db1 failed: cannot reach the package sources: the VM has no "
                              "egress to the internet. (Command 'ssh ... deploy.sh' failed. Exit code: 1)")
    assert message.endswith("was deleted")
    assert fake.names() == []
