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
``platform_id``, ``cores``, ``memory`` (GB), ``core_fraction`` (checked together against the
platform's documented sizes), ``disk_size`` (GB), ``disk_type``, ``secondary_disks`` (up to 3
of ``{size, type, device_name, auto_delete}``), ``image_family`` (in ``image_folder_id``,
``standard-images`` by default) or ``image_id``, ``subnet_id`` or ``subnet_name`` (default: the
provider network's subnet of the VM's zone), ``ip_address``, ``nat`` or ``nat_ip_address`` (a
reserved address, by name or value), ``placement_group`` (by name), ``security_group_ids``,
``preemptible``, ``labels``, ``service_account_id``, ``hostname``, ``description``,
``ssh_username``, ``ssh_keyfile`` and ``ssh_public_key_file`` (default: the key file with
``.pub``), ``ssh_interface`` (``private_ips`` or ``public_ips``; by default the public
address when the VM has one), ``user_data``, ``keep_on_failure``, and salt-cloud's own
``script`` (the profiles use the project's ``pgcluster-minion``, etc/salt/cloud.deploy.d/).

The network around the VMs is the provider's ``network:`` block (a name, one subnet CIDR per
zone, a NAT gateway, spread placement groups, reserved addresses):
``salt-cloud -f ensure_network yandex`` finds or makes it, ``-f destroy_network yandex``
deletes it once no VM uses it.
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


def _steps(low, high, step):
    return tuple(round(low + i * step, 2) for i in range(round((high - low) / step) + 1))


_EVEN_TO_16 = tuple(range(2, 17, 2))
_SHARED = [((2, 4), _steps(0.5, 4, 0.5))]
# What each platform takes, by core fraction: [(vCPU counts, GB of memory per vCPU)], from
# yandex-cloud/docs en/compute/concepts/performance-levels.md (read 2026-12-02). Below 100 %
# only 2 or 4 vCPUs; on standard-v3 the memory per vCPU shrinks as the count grows.
PLATFORM_SIZES = {
    "standard-v1": {5: [((2, 4), (0.5, 1, 1.5, 2))], 20: _SHARED,
                    100: [((*_EVEN_TO_16, 20, 24, 28, 32), _steps(1, 8, 1))]},
    "standard-v2": {5: [((2, 4), (0.25, 0.5, 1, 1.5, 2))], 20: _SHARED, 50: _SHARED,
                    100: [((*_EVEN_TO_16, *range(20, 81, 4)), _steps(1, 16, 1))]},
    "standard-v3": {20: _SHARED, 50: _SHARED,
                    100: [((*_EVEN_TO_16, 20, 36, 40), _steps(1, 16, 1)), ((44,), _steps(1, 14, 1)),
                          ((24, 48), _steps(1, 13, 1)), ((52,), _steps(1, 12, 1)),
                          ((28, 56), _steps(1, 11, 1)), ((32, 60, 64), _steps(1, 10, 1)),
                          ((68,), _steps(1, 9, 1)), ((72, 76, 80), _steps(1, 8, 1)),
                          ((84, 88), _steps(1, 7, 1)), ((92, 96), _steps(1, 6, 1))]},
    "highfreq-v3": {100: [((*_EVEN_TO_16, *range(20, 57, 4)), _steps(1, 16, 1))]},
}
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


def _mutate(method, path, what, body=None, api=None):
    """A mutating call with an Idempotency-Key; returns (operation, instance id or None)."""
    operation = (api or _compute)(method, path, what, json_body=body, idempotency_key=str(uuid.uuid4()))
    return operation, (operation.get("metadata") or {}).get("instanceId")


def _done(api, method, path, what, body=None):
    """A mutating call, waited for: the resource the operation answers (without its @type)."""
    operation, _ = _mutate(method, path, what, body, api)
    response = _wait_operation(operation, what)
    return {k: v for k, v in response.items() if k != "@type"}


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


# --- the network: salt-cloud -f ensure_network / destroy_network --------------------------------

