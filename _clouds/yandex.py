"""
Yandex Cloud Compute as a salt-cloud provider
=============================================

Creates, lists and destroys Yandex Cloud VMs over the public REST API (plain ``requests``, no
gRPC SDK), then bootstraps a salt-minion on each over SSH, as every salt-cloud driver does.

Provider (``cloud.providers.d/yandex.conf``; ``cloud.providers.d/yandex.conf.example`` in the
repo has every option):

.. code-block:: yaml

    yandex:
      driver: yandex
      folder_id: b1g0123456789abcdefg
      service_account_key_file: /etc/salt/yandex/key.json   # from `yc iam key create`
      minion:
        master: 10.0.0.5

Authentication, first match wins: ``service_account_key_file`` (a PS256 JWT exchanged for an
IAM token), ``iam_token`` (used as it is), ``oauth_token`` (exchanged for an IAM token;
Yandex is retiring it), else the metadata service of the VM salt-cloud runs on. IAM tokens
are cached per process and renewed before they expire; none is ever logged or shown.

The endpoints are options (``iam_url``, ``compute_url``, ``vpc_url``, ``operation_url``,
``metadata_url``) with Yandex's public hosts as defaults, so tests and private installations
can point the driver elsewhere.

Profile options, named after Terraform's ``yandex_compute_instance``: ``zone``,
``platform_id``, ``cores``, ``memory`` (GB), ``core_fraction``, ``disk_size`` (GB),
``disk_type``, ``image_family`` (in ``image_folder_id``, ``standard-images`` by default) or
``image_id``, ``subnet_id`` or ``subnet_name``, ``ip_address``, ``nat``,
``security_group_ids``, ``preemptible``, ``labels``, ``service_account_id``, ``hostname``,
``description``, ``ssh_username``, ``ssh_keyfile`` and ``ssh_public_key_file`` (default: the
key file with ``.pub``), ``user_data``, ``keep_on_failure``.
"""

from __future__ import annotations

import base64
import datetime
import functools
import ipaddress
import json
import logging
import re
import time
import uuid

import salt.utils.cloud
import salt.utils.files
from salt import config
from salt.exceptions import SaltCloudException, SaltCloudSystemExit

try:
    import requests
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    HAS_LIBS = True
except ImportError:  # pragma: no cover - both are Salt dependencies
    HAS_LIBS = False

log = logging.getLogger(__name__)

__virtualname__ = "yandex"

DEFAULT_URLS = {
    "iam_url": "https://iam.api.cloud.yandex.net",
    "compute_url": "https://compute.api.cloud.yandex.net",
    "vpc_url": "https://vpc.api.cloud.yandex.net",
    "operation_url": "https://operation.api.cloud.yandex.net",
    "metadata_url": "http://169.254.169.254",
}
# The JWT's audience is this fixed string, whatever host the token request goes to.
JWT_AUDIENCE = "https://iam.api.cloud.yandex.net/iam/v1/tokens"
GB = 1024**3
# Instance names and hostnames: https://yandex.cloud/en/docs/compute/concepts/vm
NAME_RULE = re.compile(r"^[a-z]([-_a-z0-9]{0,61}[a-z0-9])?$")
CORE_FRACTIONS = (5, 20, 50, 100)
METADATA_VALUE_LIMIT = 256 * 1024
METADATA_TOTAL_LIMIT = 512 * 1024
# HTTP statuses worth another try: RESOURCE_EXHAUSTED (rate limit), INTERNAL, UNAVAILABLE,
# DEADLINE_EXCEEDED. A quota error is RESOURCE_EXHAUSTED too, but waiting does not lift a quota.
RETRY_STATUSES = (429, 500, 503, 504)
# Platforms have no list call in Compute v1: these are the documented ones.
PLATFORMS = {
    "standard-v1": "Intel Broadwell",
    "standard-v2": "Intel Cascade Lake",
    "standard-v3": "Intel Ice Lake",
    "highfreq-v3": "Intel Ice Lake, compute-optimized",
}

