"""A fake of the Yandex Cloud REST API (IAM, Compute, VPC, Operations) on loopback.

It follows the documented contract strictly, so that a driver that passes here talks to the
real API the same way (../shared/notes/yandex-cloud-api.md):
- every call but the token exchange needs a live IAM token; tokens expire;
- the token exchange checks a service account JWT's PS256 signature, claims and lifetime;
- int64 fields come back as JSON strings; request bodies with unknown fields are rejected;
- mutating calls answer an Operation that is not done on the first poll;
- lists come in small pages with nextPageToken; pageSize over 1000 is rejected;
- errors carry {code, message, details: [RequestInfo]} with the gRPC code's HTTP status;
- an Idempotency-Key that was seen before gives the same Operation, not a second VM.

Tests steer it directly: register keys, inject errors, lose responses, read the request log.
One server answers for all four API hosts; the paths do not overlap.
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import ipaddress
import json
import re
import secrets
import string
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

FOLDER = "b1gfake0folder000001"
JWT_AUDIENCE = "https://iam.api.cloud.yandex.net/iam/v1/tokens"
GB = 1024**3
NAME_RULE = re.compile(r"^[a-z]([-_a-z0-9]{0,61}[a-z0-9])?$")
ZONES = {"ru-central1-a": "fhm", "ru-central1-b": "epd", "ru-central1-d": "fv4"}
PLATFORMS = {"standard-v1", "standard-v2", "standard-v3", "highfreq-v3"}
CORE_FRACTIONS = {"standard-v1": {5, 20, 100}, "standard-v2": {5, 20, 50, 100},
                  "standard-v3": {20, 50, 100}, "highfreq-v3": {100}}
DISK_TYPES = {"network-hdd", "network-ssd", "network-ssd-nonreplicated"}
HTTP_OF_CODE = {3: 400, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 12: 501, 13: 500, 14: 503,
                16: 401, 4: 504}

# The CreateInstanceRequest fields the driver may send ("int64" ones may be strings or
# numbers, as protojson reads them); anything else is rejected as the real gateway does.
INT64 = "int64"
CREATE_SCHEMA = {
    "folderId": str, "name": str, "description": str, "labels": dict, "zoneId": str,
    "platformId": str, "hostname": str, "serviceAccountId": str, "metadata": dict,
    "resourcesSpec": {"memory": INT64, "cores": INT64, "coreFraction": INT64, "gpus": INT64},
    "bootDiskSpec": {"mode": str, "deviceName": str, "autoDelete": bool, "diskId": str,
                     "diskSpec": {"name": str, "description": str, "typeId": str, "size": INT64,
                                  "imageId": str, "snapshotId": str, "blockSize": INT64}},
    "networkInterfaceSpecs": [{"subnetId": str, "securityGroupIds": [str], "index": str,
                               "primaryV4AddressSpec": {"address": str,
                                                        "oneToOneNatSpec": {"ipVersion": str,
                                                                            "address": str}}}],
    "schedulingPolicy": {"preemptible": bool},
}


class ApiError(Exception):
    def __init__(self, code, message, extra_details=()):
        super().__init__(message)
        self.code, self.message, self.extra_details = code, message, list(extra_details)


def _id(prefix="fhm"):
    return prefix + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(17))


def _now_rfc3339(offset=0.0):
    stamp = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
    # Yandex writes nanoseconds.
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond:06d}123Z"


def _b64url_decode(part):
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _int64(value, field):
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise ApiError(3, f"invalid value for int64 field {field}: {json.dumps(value)}")
    return int(value)


def _check_schema(body, schema, where):
    if isinstance(schema, list):
        if not isinstance(body, list):
            raise ApiError(3, f"{where}: expected a list")
        for item in body:
            _check_schema(item, schema[0], where)
        return
    if isinstance(schema, dict):
        if not isinstance(body, dict):
            raise ApiError(3, f"{where}: expected an object")
        for key, value in body.items():
            if key not in schema:
                raise ApiError(3, f'invalid JSON: unknown field "{key}" in {where}')
            _check_schema(value, schema[key], f"{where}.{key}")
        return
    if schema is INT64:
        _int64(body, where)
    elif schema is dict:
        if not isinstance(body, dict) or not all(isinstance(v, str) for v in body.values()):
            raise ApiError(3, f"{where}: expected a map of strings")
    elif not isinstance(body, schema):
        raise ApiError(3, f"{where}: expected {schema.__name__}, got {json.dumps(body)}")


class FakeYandex:
    """The cloud's state, and the HTTP server in front of it."""

    def __init__(self, *, page_size=2, polls_until_done=2, token_lifetime=3600.0,
                 public_addresses=("127.0.77.1", "127.0.77.2", "127.0.77.3")):
        self.lock = threading.RLock()
        self.page_size = page_size
        self.polls_until_done = polls_until_done
        self.token_lifetime = token_lifetime
        self.instance_quota = 16
        self.public_pool = list(public_addresses)
        self.keys = {}  # key id -> (service account id, public key)
        self.oauth_tokens = set()
        self.tokens = {}  # IAM token -> expiry (time.time())
        self.instances, self.disks, self.operations = {}, {}, {}
        self.idempotency = {}  # key -> (request fingerprint, operation id)
        self.injected = []  # [method, path regex, status code, message, times, lose]
        self.failing_operations = []  # [(code, message)] for the next create operations
        self.requests = []  # (method, path, headers, body) of every call
        self.subnets = {}
        self.add_subnet("pgcluster-subnet", "ru-central1-a", "10.0.0.0/24")
        self.images = {}
        for family, name, created in (("debian-12", "debian-12-v20250101", "2025-01-01"),
                                      ("debian-12", "debian-12-v20251101", "2025-11-01"),
                                      ("ubuntu-2204-lts", "ubuntu-22-04-lts-v20251101", "2025-11-01")):
            image_id = _id("fd8")
            self.images[image_id] = {
                "id": image_id, "folderId": "standard-images", "createdAt": f"{created}T00:00:00Z",
                "name": name, "family": family, "storageSize": str(2 * GB),
                "minDiskSize": str(3 * GB), "status": "READY", "os": {"type": "LINUX"},
                "description": name,
            }
        self.server = None

    # --- what tests call -----------------------------------------------------------------------

    def start(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add_key(self, key_id, service_account_id, public_key_pem):
        self.keys[key_id] = (service_account_id, serialization.load_pem_public_key(public_key_pem))

    def add_subnet(self, name, zone, cidr):
        subnet_id = _id("e9b")
        self.subnets[subnet_id] = {"id": subnet_id, "folderId": FOLDER, "name": name, "zoneId": zone,
                                   "networkId": _id("enp"), "v4CidrBlocks": [cidr],
                                   "createdAt": _now_rfc3339()}
        return subnet_id

    def inject(self, method, path, code, message, times=1, lose=False):
        """The next `times` calls matching answer this error; with lose=True the call is carried
        out first and only its answer is lost (a gateway timeout after the work was done)."""
        with self.lock:
            self.injected.append([method, re.compile(path), code, message, times, lose])

    def fail_next_operation(self, code, message):
        with self.lock:
            self.failing_operations.append((code, message))

    def revoke_tokens(self):
        with self.lock:
            self.tokens.clear()

    def calls(self, method=None, path=None):
        return [r for r in self.requests
                if (method is None or r[0] == method) and (path is None or re.search(path, r[1]))]

    def names(self):
        with self.lock:
            return sorted(i["name"] for i in self.instances.values())

    # --- the API -------------------------------------------------------------------------------

    def handle(self, method, url, headers, raw):
        parts = urlsplit(url)
        path, query = parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            raise ApiError(3, "invalid JSON body") from None
        with self.lock:
            self.requests.append((method, path, dict(headers), body))
            lost = self._injected(method, path)
            if path == "/iam/v1/tokens" and method == "POST":
                result = self._iam_token(body)
            else:
                self._authenticate(headers.get("Authorization", ""))
                result = self._route(method, path, query, body, headers.get("Idempotency-Key"))
            if lost:
                raise lost
            return result

    def _injected(self, method, path):
        for rule in self.injected:
            if rule[0] == method and rule[1].search(path) and rule[4] > 0:
                rule[4] -= 1
                error = ApiError(rule[2], rule[3])
                if rule[5]:
                    return error
                raise error
        return None

    def _iam_token(self, body):
        if not isinstance(body, dict) or len(body) != 1:
            raise ApiError(3, "exactly one of jwt or yandexPassportOauthToken must be set")
        if "yandexPassportOauthToken" in body:
            if body["yandexPassportOauthToken"] not in self.oauth_tokens:
                raise ApiError(16, "The OAuth token is invalid")
        elif "jwt" in body:
            self._check_jwt(body["jwt"])
        else:
            raise ApiError(3, f'invalid JSON: unknown field "{next(iter(body))}"')
        token = "t1." + secrets.token_urlsafe(32)
        self.tokens[token] = time.time() + self.token_lifetime
        return {"iamToken": token, "expiresAt": _now_rfc3339(self.token_lifetime)}

    def _check_jwt(self, jwt):
        try:
            head_b64, claims_b64, signature_b64 = jwt.split(".")
            header = json.loads(_b64url_decode(head_b64))
            claims = json.loads(_b64url_decode(claims_b64))
            signature = _b64url_decode(signature_b64)
        except ValueError:
            raise ApiError(3, "JWT is malformed") from None
        if header.get("alg") != "PS256" or header.get("typ") != "JWT":
            raise ApiError(3, f"JWT algorithm must be PS256, not {header.get('alg')}")
        if header.get("kid") not in self.keys:
            raise ApiError(16, f"Unknown key id {header.get('kid')}")
        account, public_key = self.keys[header["kid"]]
        try:
            public_key.verify(signature, f"{head_b64}.{claims_b64}".encode(),
                              padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                          salt_length=padding.PSS.DIGEST_LENGTH),
                              hashes.SHA256())
        except InvalidSignature:
            raise ApiError(16, "JWT signature validation failed") from None
        now = time.time()
        if claims.get("iss") != account:
            raise ApiError(16, "JWT issuer is not the key's service account")
        if claims.get("aud") != JWT_AUDIENCE:
            raise ApiError(16, f"JWT audience must be {JWT_AUDIENCE}")
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or not isinstance(exp, int) or exp - iat > 3600:
            raise ApiError(16, "JWT lifetime must be at most one hour")
        if iat > now + 60 or exp < now:
            raise ApiError(16, "JWT is expired or not yet valid")

    def _authenticate(self, authorization):
        if not authorization.startswith("Bearer "):
            raise ApiError(16, "Authentication required")
        expires = self.tokens.get(authorization[len("Bearer "):])
        if expires is None:
            raise ApiError(16, "The token is invalid")
        if expires < time.time():
            raise ApiError(16, "The token has expired")

    def _route(self, method, path, query, body, idempotency_key):  # noqa: PLR0911
        match = re.fullmatch(r"/compute/v1/instances/([a-z0-9]+)(?::(start|stop|restart))?", path)
        if path == "/compute/v1/instances" and method == "GET":
            items = [self._view(i, full=False) for i in self.instances.values()
                     if i["folderId"] == self._folder(query)]
            return self._page(self._filtered(items, query), query, "instances")
        if path == "/compute/v1/instances" and method == "POST":
            return self._idempotent(idempotency_key, ("create", body), lambda: self._create(body))
        if match and method == "GET" and not match.group(2):
            view = query.get("view", "BASIC")
            if view not in ("BASIC", "FULL"):
                raise ApiError(3, f"invalid view {view}")
            return self._view(self._instance(match.group(1)), full=view == "FULL")
        if match and method == "DELETE" and not match.group(2):
            instance_id = match.group(1)
            return self._idempotent(idempotency_key, ("delete", instance_id),
                                    lambda: self._delete(instance_id))
        if match and method == "POST" and match.group(2):
            instance_id, verb = match.groups()
            return self._idempotent(idempotency_key, (verb, instance_id),
                                    lambda: self._power(instance_id, verb))
        if path == "/compute/v1/disks" and method == "GET":
            items = [d for d in self.disks.values() if d["folderId"] == self._folder(query)]
            return self._page(items, query, "disks")
        if path == "/compute/v1/zones" and method == "GET":
            zones = [{"id": z, "regionId": "ru-central1", "status": "UP"} for z in ZONES]
            return self._page(zones, query, "zones")
        if path == "/compute/v1/images" and method == "GET":
            folder = self._folder(query)
            return self._page([i for i in self.images.values() if i["folderId"] == folder],
                              query, "images")
        if path == "/compute/v1/images:latestByFamily" and method == "GET":
            family = [i for i in self.images.values()
                      if i["folderId"] == self._folder(query) and i["family"] == query.get("family")]
            if not family:
                raise ApiError(5, f"Image family {query.get('family')} not found")
            return max(family, key=lambda i: i["createdAt"])
        if (image := re.fullmatch(r"/compute/v1/images/([a-z0-9]+)", path)) and method == "GET":
            if image.group(1) not in self.images:
                raise ApiError(5, f"Image {image.group(1)} not found")
            return self.images[image.group(1)]
        if path == "/vpc/v1/subnets" and method == "GET":
            items = [s for s in self.subnets.values() if s["folderId"] == self._folder(query)]
            return self._page(self._filtered(items, query), query, "subnets")
        if (subnet := re.fullmatch(r"/vpc/v1/subnets/([a-z0-9]+)", path)) and method == "GET":
            if subnet.group(1) not in self.subnets:
                raise ApiError(5, f"Subnet {subnet.group(1)} not found")
            return self.subnets[subnet.group(1)]
        if (op := re.fullmatch(r"/operations/([a-z0-9]+)", path)) and method == "GET":
            return self._poll(op.group(1))
        raise ApiError(5, f"Not Found: {method} {path}")

    # --- lists ---------------------------------------------------------------------------------

    @staticmethod
    def _folder(query):
        if not query.get("folderId"):
            raise ApiError(3, "folder_id: required field")
        return query["folderId"]

    @staticmethod
    def _filtered(items, query):
        if "filter" not in query:
            return items
        match = re.fullmatch(r'\s*name\s*=\s*"([^"]*)"\s*', query["filter"])
        if not match:
            raise ApiError(3, f"invalid filter: {query['filter']}")
        return [i for i in items if i.get("name") == match.group(1)]

    def _page(self, items, query, field):
        size = int(query.get("pageSize") or 100)
        if not 0 <= size <= 1000:
            raise ApiError(3, "page_size: must be between 0 and 1000")
        size = min(size or 100, self.page_size)
        start = 0
        if query.get("pageToken"):
            try:
                start = int(base64.b64decode(query["pageToken"]).decode().removeprefix("offset:"))
            except ValueError:
                raise ApiError(3, "invalid page token") from None
        page = {field: items[start:start + size]}
        if start + size < len(items):
            page["nextPageToken"] = base64.b64encode(f"offset:{start + size}".encode()).decode()
        return page

    # --- instances -----------------------------------------------------------------------------

    def _instance(self, instance_id):
        if instance_id not in self.instances:
            raise ApiError(5, f"Instance {instance_id} not found")
        return self.instances[instance_id]

    @staticmethod
    def _view(instance, full):
        shown = copy.deepcopy(instance)
        if not full:
            shown.pop("metadata", None)
        return shown

    def _idempotent(self, key, request, action):
        fingerprint = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        if key and key in self.idempotency:
            seen, operation_id = self.idempotency[key]
            if seen != fingerprint:
                raise ApiError(3, f"Idempotency key {key} was used for another request")
            return self._operation_view(operation_id)
        operation = action()
        if key:
            self.idempotency[key] = (fingerprint, operation["id"])
        return self._operation_view(operation["id"])

    def _operation(self, description, instance_id, kind, finish, prefix):
        operation = {
            "id": _id(prefix), "description": description, "createdAt": _now_rfc3339(),
            "createdBy": "ajefakeserviceaccount", "modifiedAt": _now_rfc3339(), "done": False,
            "metadata": {"@type": f"type.googleapis.com/yandex.cloud.compute.v1.{kind}Metadata",
                         "instanceId": instance_id},
        }
        self.operations[operation["id"]] = {"operation": operation, "polls": self.polls_until_done,
                                            "finish": finish}
        return operation

    def _operation_view(self, operation_id):
        return copy.deepcopy(self.operations[operation_id]["operation"])

    def _poll(self, operation_id):
        if operation_id not in self.operations:
            raise ApiError(5, f"Operation {operation_id} not found")
        entry = self.operations[operation_id]
        operation = entry["operation"]
        if not operation["done"]:
            entry["polls"] -= 1
            if entry["polls"] <= 0:
                operation["done"] = True
                operation["modifiedAt"] = _now_rfc3339()
                outcome = entry["finish"]()
                operation.update(outcome)
        return copy.deepcopy(operation)

    def _create(self, body):
        _check_schema(body, CREATE_SCHEMA, "yandex.cloud.compute.v1.CreateInstanceRequest")
        for field in ("folderId", "zoneId", "platformId", "resourcesSpec", "bootDiskSpec",
                      "networkInterfaceSpecs"):
            if field not in body:
                raise ApiError(3, f"{field}: required field")
        if body["folderId"] != FOLDER:
            raise ApiError(7, f"Permission denied to folder {body['folderId']}")
        name = body.get("name", "")
        for field, value in (("name", name), ("hostname", body.get("hostname", name))):
            if value and not NAME_RULE.fullmatch(value):
                raise ApiError(3, f"{field}: invalid value {value!r}")
        if body["zoneId"] not in ZONES:
            raise ApiError(3, f"zone_id: unknown zone {body['zoneId']}")
        platform = body["platformId"]
        if platform not in PLATFORMS:
            raise ApiError(3, f"Platform {platform} not found")
        resources = body["resourcesSpec"]
        cores = _int64(resources.get("cores", 0), "cores")
        memory = _int64(resources.get("memory", 0), "memory")
        fraction = _int64(resources.get("coreFraction", 100), "coreFraction")
        if cores < 2 or cores % 2:
            raise ApiError(3, f"Invalid number of cores {cores} for platform {platform}")
        if memory < GB or memory % GB:
            raise ApiError(3, f"Invalid memory size {memory}: whole gigabytes, at least 1")
        if fraction not in CORE_FRACTIONS[platform]:
            raise ApiError(3, f"Core fraction {fraction} is not allowed on platform {platform}")
        metadata = body.get("metadata", {})
        if any(len(v.encode()) > 256 * 1024 for v in metadata.values()) or \
                sum(len(v.encode()) for v in metadata.values()) > 512 * 1024:
            raise ApiError(3, "metadata: too large")
        disk_spec = body["bootDiskSpec"].get("diskSpec") or {}
        image = self.images.get(disk_spec.get("imageId", ""))
        if image is None:
            raise ApiError(5, f"Image {disk_spec.get('imageId')} not found")
        size = _int64(disk_spec.get("size", 0), "size")
        if size < int(image["minDiskSize"]):
            raise ApiError(3, f"Disk size {size} is less than the image's minimum {image['minDiskSize']}")
        if disk_spec.get("typeId", "network-hdd") not in DISK_TYPES:
            raise ApiError(5, f"Disk type {disk_spec.get('typeId')} not found")
        if len(body["networkInterfaceSpecs"]) != 1:
            raise ApiError(3, "network_interface_specs: exactly one interface is supported")
        nic = body["networkInterfaceSpecs"][0]
        subnet = self.subnets.get(nic.get("subnetId", ""))
        if subnet is None:
            raise ApiError(5, f"Subnet {nic.get('subnetId')} not found")
        if subnet["zoneId"] != body["zoneId"]:
            raise ApiError(3, f"Subnet {subnet['id']} is in zone {subnet['zoneId']}, not {body['zoneId']}")
        in_folder = [i for i in self.instances.values() if i["folderId"] == FOLDER]
        if name and any(i["name"] == name for i in in_folder):
            raise ApiError(6, f"Instance with name {name} already exists")
        if len(in_folder) >= self.instance_quota:
            raise ApiError(8, "Quota limit compute.instances.count exceeded", [{
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"subject": "compute.instances.count",
                                "description": f"The limit is {self.instance_quota}"}]}])
        spec = nic.get("primaryV4AddressSpec") or {}
        address = self._private_address(subnet, spec.get("address"))
        nat = None
        if "oneToOneNatSpec" in spec:
            if not self.public_pool:
                raise ApiError(8, "Quota limit vpc.externalAddresses.count exceeded")
            nat = {"address": self.public_pool.pop(0), "ipVersion": "IPV4"}

        instance_id = _id(ZONES[body["zoneId"]])
        disk_id = _id(ZONES[body["zoneId"]])
        self.disks[disk_id] = {"id": disk_id, "folderId": FOLDER, "zoneId": body["zoneId"],
                               "typeId": disk_spec.get("typeId", "network-hdd"), "size": str(size),
                               "sourceImageId": image["id"], "instanceIds": [instance_id],
                               "status": "READY", "createdAt": _now_rfc3339()}
        v4 = {"address": address}
        if nat:
            v4["oneToOneNat"] = nat
        instance = {
            "id": instance_id, "folderId": FOLDER, "createdAt": _now_rfc3339(), "name": name,
            "description": body.get("description", ""), "labels": body.get("labels", {}),
            "zoneId": body["zoneId"], "platformId": platform,
            "resources": {"memory": str(memory), "cores": str(cores), "coreFraction": str(fraction)},
            "status": "PROVISIONING", "metadata": metadata,
            "bootDisk": {"mode": "READ_WRITE", "deviceName": disk_id, "autoDelete":
                         bool(body["bootDiskSpec"].get("autoDelete", False)), "diskId": disk_id},
            "networkInterfaces": [{"index": "0", "macAddress": "d0:0d:" + secrets.token_hex(4),
                                   "subnetId": subnet["id"], "primaryV4Address": v4,
                                   "securityGroupIds": nic.get("securityGroupIds", [])}],
            "fqdn": f"{body.get('hostname') or instance_id}.ru-central1.internal",
            "schedulingPolicy": body.get("schedulingPolicy", {}),
            "networkSettings": {"type": "STANDARD"}, "placementPolicy": {},
        }
        if "serviceAccountId" in body:
            instance["serviceAccountId"] = body["serviceAccountId"]
        self.instances[instance_id] = instance
        failure = self.failing_operations.pop(0) if self.failing_operations else None

        def finish():
            if failure:
                # A failed create leaves the instance in ERROR: the caller must clean it up.
                instance["status"] = "ERROR"
                return {"error": {"code": failure[0], "message": failure[1], "details": []}}
            instance["status"] = "RUNNING"
            return {"response": {"@type": "type.googleapis.com/yandex.cloud.compute.v1.Instance",
                                 **self._view(instance, full=False)}}

        return self._operation(f"Create instance {name}", instance_id, "CreateInstance", finish,
                               ZONES[body["zoneId"]])

    def _private_address(self, subnet, wanted):
        network = ipaddress.ip_network(subnet["v4CidrBlocks"][0])
        taken = {nic["primaryV4Address"]["address"] for i in self.instances.values()
                 for nic in i["networkInterfaces"] if nic["subnetId"] == subnet["id"]}
        if wanted:
            try:
                address = ipaddress.ip_address(wanted)
            except ValueError:
                raise ApiError(3, f"Invalid IP address {wanted}") from None
            if address not in network or address in (network.network_address, network.broadcast_address):
                raise ApiError(3, f"Address {wanted} is not in subnet {subnet['id']} {network}")
            if wanted in taken:
                raise ApiError(6, f"Address {wanted} is already allocated")
            return wanted
        # Yandex reserves the first addresses of a subnet (.1 gateway, .2 DNS).
        for host in list(network.hosts())[20:]:
            if str(host) not in taken:
                return str(host)
        raise ApiError(9, f"No free addresses in subnet {subnet['id']}")

    def _delete(self, instance_id):
        instance = self._instance(instance_id)
        if instance["status"] == "DELETING":
            raise ApiError(9, f"Instance {instance_id} is already being deleted")
        instance["status"] = "DELETING"

        def finish():
            gone = self.instances.pop(instance_id)
            disk = gone["bootDisk"]
            if disk["autoDelete"]:
                self.disks.pop(disk["diskId"], None)
            for nic in gone["networkInterfaces"]:
                nat = nic["primaryV4Address"].get("oneToOneNat")
                if nat:
                    self.public_pool.append(nat["address"])
            return {"response": {"@type": "type.googleapis.com/google.protobuf.Empty"}}

        return self._operation(f"Delete instance {instance_id}", instance_id, "DeleteInstance",
                               finish, instance_id[:3])

    def _power(self, instance_id, verb):
        instance = self._instance(instance_id)
        allowed = {"start": ("STOPPED",), "stop": ("RUNNING",), "restart": ("RUNNING",)}[verb]
        if instance["status"] not in allowed:
            raise ApiError(9, f"Instance {instance_id} is {instance['status']}: cannot {verb} it")
        instance["status"] = {"start": "STARTING", "stop": "STOPPING", "restart": "RESTARTING"}[verb]

        def finish():
            instance["status"] = "STOPPED" if verb == "stop" else "RUNNING"
            return {"response": {"@type": "type.googleapis.com/yandex.cloud.compute.v1.Instance",
                                 **self._view(instance, full=False)}}

        kind = {"start": "StartInstance", "stop": "StopInstance", "restart": "RestartInstance"}[verb]
        return self._operation(f"{verb.capitalize()} instance", instance_id, kind, finish,
                               instance_id[:3])


def _handler(fake):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            request_id = str(uuid.uuid4())
            try:
                status, body = 200, fake.handle(self.command, self.path, self.headers, raw)
            except ApiError as exc:
                status = HTTP_OF_CODE.get(exc.code, 500)
                body = {"code": exc.code, "message": exc.message, "details": [
                    *exc.extra_details,
                    {"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": request_id},
                ]}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Request-Id", request_id)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PATCH = _answer

    return Handler