# The zones of ru-central1 that take new resources (ru-central1-c is retired).
ZONES = ("ru-central1-a", "ru-central1-b", "ru-central1-d")
# ensure_network finds what it made by name, and the VPC list calls filter only on a name of
# 3-63 lowercase letters, digits or '-' (ListSubnetsRequest.filter, vpc/v1 subnet_service.proto):
# the names it gives follow that rule (gateway names allow nothing else anyway). The network's
# name is the stem of its subnets' (<name>-ru-central1-a), hence at most 54 characters.
NETWORK_NAME_RULE = re.compile(r"^[a-z][-a-z0-9]{1,52}[a-z0-9]$")
FILTER_NAME_RULE = re.compile(r"^[a-z][-a-z0-9]{1,61}[a-z0-9]$")
# vpc/v1 subnet_service.proto CreateSubnetRequest.v4_cidr_blocks: "Minimum subnet size is /28,
# maximum subnet size is /16"; VPC subnets take private (RFC 1918) ranges only.
SUBNET_PREFIXES = (16, 28)
PRIVATE_RANGES = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
NETWORK_KEYS = ("name", "subnets", "nat_gateway", "security_group", "placement_groups", "addresses")
# Labels on everything ensure_network makes, so a user can tell it apart in the console.
NETWORK_LABELS = {"managed-by": "salt-cloud"}


def _subnet_blocks(where, subnets):
    """{zone: IPv4 network} of network:subnets, each a private /16-/28, none overlapping."""
    blocks = {}
    for zone, cidr in subnets.items():
        key = f"{where}:subnets:{zone}"
        if zone not in ZONES:
            raise SaltCloudSystemExit(f"{key}: unknown zone (zones: {', '.join(ZONES)})")
        try:
            block = ipaddress.ip_network(str(cidr), strict=True)
        except ValueError as exc:
            raise SaltCloudSystemExit(f"{key}: {cidr!r} is not an IPv4 network: {exc}") from None
        if block.version != 4 or not SUBNET_PREFIXES[0] <= block.prefixlen <= SUBNET_PREFIXES[1]:
            raise SaltCloudSystemExit(f"{key}: {cidr} must be an IPv4 network of /16 to /28")
        if not any(block.subnet_of(r) for r in PRIVATE_RANGES):
            raise SaltCloudSystemExit(f"{key}: {cidr} is not in a private range "
                                      "(10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)")
        for other_zone, other in blocks.items():
            if block.overlaps(other):
                raise SaltCloudSystemExit(f"{key}: {cidr} overlaps {other} of {other_zone}")
        blocks[zone] = block
    return blocks


def _named_extras(where, raw):
    """The placement groups' names and the reserved addresses' {name: zone}, checked."""
    groups = raw.get("placement_groups") or []
    if not isinstance(groups, list):
        raise SaltCloudSystemExit(f"{where}:placement_groups must be a list of names")
    for group in groups:
        if not isinstance(group, str) or not FILTER_NAME_RULE.match(group):
            raise SaltCloudSystemExit(f"{where}:placement_groups: {group!r} must be 3-63 lowercase "
                                      "letters, digits or '-', starting with a letter")
    addresses = raw.get("addresses") or {}
    if not isinstance(addresses, dict):
        raise SaltCloudSystemExit(f"{where}:addresses must map each address's name to its zone")
    for address, zone in addresses.items():
        if not isinstance(address, str) or not FILTER_NAME_RULE.match(address):
            raise SaltCloudSystemExit(f"{where}:addresses: {address!r} must be 3-63 lowercase "
                                      "letters, digits or '-', starting with a letter")
        if zone not in ZONES:
            raise SaltCloudSystemExit(f"{where}:addresses:{address}: unknown zone {zone!r} "
                                      f"(zones: {', '.join(ZONES)})")
    return list(groups), dict(addresses)