# IAM tokens of this process, by credential: {key: (token, issued_at, expires_at)}.
_TOKENS: dict[tuple, tuple[str, float, float]] = {}


class YandexAPIError(SaltCloudSystemExit):
    """An error answer of the API, with its gRPC code, message and request id."""

    def __init__(self, what, status, body):
        body = body if isinstance(body, dict) else {}
        self.status = status
        self.code = body.get("code")
        self.api_message = body.get("message") or f"HTTP {status}"
        self.details = body.get("details") or []
        self.request_id = next(
            (d.get("requestId") for d in self.details if isinstance(d, dict) and d.get("requestId")),
            None,
        )
        text = f"{what}: {self.api_message} (HTTP {status}"
        if self.code is not None:
            text += f", code {self.code}"
        if self.request_id:
            text += f", request id {self.request_id}"
        super().__init__(text + ")")

    @property
    def is_quota(self):
        return any(
            isinstance(d, dict) and d.get("@type", "").endswith("google.rpc.QuotaFailure")
            for d in self.details
        ) or "quota" in self.api_message.lower()


def __virtual__():
    if not HAS_LIBS:
        return False, "the yandex cloud driver needs requests and cryptography"
    if get_configured_provider() is False:
        return False
    return __virtualname__


def _get_active_provider_name():
    try:
        return __active_provider_name__.value()
    except AttributeError:
        return __active_provider_name__


def get_configured_provider():
    """The provider's config, if it names a folder."""
    return config.is_provider_configured(
        __opts__, _get_active_provider_name() or __virtualname__, ("folder_id",)
    )


def _provider_value(name, default=None):
    return config.get_cloud_config_value(
        name, get_configured_provider(), __opts__, search_global=False, default=default
    )


def _vm_value(name, vm_, default=None):
    return config.get_cloud_config_value(name, vm_, __opts__, search_global=False, default=default)


def _url(kind):
    return str(_provider_value(kind, DEFAULT_URLS[kind])).rstrip("/")


# --- authentication ---------------------------------------------------------------------------


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _read_key_file(path):
    try:
        with salt.utils.files.fopen(path, "r") as fh:
            key = json.load(fh)
    except (OSError, ValueError) as exc:
        raise SaltCloudSystemExit(f"service_account_key_file {path}: cannot read it: {exc}") from None
    missing = [k for k in ("id", "service_account_id", "private_key") if not key.get(k)]
    if missing:
        raise SaltCloudSystemExit(
            f"service_account_key_file {path}: not a service account key, no {', '.join(missing)}"
        )
    return key


def make_jwt(key, now=None):
    """
    The PS256 JWT that Yandex IAM exchanges for a token, signed with a service account key
    (the JSON of ``yc iam key create``). It lives 10 minutes; Yandex allows at most an hour.
    """
    now = int(now if now is not None else time.time())
    pem = key["private_key"]
    # Keys from `yc` start with a "PLEASE DO NOT REMOVE THIS LINE!" line before the PEM.
    pem = pem[pem.index("-----BEGIN"):] if "-----BEGIN" in pem else pem
    try:
        private_key = serialization.load_pem_private_key(pem.encode(), password=None)
    except ValueError as exc:
        raise SaltCloudSystemExit(f"service account key {key['id']}: bad private key: {exc}") from None
    header = {"typ": "JWT", "alg": "PS256", "kid": key["id"]}
    claims = {"iss": key["service_account_id"], "aud": JWT_AUDIENCE, "iat": now, "exp": now + 600}
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    signature = private_key.sign(
        signing_input.encode(),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH),
        hashes.SHA256(),
    )
    return f"{signing_input}.{_b64url(signature)}"


def _parse_time(text):
    """RFC 3339 as Yandex writes it (nanoseconds, ``Z``) to a POSIX time."""
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text or "")
    if not match:
        raise SaltCloudSystemExit(f"Yandex IAM answered an unreadable expiresAt: {text!r}")
    base, fraction, zone = match.groups()
    stamp = datetime.datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return stamp.timestamp() + float(fraction or 0)


