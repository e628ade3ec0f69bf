"""The Yandex driver's functions, loaded the way Salt's own driver tests load theirs, against the
fake API over real HTTP: retries, idempotency, tokens, pages and checks made before the API."""

from __future__ import annotations

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
    ({"core_fraction": 30}, "core_fraction must be one of 5, 20, 50, 100, not 30"),
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