def _network_config():
    """
    The provider's ``network:`` block, checked whole before any API call: every problem is
    named with its key. Returns {name, subnets: {zone: network}, nat_gateway, placement_groups,
    addresses: {name: zone}} and the names ensure_network gives what it makes.
    """
    raw = _provider_value("network")
    where = "provider option network"
    if not raw:
        raise SaltCloudSystemExit(f"{where} is not set: ensure_network needs the network's name and "
                                  "one subnet per zone (cloud.providers.d/yandex.conf.example)")
    if not isinstance(raw, dict):
        raise SaltCloudSystemExit(f"{where} must be a mapping, not {raw!r}")
    unknown = sorted(set(raw) - set(NETWORK_KEYS))
    if unknown:
        raise SaltCloudSystemExit(f"{where}: unknown key {unknown[0]} (known: {', '.join(NETWORK_KEYS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not NETWORK_NAME_RULE.match(name):
        raise SaltCloudSystemExit(
            f"{where}:name {name!r} must be 3-54 lowercase letters, digits or '-', starting with a "
            "letter and not ending with '-' (it is the stem of the subnets' and the gateway's names)")
    subnets = raw.get("subnets")
    if not isinstance(subnets, dict) or not subnets:
        raise SaltCloudSystemExit(f"{where}:subnets must map each zone to its subnet's CIDR, e.g. "
                                  "ru-central1-a: 10.128.0.0/24")
    blocks = _subnet_blocks(where, subnets)
    groups, addresses = _named_extras(where, raw)
    switches = {}
    for key, default in (("nat_gateway", True), ("security_group", False)):
        switches[key] = raw.get(key, default)
        if not isinstance(switches[key], bool):
            raise SaltCloudSystemExit(f"{where}:{key} must be true or false, not {switches[key]!r}")
    return {"name": name, "subnets": blocks, **switches, "placement_groups": groups,
            "addresses": addresses, "subnet_names": {z: f"{name}-{z}" for z in blocks},
            "egress_name": f"{name}-egress", "security_group_name": f"{name}-cluster"}


def _security_group_rules(net):
    """The cluster's security group: anything between the network's subnets (the hosts'
    nftables firewall narrows it per port), HTTP to the web app and SSH to the salt-master from
    anywhere (only VMs with a public address can be reached so), everything out."""
    anywhere = {"v4CidrBlocks": ["0.0.0.0/0"]}

    def tcp(port, description):
        return {"direction": "INGRESS", "description": description, "protocolName": "TCP",
                "ports": {"fromPort": str(port), "toPort": str(port)}, "cidrBlocks": anywhere}

    return [
        {"direction": "INGRESS", "description": "inside the network", "protocolName": "ANY",
         "cidrBlocks": {"v4CidrBlocks": [str(b) for b in net["subnets"].values()]}},
        tcp(80, "the web app"),
        tcp(22, "SSH (the salt-master)"),
        {"direction": "EGRESS", "description": "out, through the NAT gateway", "protocolName": "ANY",
         "cidrBlocks": anywhere},
    ]


KINDS = {"networks": "network", "subnets": "subnet", "gateways": "gateway",
         "routeTables": "route table", "addresses": "address", "placementGroups": "placement group",
         "securityGroups": "security group"}


def _by_name(api, kind, name):
    """The folder's resource of this kind and name, or None."""
    found = _list(api, kind, kind, f"looking up {KINDS[kind]} {name}", folderId=_folder(),
                  filter=f'name="{name}"')
    return found[0] if found else None


def _ensure(report, api, kind, name, body):
    """Find the named resource, or make it; report says which."""
    label = KINDS[kind]
    existing = _by_name(api, kind, name)
    if existing:
        report[f"{label} {name}"] = f"found {existing['id']}"
        return existing, False
    made = _done(api, "POST", kind, f"creating {label} {name}",
                 {"folderId": _folder(), "name": name, "labels": NETWORK_LABELS, **body})
    report[f"{label} {name}"] = f"made {made['id']}"
    return made, True


def _ensure_egress(report, net, network):
    """The NAT gateway and the route table sending 0.0.0.0/0 through it; the table's id."""
    gateway, _ = _ensure(report, _vpc, "gateways", net["egress_name"], {"sharedEgressGatewaySpec": {}})
    routes = [{"destinationPrefix": "0.0.0.0/0", "gatewayId": gateway["id"]}]
    table, made = _ensure(report, _vpc, "routeTables", net["egress_name"],
                          {"networkId": network["id"], "staticRoutes": routes})
    if table.get("networkId") != network["id"]:
        raise SaltCloudSystemExit(f"route table {net['egress_name']} ({table['id']}) belongs to "
                                  f"network {table.get('networkId')}, not {net['name']}")
    if not made and [{k: r.get(k) for k in ("destinationPrefix", "gatewayId")}
                     for r in table.get("staticRoutes", [])] != routes:
        _done(_vpc, "PATCH", f"routeTables/{table['id']}", f"routing {net['egress_name']}",
              {"updateMask": "staticRoutes", "staticRoutes": routes})
        report[f"route table {net['egress_name']}"] += ", its route set to the gateway"
    return table["id"]


def _ensure_subnet(report, net, network, zone, route_table_id):
    """The zone's subnet, as the network block says, routed through the egress table."""
    name, block = net["subnet_names"][zone], net["subnets"][zone]
    body = {"networkId": network["id"], "zoneId": zone, "v4CidrBlocks": [str(block)]}
    if route_table_id:
        body["routeTableId"] = route_table_id
    subnet, _ = _ensure(report, _vpc, "subnets", name, body)
    found = (subnet.get("networkId"), subnet.get("zoneId"), subnet.get("v4CidrBlocks"))
    if found != (network["id"], zone, [str(block)]):
        raise SaltCloudSystemExit(
            f"subnet {name} ({subnet['id']}) is {found[2]} in {found[1]} of network {found[0]}; "
            f"the provider's network wants {block} in {zone} of {net['name']} ({network['id']})")
    if route_table_id and subnet.get("routeTableId") != route_table_id:
        _done(_vpc, "PATCH", f"subnets/{subnet['id']}", f"routing subnet {name}",
              {"updateMask": "routeTableId", "routeTableId": route_table_id})
        report[f"subnet {name}"] += ", egress route table attached"


def ensure_network(kwargs=None, call=None):
    """
    Find or make what the cluster's VMs need around them, from the provider's ``network:``
    block: the network, one subnet per zone, a NAT gateway (shared egress gateway) with a route
    table sending 0.0.0.0/0 through it attached to every subnet (VMs without a public address
    still reach package mirrors), the cluster's security group if asked, the spread placement
    groups, and the reserved public addresses. Running it again makes nothing; it says what it
    found and what it made.

    CLI Example:

    .. code-block:: bash

        salt-cloud -f ensure_network yandex
    """
    if call != "function":
        raise SaltCloudSystemExit("ensure_network must be called with -f or --function")
    net = _network_config()
    report = {}
    try:
        return _ensure_all(report, net)
    except SaltCloudException as exc:
        # What was made stays (each piece is whole): say so, and how to finish or undo it.
        made = [f"{what} ({how})" for what, how in report.items() if how.startswith("made")]
        raise SaltCloudSystemExit(
            f"{exc}; made before that: {', '.join(made) or 'nothing'}. Run ensure_network again to "
            "finish (it makes only what is missing), or destroy_network to remove it") from None


def _ensure_all(report, net):
    network, _ = _ensure(report, _vpc, "networks", net["name"],
                         {"description": "the pgcluster network (salt-cloud ensure_network)"})
    route_table_id = _ensure_egress(report, net, network) if net["nat_gateway"] else None
    for zone in net["subnets"]:
        _ensure_subnet(report, net, network, zone, route_table_id)
    if net["security_group"]:
        _ensure(report, _vpc, "securityGroups", net["security_group_name"],
                {"networkId": network["id"], "ruleSpecs": _security_group_rules(net)})
    for group in net["placement_groups"]:
        _ensure(report, _compute, "placementGroups", group, {"spreadPlacementStrategy": {}})
    for address, zone in net["addresses"].items():
        found, _ = _ensure(report, _vpc, "addresses", address, {"externalIpv4AddressSpec": {"zoneId": zone}})
        ip = (found.get("externalIpv4Address") or {}).get("address")
        report[f"address {address}"] += f" ({ip}, {zone})"
    return report


def _network_resources(net):
    """What ensure_network would have made, as it is now: {(kind, name): resource or None},
    in the order they can be deleted."""
    wanted = [("subnets", n) for n in net["subnet_names"].values()]
    if net["nat_gateway"]:
        wanted += [("routeTables", net["egress_name"]), ("gateways", net["egress_name"])]
    if net["security_group"]:
        wanted.append(("securityGroups", net["security_group_name"]))
    wanted += [("placementGroups", g) for g in net["placement_groups"]]
    wanted += [("addresses", a) for a in net["addresses"]] + [("networks", net["name"])]
    api = {"placementGroups": _compute}
    return {(kind, name): _by_name(api.get(kind, _vpc), kind, name) for kind, name in wanted}


def _network_users(resources):
    """The VMs that still use a subnet, security group, placement group or address of these."""
    ids = {r["id"]: f"{KINDS[kind]} {name}" for (kind, name), r in resources.items() if r}
    public = {(r.get("externalIpv4Address") or {}).get("address"): f"address {name}"
              for (kind, name), r in resources.items() if r and kind == "addresses"}
    users = []
    for instance in _instances():
        nics = instance.get("networkInterfaces", [])
        used = [nic.get("subnetId") for nic in nics]
        used += [group for nic in nics for group in nic.get("securityGroupIds", [])]
        used.append((instance.get("placementPolicy") or {}).get("placementGroupId"))
        uses = [ids[i] for i in used if i in ids]
        uses += [public[ip] for ip in _addresses(instance)[1] if ip in public]
        if uses:
            users.append(f"{instance['name']} ({', '.join(uses)})")
    return users


def destroy_network(kwargs=None, call=None):
    """
    Delete what ensure_network made, in the order the API allows (subnets, route table,
    gateway, security group, placement groups, addresses, network). Refuses, changing nothing,
    while a VM still uses a subnet, the security group, a placement group or an address of it.

    CLI Example:

    .. code-block:: bash

        salt-cloud -f destroy_network yandex
    """
    if call != "function":
        raise SaltCloudSystemExit("destroy_network must be called with -f or --function")
    net = _network_config()
    resources = _network_resources(net)
    users = _network_users(resources)
    if users:
        raise SaltCloudSystemExit(
            f"network {net['name']} is still in use, nothing was deleted: {'; '.join(users)}. "
            "Delete those VMs first (salt-cloud -m <map> -d, or salt-cloud -d NAME)")
    report = {}
    for (kind, name), resource in resources.items():
        label = f"{KINDS[kind]} {name}"
        if resource is None:
            report[label] = "absent"
            continue
        api = _compute if kind == "placementGroups" else _vpc
        _done(api, "DELETE", f"{kind}/{resource['id']}", f"deleting {label}")
        report[label] = f"deleted {resource['id']}"
    return report


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


def _network_subnet_name(vm_, zone):
    """The provider network's subnet of the VM's zone, checked before any API call."""
    net = _network_config()
    if zone not in net["subnet_names"]:
        raise SaltCloudSystemExit(
            f"{vm_['name']}: zone {zone} has no subnet in the provider's network "
            f"(network:subnets has {', '.join(net['subnet_names'])})")
    address = _vm_value("ip_address", vm_)
    if address:
        _check_address(vm_, {"name": net["subnet_names"][zone],
                             "v4CidrBlocks": [str(net["subnets"][zone])]}, address)
    return net["subnet_names"][zone]


def _subnet_choice(vm_, zone):
    """(subnet_id, subnet_name) of the profile, else the provider network's subnet of the zone
    (checked without an API call)."""
    subnet_id = _vm_value("subnet_id", vm_)
    subnet_name = _vm_value("subnet_name", vm_)
    if not subnet_id and not subnet_name and _provider_value("network"):
        subnet_name = _network_subnet_name(vm_, zone)
    return subnet_id, subnet_name


def _find_subnet(name, zone, subnet_id, subnet_name):
    """The subnet by id or name, which must be in the VM's zone."""
    if subnet_id:
        subnet = _vpc("GET", f"subnets/{subnet_id}", f"{name}: looking up subnet {subnet_id}")
    elif subnet_name:
        found = _list(_vpc, "subnets", "subnets", f"{name}: looking up subnet {subnet_name}",
                      folderId=_folder(), filter=f'name="{subnet_name}"')
        if not found:
            raise SaltCloudSystemExit(f"{name}: no subnet named {subnet_name} in folder {_folder()}")
        subnet = found[0]
    else:
        raise SaltCloudSystemExit(f"{name}: set subnet_id or subnet_name, or the provider's network")
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
    if _vm_value("serial_port_enable", vm_, False):
        metadata["serial-port-enable"] = "1"  # the serial console, as Terraform's option sets it
    # instance_service.proto CreateInstanceRequest.metadata: "The values must be 256 KB or less",
    # "The total size of all keys and values must be less than 512 KB".
    for key, value in metadata.items():
        if len(value.encode()) > METADATA_VALUE_LIMIT:
            raise SaltCloudSystemExit(f"{vm_['name']}: metadata {key} is over 256 KB")
    if sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items()) >= METADATA_TOTAL_LIMIT:
        raise SaltCloudSystemExit(f"{vm_['name']}: metadata is 512 KB or more in all")
    return metadata