def _credential():
    """(cache key, how to get a token) for the configured way of signing in."""
    key_file = _provider_value("service_account_key_file")
    if key_file:
        return ("key", _url("iam_url"), key_file), "service_account_key_file"
    if _provider_value("iam_token"):
        return ("iam", _provider_value("iam_token")), "iam_token"
    if _provider_value("oauth_token"):
        return ("oauth", _url("iam_url"), _provider_value("oauth_token")), "oauth_token"
    return ("metadata", _url("metadata_url")), "metadata"


def _exchange(body, what):
    url = _url("iam_url") + "/iam/v1/tokens"
    answer = _http("POST", url, what=what, json_body=body, auth=False)
    return answer["iamToken"], _parse_time(answer["expiresAt"])


def _new_token(source):
    if source == "service_account_key_file":
        key = _read_key_file(_provider_value("service_account_key_file"))
        return _exchange({"jwt": make_jwt(key)}, "signing in with the service account key")
    if source == "oauth_token":
        return _exchange(
            {"yandexPassportOauthToken": _provider_value("oauth_token")},
            "signing in with the OAuth token",
        )
    url = _url("metadata_url") + "/computeMetadata/v1/instance/service-accounts/default/token"
    answer = _http("GET", url, what="getting a token from the metadata service", auth=False,
                   headers={"Metadata-Flavor": "Google"})
    return answer["access_token"], time.time() + int(answer.get("expires_in", 3600))


def _token(renew=False):
    """An IAM token, renewed an hour after it was issued or when a fifth of its life is left."""
    key, source = _credential()
    if source == "iam_token":
        return key[1]
    now = time.time()
    cached = _TOKENS.get(key)
    if cached and not renew:
        token, issued, expires = cached
        if now - issued < 3600 and now < expires - (expires - issued) / 5:
            return token
    token, expires = _new_token(source)
    _TOKENS[key] = (token, now, expires)
    return token


# --- HTTP ---------------------------------------------------------------------------------------


def _http(method, url, *, what, json_body=None, params=None, auth=True, headers=None,
          idempotency_key=None):
    """
    One API call, retried with exponential backoff on rate limits and transient errors
    (mutating calls carry an Idempotency-Key, so a retry never makes a second VM). A 401
    renews the IAM token once. Errors raise YandexAPIError with the API's own message.
    """
    retries = int(_provider_value("api_retries", 8))
    delay = float(_provider_value("api_retry_delay", 1.0))
    timeout = float(_provider_value("request_timeout", 30))
    headers = dict(headers or {})
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    renewed = False
    attempt = 0
    while True:
        attempt += 1
        if auth:
            headers["Authorization"] = f"Bearer {_token(renew=renewed)}"
        try:
            response = requests.request(method, url, json=json_body, params=params,
                                        headers=headers, timeout=timeout)
        except requests.RequestException as exc:
            if attempt <= retries and (method == "GET" or idempotency_key):
                log.warning("%s: %s; trying again in %.1fs", what, type(exc).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, 60)
                continue
            raise SaltCloudSystemExit(f"{what}: cannot reach {url.split('/')[2]}: {exc}") from None
        if response.ok:
            return response.json() if response.content else {}
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text.strip()[:200] or response.reason}
        error = YandexAPIError(what, response.status_code, body)
        if response.status_code == 401 and auth and not renewed and _credential()[1] != "iam_token":
            renewed = True
            continue
        if response.status_code in RETRY_STATUSES and not error.is_quota and attempt <= retries:
            wait = float(response.headers.get("Retry-After") or delay)
            log.warning("%s: %s; trying again in %.1fs", what, error.api_message, wait)
            time.sleep(wait)
            delay = min(delay * 2, 60)
            continue
        raise error