# instance.proto MetadataOptions: who may read the VM's metadata service, and how.
METADATA_OPTIONS = ("gce_http_endpoint", "aws_v1_http_endpoint", "gce_http_token", "aws_v1_http_token")


def _metadata_options(vm_):
    """metadata_options: {gce_http_endpoint: enabled|disabled, ...} as metadataOptions."""
    options = _vm_value("metadata_options", vm_) or {}
    if not isinstance(options, dict):
        raise SaltCloudSystemExit(f"{vm_['name']}: metadata_options must be a mapping")
    body = {}
    for key, value in options.items():
        if key not in METADATA_OPTIONS:
            raise SaltCloudSystemExit(f"{vm_['name']}: metadata_options: unknown option {key} "
                                      f"(known: {', '.join(METADATA_OPTIONS)})")
        if str(value).upper() not in ("ENABLED", "DISABLED"):
            raise SaltCloudSystemExit(f"{vm_['name']}: metadata_options:{key} must be enabled or "
                                      f"disabled, not {value!r}")
        body[re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), key)] = str(value).upper()
    return body


def _listed(numbers):
    """Numbers as a message lists them: 0.5, 1, 1.5."""
    return ", ".join(f"{n:g}" for n in numbers)


def _check_size(vm_, platform, cores, memory_gb, fraction):
    """The platform's vCPU counts, core fractions and memory per vCPU (PLATFORM_SIZES)."""
    name = vm_["name"]
    if platform not in PLATFORM_SIZES:
        raise SaltCloudSystemExit(
            f"{name}: platform_id {platform!r} is not one of {', '.join(PLATFORM_SIZES)}")
    by_fraction = PLATFORM_SIZES[platform]
    if fraction not in by_fraction:
        raise SaltCloudSystemExit(
            f"{name}: core_fraction {fraction} is not offered on {platform} (it has {_listed(by_fraction)})")
    for counts, per_core in by_fraction[fraction]:
        if cores in counts:
            if not any(abs(memory_gb / cores - gb) < 1e-6 for gb in per_core):
                raise SaltCloudSystemExit(
                    f"{name}: memory {memory_gb:g} GB is {memory_gb / cores:g} GB per core; {platform} at "
                    f"core_fraction {fraction} with {cores} cores takes {_listed(per_core)} GB per core")
            return
    allowed = sorted(c for counts, _ in by_fraction[fraction] for c in counts)
    raise SaltCloudSystemExit(
        f"{name}: cores {cores} is not offered on {platform} at core_fraction {fraction} "
        f"(it has {_listed(allowed)})")


def _secondary_disks(vm_):
    """secondary_disks: [{size (GB), type, device_name, auto_delete}] as secondaryDiskSpecs."""
    disks = _vm_value("secondary_disks", vm_) or []
    if not isinstance(disks, list) or len(disks) > 3:
        raise SaltCloudSystemExit(f"{vm_['name']}: secondary_disks must be a list of at most 3 disks")
    specs = []
    for n, disk in enumerate(disks):
        if not isinstance(disk, dict) or not isinstance(disk.get("size"), int) or disk["size"] <= 0:
            raise SaltCloudSystemExit(f"{vm_['name']}: secondary_disks[{n}] needs a size in GB")
        device = disk.get("device_name", f"data{n}")
        # instance_service.proto AttachedDiskSpec.device_name: [a-z][a-z0-9-_]{,19}
        if not re.fullmatch(r"[a-z][a-z0-9-_]{0,19}", str(device)):
            raise SaltCloudSystemExit(f"{vm_['name']}: secondary_disks[{n}] device_name {device!r} must "
                                      "be 1-20 lowercase letters, digits, '-' or '_', starting with a letter")
        spec = {"typeId": disk.get("type", "network-ssd"), "size": str(disk["size"] * GB)}
        specs.append({"autoDelete": bool(disk.get("auto_delete", True)), "deviceName": device,
                      "diskSpec": spec})
    return specs