def _compute(method, path, what, **kwargs):
    return _http(method, _url("compute_url") + "/compute/v1/" + path, what=what, **kwargs)


def _vpc(method, path, what, **kwargs):
    return _http(method, _url("vpc_url") + "/vpc/v1/" + path, what=what, **kwargs)


def _list(call, path, field, what, **params):
    """Every item of a list call, following nextPageToken."""
    params = {k: v for k, v in params.items() if v is not None}
    params["pageSize"] = int(_provider_value("page_size", 1000))
    items = []
    while True:
        page = call("GET", path, what, params=params)
        items.extend(page.get(field, []))
        if not page.get("nextPageToken"):
            return items
        params["pageToken"] = page["nextPageToken"]


def _wait_operation(operation, what):
    """Poll an Operation until it is done; its response, or YandexAPIError with its error."""
    timeout = float(_provider_value("operation_timeout", 600))
    interval = float(_provider_value("operation_poll_interval", 1.0))
    deadline = time.monotonic() + timeout
    while not operation.get("done"):
        if time.monotonic() > deadline:
            raise SaltCloudSystemExit(f"{what}: operation {operation['id']} not done after {timeout:.0f}s")
        time.sleep(interval)
        operation = _http("GET", _url("operation_url") + "/operations/" + operation["id"],
                          what=f"{what} (operation {operation['id']})")
    if "error" in operation:
        raise YandexAPIError(f"{what} (operation {operation['id']})", 200, operation["error"])
    return operation.get("response", {})


def _mutate(method, path, what, body=None):
    """A mutating call with an Idempotency-Key; returns (operation, instance id or None)."""
    operation = _compute(method, path, what, json_body=body, idempotency_key=str(uuid.uuid4()))
    return operation, (operation.get("metadata") or {}).get("instanceId")


# --- instances ----------------------------------------------------------------------------------


def _folder():
    return _provider_value("folder_id")


def _instances(name=None):
    flt = f'name="{name}"' if name else None
    return _list(_compute, "instances", "instances", "listing instances",
                 folderId=_folder(), filter=flt)


def _find(name):
    found = _instances(name)
    if not found:
        raise SaltCloudSystemExit(f"no instance named {name} in folder {_folder()}")
    return found[0]


def _addresses(instance):
    private, public = [], []
    for nic in instance.get("networkInterfaces", []):
        v4 = nic.get("primaryV4Address") or {}
        if v4.get("address"):
            private.append(v4["address"])
        if (v4.get("oneToOneNat") or {}).get("address"):
            public.append(v4["oneToOneNat"]["address"])
    return private, public


def _node(instance, images=None):
    private, public = _addresses(instance)
    disk = (instance.get("bootDisk") or {}).get("diskId")
    return {
        "id": instance["id"],
        "image": (images or {}).get(disk, disk),
        "size": instance.get("platformId"),
        "state": instance.get("status"),
        "private_ips": private,
        "public_ips": public,
    }


def _disk_images():
    """Boot disk id -> the image it was made from."""
    disks = _list(_compute, "disks", "disks", "listing disks", folderId=_folder())
    return {d["id"]: d.get("sourceImageId") for d in disks}


def _instances_with_images():
    """{name: (instance, boot disk id -> image id)}: the disks are listed only when needed."""
    instances = _instances()
    images = _disk_images() if instances else {}
    return {i["name"]: (i, images) for i in instances}


def _without_metadata_values(instance):
    """User data may hold secrets: show which metadata keys are set, not their values."""
    shown = dict(instance)
    if "metadata" in shown:
        shown["metadata"] = {k: f"<{len(v)} bytes>" for k, v in shown["metadata"].items()}
    return shown


def _refuse_action(function, call):
    if call == "action":
        raise SaltCloudSystemExit(f"The {function} function must be called with -f or --function")