def _placement_group(vm_):
    """placement_group (a name) as its id; a name the provider's network does not list is refused
    before any API call."""
    group = _vm_value("placement_group", vm_)
    if not group:
        return None
    listed = _network_config()["placement_groups"] if _provider_value("network") else None
    if listed is not None and group not in listed:
        raise SaltCloudSystemExit(
            f"{vm_['name']}: placement_group {group} is not in the provider's network:placement_groups "
            f"({', '.join(listed) or 'none'})")
    found = _by_name(_compute, "placementGroups", group)
    if found is None:
        raise SaltCloudSystemExit(f"{vm_['name']}: no placement group named {group} in folder {_folder()} "
                                  "(salt-cloud -f ensure_network yandex makes it)")
    return found["id"]


def _nat_address(vm_, zone):
    """nat_ip_address: a reserved address, by name or by value, in the VM's zone and not in use."""
    wanted = _vm_value("nat_ip_address", vm_)
    if not wanted:
        return None
    addresses = _list(_vpc, "addresses", "addresses", f"{vm_['name']}: looking up address {wanted}",
                      folderId=_folder())
    found = next((a for a in addresses if wanted in (a.get("name"),
                  (a.get("externalIpv4Address") or {}).get("address"))), None)
    if found is None:
        raise SaltCloudSystemExit(f"{vm_['name']}: nat_ip_address {wanted} is not a reserved address of "
                                  f"folder {_folder()} (salt-cloud -f ensure_network yandex reserves it)")
    external = found.get("externalIpv4Address") or {}
    if external.get("zoneId") != zone:
        raise SaltCloudSystemExit(f"{vm_['name']}: nat_ip_address {wanted} is in {external.get('zoneId')}, "
                                  f"the VM's zone is {zone}")
    if found.get("used"):
        raise SaltCloudSystemExit(f"{vm_['name']}: nat_ip_address {wanted} is already used by another VM")
    return external["address"]


def _security_group_ids(vm_, ids, names):
    """Security group ids as given, and those of the groups named (looked up in the folder)."""
    found_ids = list(ids or [])
    for group in names or []:
        found = _list(_vpc, "securityGroups", "securityGroups",
                      f"{vm_['name']}: looking up security group {group}", folderId=_folder(),
                      filter=f'name="{group}"')
        if not found:
            raise SaltCloudSystemExit(f"{vm_['name']}: no security group named {group} in folder "
                                      f"{_folder()} (ensure_network makes one with network:security_group)")
        found_ids.append(found[0]["id"])
    return found_ids


def _extra_interfaces(vm_):
    """additional_network_interfaces: [{subnet_id or subnet_name, ip_address, security_groups,
    security_group_ids}], their shape checked before any API call."""
    extra = _vm_value("additional_network_interfaces", vm_) or []
    if not isinstance(extra, list):
        raise SaltCloudSystemExit(f"{vm_['name']}: additional_network_interfaces must be a list")
    for n, nic in enumerate(extra):
        if not isinstance(nic, dict) or not (nic.get("subnet_id") or nic.get("subnet_name")):
            raise SaltCloudSystemExit(f"{vm_['name']}: additional_network_interfaces[{n}] needs "
                                      "subnet_id or subnet_name")
    return extra


def _more_interfaces(vm_, zone, extra):
    """The extra interfaces' specs, each in a subnet of the VM's zone."""
    specs = []
    for nic in extra:
        subnet = _find_subnet(vm_["name"], zone, nic.get("subnet_id"), nic.get("subnet_name"))
        spec = {"subnetId": subnet["id"], "primaryV4AddressSpec": {}}
        if nic.get("ip_address"):
            _check_address(vm_, subnet, nic["ip_address"])
            spec["primaryV4AddressSpec"]["address"] = nic["ip_address"]
        groups = _security_group_ids(vm_, nic.get("security_group_ids"), nic.get("security_groups"))
        if groups:
            spec["securityGroupIds"] = groups
        specs.append(spec)
    return specs