def avail_locations(call=None):
    """
    The zones of Yandex Cloud.

    CLI Example:

    .. code-block:: bash

        salt-cloud --list-locations yandex
    """
    _refuse_action("avail_locations", call)
    zones = _list(_compute, "zones", "zones", "listing zones")
    return {z["id"]: {"name": z["id"], "region": z.get("regionId"), "status": z.get("status")}
            for z in zones}


def avail_images(call=None):
    """
    The public images (folder ``standard-images``, or the provider's ``image_folder_id``).

    CLI Example:

    .. code-block:: bash

        salt-cloud --list-images yandex
    """
    _refuse_action("avail_images", call)
    folder = _provider_value("image_folder_id", "standard-images")
    images = _list(_compute, "images", "images", "listing images", folderId=folder)
    return {i["name"]: {"id": i["id"], "family": i.get("family"), "description": i.get("description"),
                        "created": i.get("createdAt")} for i in images}


def avail_sizes(call=None):
    """
    The platforms (CPU types); cores, memory and core fraction are set per profile.

    CLI Example:

    .. code-block:: bash

        salt-cloud --list-sizes yandex
    """
    _refuse_action("avail_sizes", call)
    return {name: {"name": name, "description": cpu} for name, cpu in PLATFORMS.items()}


def _reported(function):
    """salt-cloud's -Q, -F and map runs swallow a list function's exception (logged at debug,
    then "no nodes"): say what went wrong where the user sees it."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except SaltCloudException as exc:
            log.error("Yandex Cloud: %s", exc)
            raise

    return wrapper


@_reported
def list_nodes(call=None):
    """
    The folder's instances, keyed by name.

    CLI Example:

    .. code-block:: bash

        salt-cloud -Q
    """
    _refuse_action("list_nodes", call)
    return {name: _node(i, images) for name, (i, images) in _instances_with_images().items()}


@_reported
def list_nodes_full(call=None):
    """
    The folder's instances with every field the API gives.

    CLI Example:

    .. code-block:: bash

        salt-cloud -F
    """
    _refuse_action("list_nodes_full", call)
    return {name: {**_without_metadata_values(i), **_node(i, images)}
            for name, (i, images) in _instances_with_images().items()}


def list_nodes_select(call=None):
    """The folder's instances with the fields chosen by ``query.selection``."""
    return salt.utils.cloud.list_nodes_select(list_nodes_full(), __opts__["query.selection"], call)


def show_instance(name, call=None):
    """
    One instance, with its metadata keys (not their values).

    CLI Example:

    .. code-block:: bash

        salt-cloud -a show_instance web
    """
    if call != "action":
        raise SaltCloudSystemExit("The show_instance action must be called with -a or --action.")
    instance = _compute("GET", f"instances/{_find(name)['id']}", f"showing {name}",
                        params={"view": "FULL"})
    node = {**_without_metadata_values(instance), **_node(instance)}
    __utils__["cloud.cache_node"](node, _get_active_provider_name(), __opts__)
    return node


# --- create -------------------------------------------------------------------------------------


def _fire(name, stage, description, args):
    __utils__["cloud.fire_event"](
        "event", description, f"salt/cloud/{name}/{stage}", args=args,
        sock_dir=__opts__["sock_dir"], transport=__opts__["transport"],
    )


def _check_name(kind, value):
    if not NAME_RULE.match(value or ""):
        raise SaltCloudSystemExit(
            f"{kind} {value!r} is not a valid Yandex Cloud name: it must be 1-63 lowercase letters, "
            "digits, '-' or '_', start with a letter and not end with '-' or '_'"
        )


def _number(vm_, option, default, kind=int):
    value = _vm_value(option, vm_, default)
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise SaltCloudSystemExit(f"{vm_['name']}: {option} must be a number, not {value!r}") from None
    if number <= 0:
        raise SaltCloudSystemExit(f"{vm_['name']}: {option} must be positive, not {value!r}")
    return number


def _image(vm_):
    image_id = _vm_value("image_id", vm_)
    if image_id:
        return _compute("GET", f"images/{image_id}", f"{vm_['name']}: looking up image {image_id}")
    family = _vm_value("image_family", vm_, "debian-12")
    folder = _vm_value("image_folder_id", vm_, "standard-images")
    return _compute("GET", "images:latestByFamily", f"{vm_['name']}: looking up image family {family}",
                    params={"folderId": folder, "family": family})


def _subnet(vm_, zone):
    name = vm_["name"]
    subnet_id = _vm_value("subnet_id", vm_)
    subnet_name = _vm_value("subnet_name", vm_)
    if subnet_id:
        subnet = _vpc("GET", f"subnets/{subnet_id}", f"{name}: looking up subnet {subnet_id}")
    elif subnet_name:
        found = _list(_vpc, "subnets", "subnets", f"{name}: looking up subnet {subnet_name}",
                      folderId=_folder(), filter=f'name="{subnet_name}"')
        if not found:
            raise SaltCloudSystemExit(f"{name}: no subnet named {subnet_name} in folder {_folder()}")
        subnet = found[0]
    else:
        raise SaltCloudSystemExit(f"{name}: set subnet_id or subnet_name")
    if subnet.get("zoneId") != zone:
        raise SaltCloudSystemExit(
            f"{name}: subnet {subnet.get('name') or subnet['id']} is in {subnet.get('zoneId')}, "
            f"the VM's zone is {zone}"
        )
    return subnet


def _check_address(vm_, subnet, address):
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise SaltCloudSystemExit(f"{vm_['name']}: ip_address {address!r} is not an address") from None
    blocks = subnet.get("v4CidrBlocks", [])
    if not any(ip in ipaddress.ip_network(block) for block in blocks):
        raise SaltCloudSystemExit(
            f"{vm_['name']}: ip_address {address} is outside subnet "
            f"{subnet.get('name') or subnet['id']} ({', '.join(blocks)})"
        )


def _public_key(vm_):
    path = _vm_value("ssh_public_key_file", vm_)
    keyfile = _vm_value("ssh_keyfile", vm_)
    if not path and keyfile:
        path = keyfile + ".pub"
    if not path:
        return None
    try:
        with salt.utils.files.fopen(path, "r") as fh:
            return fh.read().strip()
    except OSError as exc:
        raise SaltCloudSystemExit(f"{vm_['name']}: cannot read the SSH public key {path}: {exc}") from None


def _metadata(vm_):
    """cloud-init user data that makes the SSH user salt-cloud bootstraps through."""
    username = _vm_value("ssh_username", vm_, "debian")
    public_key = _public_key(vm_)
    user_data = _vm_value("user_data", vm_)
    metadata = {}
    if public_key:
        metadata["ssh-keys"] = f"{username}:{public_key}"
        if not user_data:
            user_data = "\n".join([
                "#cloud-config",
                "users:",
                f"  - name: {username}",
                "    sudo: ALL=(ALL) NOPASSWD:ALL",
                "    shell: /bin/bash",
                "    ssh_authorized_keys:",
                f"      - {json.dumps(public_key)}",
                "",
            ])
    if user_data:
        metadata["user-data"] = user_data
    for key, value in metadata.items():
        if len(value.encode()) > METADATA_VALUE_LIMIT:
            raise SaltCloudSystemExit(f"{vm_['name']}: metadata {key} is over 256 KB")
    if sum(len(v.encode()) for v in metadata.values()) > METADATA_TOTAL_LIMIT:
        raise SaltCloudSystemExit(f"{vm_['name']}: metadata is over 512 KB in all")
    return metadata