def _create_body(vm_):
    """The CreateInstanceRequest of a profile, checked here where the API's answer would be vague:
    what needs no API call first, so a bad profile costs none."""
    name = vm_["name"]
    _check_name("VM name", name)
    hostname = _vm_value("hostname", vm_, name)
    _check_name("hostname", hostname)
    zone = _vm_value("zone", vm_, "ru-central1-a")
    if zone not in ZONES:
        raise SaltCloudSystemExit(f"{name}: zone {zone!r} is not one of {', '.join(ZONES)}")
    platform = _vm_value("platform_id", vm_, "standard-v3")
    cores = _number(vm_, "cores", 2)
    core_fraction = _number(vm_, "core_fraction", 100)
    memory_gb = _number(vm_, "memory", 2, float)
    _check_size(vm_, platform, cores, memory_gb, core_fraction)
    disk_gb = _number(vm_, "disk_size", 10)
    secondary_disks = _secondary_disks(vm_)
    metadata_options = _metadata_options(vm_)
    extra_interfaces = _extra_interfaces(vm_)
    subnet_id, subnet_name = _subnet_choice(vm_, zone)
    placement_group_id = _placement_group(vm_)
    image = _image(vm_)
    if disk_gb * GB < int(image.get("minDiskSize", 0)):
        raise SaltCloudSystemExit(
            f"{name}: disk_size {disk_gb} GB is smaller than image {image['id']} needs "
            f"({int(image['minDiskSize']) / GB:g} GB)"
        )
    subnet = _find_subnet(name, zone, subnet_id, subnet_name)
    address_spec = {}
    address = _vm_value("ip_address", vm_)
    if address:
        _check_address(vm_, subnet, address)
        address_spec["address"] = address
    nat_address = _nat_address(vm_, zone)
    if nat_address:
        address_spec["oneToOneNatSpec"] = {"address": nat_address}
    elif _vm_value("nat", vm_, False):
        address_spec["oneToOneNatSpec"] = {"ipVersion": "IPV4"}
    interface = {"subnetId": subnet["id"], "primaryV4AddressSpec": address_spec}
    security_groups = _security_group_ids(vm_, _vm_value("security_group_ids", vm_),
                                          _vm_value("security_groups", vm_))
    if security_groups:
        interface["securityGroupIds"] = security_groups
    body = {
        "folderId": _folder(),
        "name": name,
        "description": _vm_value("description", vm_, f"salt-cloud profile {vm_.get('profile')}"),
        "labels": {str(k): str(v) for k, v in (_vm_value("labels", vm_) or {}).items()},
        "zoneId": zone,
        "platformId": platform,
        "hostname": hostname,
        # int64 fields go as strings, as the API writes them.
        "resourcesSpec": {
            "memory": str(int(memory_gb * GB)),
            "cores": str(cores),
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
        "networkInterfaceSpecs": [interface, *_more_interfaces(vm_, zone, extra_interfaces)],
        "schedulingPolicy": {"preemptible": bool(_vm_value("preemptible", vm_, False))},
    }
    if secondary_disks:
        body["secondaryDiskSpecs"] = secondary_disks
    if metadata_options:
        body["metadataOptions"] = metadata_options
    if placement_group_id:
        body["placementPolicy"] = {"placementGroupId": placement_group_id}
    if _vm_value("service_account_id", vm_):
        body["serviceAccountId"] = _vm_value("service_account_id", vm_)
    return body


def _ssh_interface(vm_):
    """ssh_interface: private_ips or public_ips (by default the public address when the VM has
    one): a master inside the VPC reaches every VM by its private address."""
    interface = _vm_value("ssh_interface", vm_)
    if interface is None:
        return "public_ips" if _vm_value("nat", vm_, False) or _vm_value("nat_ip_address", vm_) \
            else "private_ips"
    if interface not in ("private_ips", "public_ips"):
        raise SaltCloudSystemExit(f"{vm_['name']}: ssh_interface must be private_ips or public_ips, "
                                  f"not {interface!r}")
    return interface


def _check_ssh_interface(vm_):
    if _ssh_interface(vm_) == "public_ips" and not (_vm_value("nat", vm_, False)
                                                    or _vm_value("nat_ip_address", vm_)):
        raise SaltCloudSystemExit(f"{vm_['name']}: ssh_interface is public_ips but the VM gets no "
                                  "public address (set nat: true or nat_ip_address)")


def _ssh_address(vm_, instance):
    private, public = _addresses(instance)
    wanted = public if _ssh_interface(vm_) == "public_ips" else private
    return wanted[0] if wanted else None


def _bootstrap_reason(instance_id, name):
    """Why the deploy script failed, in its own words: it writes them on the serial console
    (etc/salt/cloud.deploy.d/pgcluster-minion.sh), which the API gives back."""
    try:
        output = _compute("GET", f"instances/{instance_id}:serialPortOutput",
                          f"reading {name}'s serial console")
    except Exception:  # only a better message is lost; the clean-up must go on
        return None
    marker = f"pgcluster bootstrap of {name} failed: "
    lines = [line.replace("\r", "") for line in output.get("contents", "").splitlines() if marker in line]
    return lines[-1].split(marker, 1)[1].strip() if lines else None


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
    instance_id, bootstrapping = None, False
    try:
        _check_ssh_interface(vm_)
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
        bootstrapping = True
        deployed = __utils__["cloud.bootstrap"](vm_, __opts__)
        if "Error" in deployed and "No Deploy" not in deployed["Error"]:
            raise SaltCloudSystemExit(f"bootstrapping {name} at {address} failed: {deployed['Error']}")
    except Exception as exc:  # whatever failed, the half-made VM must go
        reason = str(exc) if isinstance(exc, SaltCloudException) else f"{type(exc).__name__}: {exc}"
        why = _bootstrap_reason(instance_id, name) if bootstrapping else None
        if why:
            reason = f"bootstrapping {name} failed: {why} ({reason})"
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