def _create_body(vm_):
    """The CreateInstanceRequest of a profile, checked here where the API's answer would be vague."""
    name = vm_["name"]
    _check_name("VM name", name)
    hostname = _vm_value("hostname", vm_, name)
    _check_name("hostname", hostname)
    zone = _vm_value("zone", vm_, "ru-central1-a")
    core_fraction = _number(vm_, "core_fraction", 100)
    if core_fraction not in CORE_FRACTIONS:
        raise SaltCloudSystemExit(f"{name}: core_fraction must be one of 5, 20, 50, 100, not {core_fraction}")
    memory_gb = _number(vm_, "memory", 2, float)
    disk_gb = _number(vm_, "disk_size", 10)
    image = _image(vm_)
    if disk_gb * GB < int(image.get("minDiskSize", 0)):
        raise SaltCloudSystemExit(
            f"{name}: disk_size {disk_gb} GB is smaller than image {image['id']} needs "
            f"({int(image['minDiskSize']) / GB:g} GB)"
        )
    subnet = _subnet(vm_, zone)
    address_spec = {}
    address = _vm_value("ip_address", vm_)
    if address:
        _check_address(vm_, subnet, address)
        address_spec["address"] = address
    if _vm_value("nat", vm_, False):
        address_spec["oneToOneNatSpec"] = {"ipVersion": "IPV4"}
    interface = {"subnetId": subnet["id"], "primaryV4AddressSpec": address_spec}
    if _vm_value("security_group_ids", vm_):
        interface["securityGroupIds"] = list(_vm_value("security_group_ids", vm_))
    body = {
        "folderId": _folder(),
        "name": name,
        "description": _vm_value("description", vm_, f"salt-cloud profile {vm_.get('profile')}"),
        "labels": {str(k): str(v) for k, v in (_vm_value("labels", vm_) or {}).items()},
        "zoneId": zone,
        "platformId": _vm_value("platform_id", vm_, "standard-v3"),
        "hostname": hostname,
        # int64 fields go as strings, as the API writes them.
        "resourcesSpec": {
            "memory": str(int(memory_gb * GB)),
            "cores": str(_number(vm_, "cores", 2)),
            "coreFraction": str(core_fraction),
        },
        "metadata": _metadata(vm_),
        "bootDiskSpec": {
            "autoDelete": True,
            "diskSpec": {
                "typeId": _vm_value("disk_type", vm_, "network-hdd"),
                "size": str(disk_gb * GB),
                "imageId": image["id"],
            },
        },
        "networkInterfaceSpecs": [interface],
        "schedulingPolicy": {"preemptible": bool(_vm_value("preemptible", vm_, False))},
    }
    if _vm_value("service_account_id", vm_):
        body["serviceAccountId"] = _vm_value("service_account_id", vm_)
    return body


def _ssh_address(vm_, instance):
    private, public = _addresses(instance)
    wanted = public if _vm_value("nat", vm_, False) else private
    return wanted[0] if wanted else None


def _delete(instance_id, what):
    operation, _ = _mutate("DELETE", f"instances/{instance_id}", what)
    _wait_operation(operation, what)


def _clean_up(vm_, instance_id, reason):
    """After a failed create: delete the instance (unless kept) and forget the minion key."""
    name = vm_["name"]
    salt.utils.cloud.remove_key(__opts__["pki_dir"], name)
    if instance_id is None:
        return f"{reason}; no instance was made"
    if _vm_value("keep_on_failure", vm_, False):
        return f"{reason}; instance {name} ({instance_id}) is kept for debugging (keep_on_failure)"
    try:
        _compute("GET", f"instances/{instance_id}", f"looking up {name}")
    except YandexAPIError as exc:
        if exc.status == 404:
            return f"{reason}; no instance was left"
    try:
        _delete(instance_id, f"deleting the failed instance {name}")
    except SaltCloudException as exc:
        return f"{reason}; and instance {name} ({instance_id}) could not be deleted, delete it by hand: {exc}"
    return f"{reason}; instance {name} ({instance_id}) was deleted"


def create(vm_):
    """
    Create one instance, wait for its address, and bootstrap its salt-minion over SSH.
    On failure the instance is deleted (unless ``keep_on_failure``) and the error names
    the API's message and request id.

    CLI Example:

    .. code-block:: bash

        salt-cloud -p yandex-db postgres-srv1
    """
    name = vm_["name"]
    event_args = {"name": name, "profile": vm_.get("profile"), "provider": vm_.get("driver")}
    filtered = __utils__["cloud.filter_event"]
    _fire(name, "creating", "starting create", filtered("creating", event_args, list(event_args)))
    instance_id = None
    try:
        body = _create_body(vm_)
        _fire(name, "requesting", "requesting instance",
              filtered("requesting", {"kwargs": {k: body[k] for k in ("name", "zoneId", "platformId")}},
                       ["kwargs"]))
        operation, instance_id = _mutate("POST", "instances", f"creating {name}", body)
        instance = _wait_operation(operation, f"creating {name}")
        instance_id = instance.get("id", instance_id)
        address = salt.utils.cloud.wait_for_ip(
            lambda: _ssh_address(vm_, _compute("GET", f"instances/{instance_id}", f"waiting for {name}")),
            timeout=float(_vm_value("wait_for_ip_timeout", vm_, 300)),
            interval=float(_vm_value("wait_for_ip_interval", vm_, 2)),
        )
        log.info("Instance %s (%s) is up at %s", name, instance_id, address)
        vm_["ssh_host"] = address
        vm_["key_filename"] = _vm_value("ssh_keyfile", vm_)
        vm_.setdefault("ssh_username", _vm_value("ssh_username", vm_, "debian"))
        deployed = __utils__["cloud.bootstrap"](vm_, __opts__)
        if "Error" in deployed and "No Deploy" not in deployed["Error"]:
            raise SaltCloudSystemExit(f"bootstrapping {name} at {address} failed: {deployed['Error']}")
    except Exception as exc:  # whatever failed, the half-made VM must go
        reason = str(exc) if isinstance(exc, SaltCloudException) else f"{type(exc).__name__}: {exc}"
        raise SaltCloudSystemExit(_clean_up(vm_, instance_id, reason)) from None
    instance = _compute("GET", f"instances/{instance_id}", f"showing {name}", params={"view": "FULL"})
    result = {**_without_metadata_values(instance), **_node(instance)}
    result.update(deployed)
    _fire(name, "created", "created instance", filtered("created", event_args, list(event_args)))
    return result


# --- destroy and actions ------------------------------------------------------------------------


def destroy(name, call=None):
    """
    Delete an instance and its boot disk.

    CLI Example:

    .. code-block:: bash

        salt-cloud -d postgres-srv3
    """
    if call == "function":
        raise SaltCloudSystemExit("The destroy action must be called with -d, --destroy, -a or --action.")
    _fire(name, "destroying", "destroying instance", {"name": name})
    instance = _find(name)
    _delete(instance["id"], f"deleting {name}")
    if __opts__.get("update_cachedir", False):
        __utils__["cloud.delete_minion_cachedir"](name, _get_active_provider_name().split(":")[0], __opts__)
    _fire(name, "destroyed", "destroyed instance", {"name": name})
    return {"destroyed": name, "id": instance["id"]}


def _action(verb, name, call):
    if call != "action":
        raise SaltCloudSystemExit(f"The {verb} action must be called with -a or --action.")
    instance = _find(name)
    operation, _ = _mutate("POST", f"instances/{instance['id']}:{verb}", f"{verb} {name}")
    _wait_operation(operation, f"{verb} {name}")
    status = _compute("GET", f"instances/{instance['id']}", f"showing {name}")["status"]
    return {name: status}


def start(name, call=None):
    """
    Start a stopped instance.

    CLI Example:

    .. code-block:: bash

        salt-cloud -a start postgres-srv1
    """
    return _action("start", name, call)


def stop(name, call=None):
    """
    Stop an instance (its disk is kept).

    CLI Example:

    .. code-block:: bash

        salt-cloud -a stop postgres-srv1
    """
    return _action("stop", name, call)


def reboot(name, call=None):
    """
    Restart an instance.

    CLI Example:

    .. code-block:: bash

        salt-cloud -a reboot postgres-srv1
    """
    return _action("restart", name, call)
