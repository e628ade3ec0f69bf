"""A fake of the Yandex Cloud REST API (IAM, Compute, VPC, Operations) and of a VM's metadata
service, on loopback: the tests' cloud, and the API of the lab's emulated Yandex Cloud
(lab/yandex/cloud.py), whose `machines` make its instances and networks real lab hosts and
bridges (without them, instances are records only).

It follows the published API definitions (yandex-cloud/cloudapi protos, yandex-cloud/docs; see
rules.py for each rule and its source), so that a client that passes here talks to the real
API the same way:
- every request is checked against its message's table in rules.py (types, unknown fields,
  required, lengths, patterns, values, sizes, map keys, oneofs) and an instance's resources
  against the docs' platform table; violations are INVALID_ARGUMENT naming the JSON field;
- every call but the token exchange needs a live IAM token; tokens expire; the exchange checks
  a service account JWT's PS256 signature, claims and lifetime, or a registered OAuth token;
- int64 fields come back as JSON strings; an instance's metadata is left out of lists;
- mutating calls answer an Operation (metadata and response types as the protos' operation
  options say: Stop and Restart answer google.protobuf.Empty, Start the Instance) that is not
  done on the first poll; a failed operation is done with an `error`;
- lists come in small pages with nextPageToken; errors carry {code, message, details:
  [RequestInfo]} with the HTTP status the docs give each gRPC code;
- an Idempotency-Key seen before gives the same Operation, not a second resource.

Resources: instances (with disks, NICs, one-to-one NAT from a pool of public addresses or a
reserved address, placement), disks, images, zones, placement groups, networks, subnets,
gateways, route tables, security groups and reserved external addresses.

Where the sources are silent the fake chooses, and says so where it does; in short:
- names are unique per folder and kind: a second one is ALREADY_EXISTS (6);
- deleting what is still used (a network with subnets, route tables or security groups; a
  subnet, security group, placement group or address an instance uses; a route table a subnet
  uses; a gateway a route uses) is FAILED_PRECONDITION (9), as is a full spread group;
- overlapping subnets of one network are INVALID_ARGUMENT (3); unknown references (subnet,
  image, network, ...) are NOT_FOUND (5); things the fake does not model (snapshots,
  filesystems, GPU clusters, KMS keys, internal addresses, ...) are NOT_FOUND or UNIMPLEMENTED;
- an Idempotency-Key reused for another request is INVALID_ARGUMENT;
- filters: VPC lists take what their proto comment allows (name="..."); other lists only
  name="..." (anything else is UNIMPLEMENTED here, though the real API has more);
- a resource exists as soon as its create is accepted; a delete takes effect when its
  operation is done; networks get no default security group.

Tests steer it directly: register keys, inject errors, lose responses, read the request log.
One server answers for all API hosts (the paths do not overlap) and, when asked, for the
metadata service.
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import ipaddress
import itertools
import json
import re
import secrets
import string
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from lab.yandex import rules
from lab.yandex.rules import ApiError

__all__ = ["FOLDER", "ApiError", "FakeYandex"]

FOLDER = "b1gfake0folder000001"
JWT_AUDIENCE = "https://iam.api.cloud.yandex.net/iam/v1/tokens"
GB = 1024**3
# Zone -> the prefix of ids made there (instances, disks; subnets have their own).
ZONES = {"ru-central1-a": "fhm", "ru-central1-b": "epd", "ru-central1-d": "fv4"}
SUBNET_PREFIXES = {"ru-central1-a": "e9b", "ru-central1-b": "e2l", "ru-central1-d": "fl8"}
DISK_TYPES = {"network-hdd", "network-ssd", "network-ssd-nonreplicated"}
# yandex-cloud/docs en/_includes/errors-handling.md@2116527b: gRPC code -> HTTP status.
HTTP_OF_CODE = {1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409,
                11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401}
# yandex-cloud/docs en/_includes/compute-limits.md@0644d4ab: "Maximum number of VMs in a single
# placement group | 5" (every platform); the fake applies it to spread groups.
PLACEMENT_GROUP_LIMIT = 5
EMPTY = {"@type": "type.googleapis.com/google.protobuf.Empty"}
ID = r"([^/:]+)"


@dataclass(frozen=True)
class Kind:
    """A resource with Create, Get, List and Delete (and maybe Update) under one collection."""

    api: str  # "compute" or "vpc"
    collection: str  # the URL segment and the list's field: "routeTables"
    name: str  # "RouteTable"
    plural: str  # "RouteTables", as in ListRouteTablesRequest
    prefix: str  # of the ids the fake makes
    updatable: bool = False

    @property
    def attr(self):
        """The suffix of the fake's methods for this kind: route_tables."""
        return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), self.collection)

    @property
    def id_field(self):
        return self.name[0].lower() + self.name[1:] + "Id"

    def type_url(self, message):
        return f"type.googleapis.com/yandex.cloud.{self.api}.v1.{message}"


KINDS = {k.collection: k for k in (
    Kind("vpc", "networks", "Network", "Networks", "enp"),
    Kind("vpc", "subnets", "Subnet", "Subnets", "e9b", updatable=True),
    Kind("vpc", "gateways", "Gateway", "Gateways", "enp"),
    Kind("vpc", "routeTables", "RouteTable", "RouteTables", "enp", updatable=True),
    Kind("vpc", "securityGroups", "SecurityGroup", "SecurityGroups", "enp"),
    Kind("vpc", "addresses", "Address", "Addresses", "e9b"),
    Kind("compute", "placementGroups", "PlacementGroup", "PlacementGroups", "fd8"),
)}


class PlainError(Exception):
    """A non-API answer (the metadata service's): an HTTP status and a line of text."""

    def __init__(self, status, text):
        super().__init__(text)
        self.status, self.text = status, text


def _id(prefix="fhm"):
    return prefix + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(17))


def _now_rfc3339(offset=0.0):
    stamp = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
    # Yandex writes nanoseconds.
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond:06d}123Z"


def _b64url_decode(part):
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _as_json(value):
    """A checked request's part as the API writes it back: int64 as strings."""
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _quota(subject, description):
    return ApiError(8, f"Quota limit {subject} exceeded", [{
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{"subject": subject, "description": description}]}])


class FakeYandex:
    """The cloud's state, and the HTTP server in front of it."""

    def __init__(self, *, page_size=2, polls_until_done=2, token_lifetime=3600.0,
                 public_addresses=("127.0.77.1", "127.0.77.2", "127.0.77.3"), metadata_service=False,
                 machines=None, default_subnet=True):
        self.lock = threading.RLock()
        self.page_size = page_size
        self.polls_until_done = polls_until_done
        self.token_lifetime = token_lifetime
        self.instance_quota = 16
        self.public_pool = list(public_addresses)  # free public addresses, handed out in order
        self.metadata_service = metadata_service  # answer a VM's token requests (see below)
        # What makes instances real (lab/yandex/cloud.py: lab hosts on lab networks), or None.
        # Its jobs run beside the API; an operation is done when its job is.
        self.machines = machines
        self.keys = {}  # key id -> (service account id, public key)
        self.oauth_tokens = set()
        self.tokens = {}  # IAM token -> expiry (time.time())
        self.instances, self.disks, self.operations = {}, {}, {}
        self.store = {collection: {} for collection in KINDS}
        self.networks, self.subnets = self.store["networks"], self.store["subnets"]
        self.gateways, self.route_tables = self.store["gateways"], self.store["routeTables"]
        self.security_groups, self.addresses = self.store["securityGroups"], self.store["addresses"]
        self.placement_groups = self.store["placementGroups"]
        self.deleting = set()  # ids whose delete operation is not done yet
        self.idempotency = {}  # key -> (request fingerprint, operation id)
        self.injected = []  # [method, path regex, status code, message, times, lose]
        self.failing_operations = []  # [(code, message)] for the next instance creates
        self.requests = []  # (method, path, headers, body) of every call
        if default_subnet:  # what the tests' profiles name (the emulated cloud makes its own)
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
        self.routes = self._routes()
        self.server = None

    # --- what tests call -----------------------------------------------------------------------

    def start(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add_key(self, key_id, service_account_id, public_key_pem):
        self.keys[key_id] = (service_account_id, serialization.load_pem_public_key(public_key_pem))

    def add_network(self, name):
        """A network of the folder, made at once (no operation); its id."""
        with self.lock:
            network_id = _id("enp")
            self.networks[network_id] = self._resource(network_id, {"name": name})
            return network_id

    def add_subnet(self, name, zone, cidr, network_id=None):
        """A subnet made at once, in network_id or else the folder's network `default` (made
        if missing, as Yandex makes one in a new folder); its id."""
        with self.lock:
            if network_id is None:
                found = [n for n in self.networks.values() if n["name"] == "default"]
                network_id = found[0]["id"] if found else self.add_network("default")
            self._check_overlaps(network_id, [cidr])
            subnet_id = _id(SUBNET_PREFIXES[zone])
            self.subnets[subnet_id] = self._resource(subnet_id, {"name": name}, networkId=network_id,
                                                     zoneId=zone, v4CidrBlocks=[cidr])
            return subnet_id

    def add_address(self, name, zone):
        """A reserved external address, made at once from the public pool: (id, address)."""
        with self.lock:
            address_id = _id("e9b")
            self.addresses[address_id] = self._resource(
                address_id, {"name": name}, **self._external_address(self.public_pool.pop(0), zone))
            return address_id, self.addresses[address_id]["externalIpv4Address"]["address"]

    def inject(self, method, path, code, message, *, times=1, lose=False):
        """The next `times` calls matching answer this error; with lose=True the call is carried
        out first and only its answer is lost (a gateway timeout after the work was done)."""
        with self.lock:
            self.injected.append([method, re.compile(path), code, message, times, lose])

    def fail_next_operation(self, code, message):
        """The next instance create's operation ends with this error (the VM left in ERROR)."""
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
            if path.startswith("/computeMetadata/"):
                return self._metadata(method, path, headers)
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

    def _issue_token(self):
        token = "t1." + secrets.token_urlsafe(32)
        self.tokens[token] = time.time() + self.token_lifetime
        return token

    def _iam_token(self, body):
        request = rules.validate("CreateIamTokenRequest", body)
        if "yandexPassportOauthToken" in request:
            if request["yandexPassportOauthToken"] not in self.oauth_tokens:
                raise ApiError(16, "The OAuth token is invalid")
        else:
            self._check_jwt(request["jwt"])
        return {"iamToken": self._issue_token(), "expiresAt": _now_rfc3339(self.token_lifetime)}

    def _metadata(self, method, path, headers):
        """The metadata service of a VM with a service account, as the driver asks it: yandex-cloud/
        docs en/compute/operations/vm-connect/auth-inside-vm.md@0423c802 (`curl --header
        Metadata-Flavor:Google http://169.254.169.254/computeMetadata/v1/instance/service-accounts/
        default/token` -> {"access_token", "expires_in", "token_type": "Bearer"}). Without the
        header it refuses with 403, as Google Compute Engine's does (the Yandex docs do not say)."""
        if not self.metadata_service or method != "GET" or \
                path != "/computeMetadata/v1/instance/service-accounts/default/token":
            raise PlainError(404, "Not Found")
        if headers.get("Metadata-Flavor") != "Google":
            raise PlainError(403, "Missing required header: Metadata-Flavor: Google")
        return {"access_token": self._issue_token(), "expires_in": int(self.token_lifetime),
                "token_type": "Bearer"}

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

    def _routes(self):
        """[(method, path regex, handler(match, query, body, idempotency key))], from the
        protos' google.api.http options."""
        def mutating(request, action):
            return lambda m, q, b, key: self._idempotent(key, (request, m.groups(), b),
                                                         lambda: action(m, b))

        routes = [
            ("GET", rf"/operations/{ID}", lambda m, q, b, k: self._poll(m[1])),
            ("GET", r"/compute/v1/instances", lambda m, q, b, k: self._list_instances(q)),
            ("POST", r"/compute/v1/instances", mutating("create", lambda m, b: self._create_instance(b))),
            ("GET", rf"/compute/v1/instances/{ID}", lambda m, q, b, k: self._get_instance(m[1], q)),
            ("DELETE", rf"/compute/v1/instances/{ID}",
             mutating("delete", lambda m, b: self._delete_instance(m[1]))),
            ("POST", rf"/compute/v1/instances/{ID}:(start|stop|restart)",
             mutating("power", lambda m, b: self._power(m[1], m[2], b))),
            ("GET", rf"/compute/v1/instances/{ID}:serialPortOutput",
             lambda m, q, b, k: self._serial_port_output(m[1], q)),
            ("GET", r"/compute/v1/disks",
             lambda m, q, b, k: self._list_plain("ListDisksRequest", self.disks, q, "disks")),
            ("GET", rf"/compute/v1/disks/{ID}", lambda m, q, b, k: self._get_disk(m[1])),
            ("GET", r"/compute/v1/zones", lambda m, q, b, k: self._list_zones(q)),
            ("GET", r"/compute/v1/images",
             lambda m, q, b, k: self._list_plain("ListImagesRequest", self.images, q, "images")),
            ("GET", r"/compute/v1/images:latestByFamily", lambda m, q, b, k: self._latest_image(q)),
            ("GET", rf"/compute/v1/images/{ID}", lambda m, q, b, k: self._get_image(m[1])),
            ("GET", rf"/compute/v1/placementGroups/{ID}/instances",
             lambda m, q, b, k: self._placement_group_instances(m[1], q)),
            ("GET", rf"/vpc/v1/networks/{ID}/subnets", lambda m, q, b, k: self._network_subnets(m[1], q)),
        ]
        for kind in KINDS.values():
            base = f"/{kind.api}/v1/{kind.collection}"
            routes += [
                ("GET", base, lambda m, q, b, k, kind=kind: self._list(kind, q)),
                ("POST", base,
                 mutating(f"create {kind.name}", lambda m, b, kind=kind: self._create(kind, b))),
                ("GET", rf"{base}/{ID}", lambda m, q, b, k, kind=kind: self._get(kind, m[1])),
                ("DELETE", rf"{base}/{ID}",
                 mutating(f"delete {kind.name}", lambda m, b, kind=kind: self._delete(kind, m[1]))),
            ]
            if kind.updatable:
                routes.append(("PATCH", rf"{base}/{ID}", mutating(
                    f"update {kind.name}", lambda m, b, kind=kind: self._update(kind, m[1], b))))
        return [(method, re.compile(path), handler) for method, path, handler in routes]

    def _route(self, method, path, query, body, idempotency_key):
        for route_method, pattern, handler in self.routes:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                return handler(match, query, body, idempotency_key)
        raise ApiError(5, f"Not Found: {method} {path}")

    # --- lists ---------------------------------------------------------------------------------

    @staticmethod
    def _filtered(items, request):
        """Items whose name the filter names. VPC filters were checked against their grammar by
        rules.py; the fake takes name="..." only (the compute lists take more in the real API)."""
        text = request.get("filter")
        if not text:
            return items
        match = re.fullmatch(r"""\s*name\s*=\s*(?:"([^"]*)"|'([^']*)'|([^"'\s]+))\s*""", text)
        if not match:
            raise ApiError(12, f'The fake filters on name="..." only, not {text}')
        name = next(g for g in match.groups() if g is not None)
        return [i for i in items if i.get("name") == name]

    def _page(self, items, request, field):
        size = min(request.get("pageSize") or 100, self.page_size)
        start = 0
        if request.get("pageToken"):
            try:
                start = int(base64.b64decode(request["pageToken"]).decode().removeprefix("offset:"))
            except ValueError:
                raise ApiError(3, "Request validation error: pageToken: not a token of this list") from None
        page = {field: copy.deepcopy(items[start:start + size])}
        if start + size < len(items):
            page["nextPageToken"] = base64.b64encode(f"offset:{start + size}".encode()).decode()
        return page

    def _list_plain(self, message, store, query, field):
        request = rules.query(message, query)
        items = [i for i in store.values() if i["folderId"] == request.get("folderId")]
        return self._page(self._filtered(items, request), request, field)

    def _list_zones(self, query):
        request = rules.query("ListZonesRequest", query)
        zones = [{"id": z, "regionId": "ru-central1", "status": "UP"} for z in ZONES]
        return self._page(zones, request, "zones")

    # --- images and disks ----------------------------------------------------------------------

    def _get_image(self, image_id):
        rules.validate("GetImageRequest", {"imageId": image_id})
        if image_id not in self.images:
            raise ApiError(5, f"Image {image_id} not found")
        return copy.deepcopy(self.images[image_id])

    def _latest_image(self, query):
        request = rules.query("GetImageLatestByFamilyRequest", query)
        family = [i for i in self.images.values()
                  if i["folderId"] == request.get("folderId") and i["family"] == request.get("family")]
        if not family:
            raise ApiError(5, f"Image family {request.get('family')} not found")
        return copy.deepcopy(max(family, key=lambda i: i["createdAt"]))

    def _get_disk(self, disk_id):
        rules.validate("GetDiskRequest", {"diskId": disk_id})
        if disk_id not in self.disks:
            raise ApiError(5, f"Disk {disk_id} not found")
        return copy.deepcopy(self.disks[disk_id])

    # --- operations ----------------------------------------------------------------------------

    def _idempotent(self, key, request, action):
        fingerprint = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        if key and key in self.idempotency:
            seen, operation_id = self.idempotency[key]
            if seen != fingerprint:
                # The docs say only that a repeated key answers the first Operation.
                raise ApiError(3, f"Idempotency key {key} was used for another request")
            return self._operation_view(operation_id)
        operation = action()
        if key:
            self.idempotency[key] = (fingerprint, operation["id"])
        return self._operation_view(operation["id"])

    def _operation(self, description, metadata_type, metadata, finish, prefix, *, job=None):
        """An Operation that is done at the polls_until_done-th poll (and once `job`, a Future of
        the machines', is done), when finish() gives its {"response": ...} or {"error": ...}."""
        operation = {
            "id": _id(prefix), "description": description, "createdAt": _now_rfc3339(),
            "createdBy": "ajefakeserviceaccount", "modifiedAt": _now_rfc3339(), "done": False,
            "metadata": {"@type": metadata_type, **metadata},
        }
        self.operations[operation["id"]] = {"operation": operation, "polls": self.polls_until_done,
                                            "finish": finish, "job": job}
        return operation

    def _operation_view(self, operation_id):
        return copy.deepcopy(self.operations[operation_id]["operation"])

    def _poll(self, operation_id):
        rules.validate("GetOperationRequest", {"operationId": operation_id})
        if operation_id not in self.operations:
            raise ApiError(5, f"Operation {operation_id} not found")
        entry = self.operations[operation_id]
        operation = entry["operation"]
        if not operation["done"]:
            entry["polls"] -= 1
            if entry["polls"] <= 0 and (entry["job"] is None or entry["job"].done()):
                operation["done"] = True
                operation["modifiedAt"] = _now_rfc3339()
                operation.update(entry["finish"]())
                if self.machines:
                    self.machines.network_changed(self)
        return copy.deepcopy(operation)

    # --- what all resources share ----------------------------------------------------------------

    @staticmethod
    def _check_folder(folder_id):
        if folder_id != FOLDER:
            raise ApiError(7, f"Permission denied to folder {folder_id or '(none)'}")

    @staticmethod
    def _zone(zone_id):
        # The protos give zone_id no pattern or enum; the zones are ZoneService.List's.
        if zone_id not in ZONES:
            raise ApiError(3, f"Zone {zone_id} is not one of {', '.join(ZONES)}")
        return zone_id

    @staticmethod
    def _resource(resource_id, request, **fields):
        return {"id": resource_id, "folderId": FOLDER, "createdAt": _now_rfc3339(),
                "name": request.get("name", ""), "description": request.get("description", ""),
                "labels": dict(request.get("labels", {})), **fields}

    def _find(self, store, kind_name, resource_id, where=None):
        """A resource of the folder by id, or NOT_FOUND naming it (and the field that named it)."""
        resource = store.get(resource_id)
        if resource is None or resource["folderId"] != FOLDER:
            raise ApiError(5, f"{kind_name} {resource_id} not found" + (f" ({where})" if where else ""))
        return resource

    def _check_unique(self, store, kind_name, name, resource_id=None):
        # The VPC protos say a name "must be unique within the folder" (placement_group.proto: "is
        # unique"), not what the API answers to a second one: the fake says ALREADY_EXISTS, and
        # does so for instances too, as it always has.
        if name and any(r["name"] == name and r["id"] != resource_id and r["folderId"] == FOLDER
                        for r in store.values()):
            raise ApiError(6, f"{kind_name} with name {name} already exists")

    def _list(self, kind, query):
        request = rules.query(f"List{kind.plural}Request", query)
        items = [r for r in self.store[kind.collection].values() if r["folderId"] == request.get("folderId")]
        return self._page(self._filtered(items, request), request, kind.collection)

    def _get(self, kind, resource_id):
        rules.validate(f"Get{kind.name}Request", {kind.id_field: resource_id})
        return copy.deepcopy(self._find(self.store[kind.collection], kind.name, resource_id))

    def _create(self, kind, body):
        request = rules.validate(f"Create{kind.name}Request", body)
        self._check_folder(request.get("folderId"))
        store = self.store[kind.collection]
        self._check_unique(store, kind.name, request.get("name", ""))
        fields, prefix = getattr(self, f"_make_{kind.attr}")(request)
        resource_id = _id(prefix)
        resource = store[resource_id] = self._resource(resource_id, request, **fields)
        return self._operation(
            f"Create {kind.name} {resource['name']}".rstrip(), kind.type_url(f"Create{kind.name}Metadata"),
            {kind.id_field: resource_id},
            lambda: {"response": {"@type": kind.type_url(kind.name), **copy.deepcopy(resource)}}, prefix)

    def _delete(self, kind, resource_id):
        rules.validate(f"Delete{kind.name}Request", {kind.id_field: resource_id})
        store = self.store[kind.collection]
        resource = self._find(store, kind.name, resource_id)
        if resource_id in self.deleting:
            raise ApiError(9, f"{kind.name} {resource_id} is already being deleted")
        reason = getattr(self, f"_users_of_{kind.attr}")(resource)
        if reason:
            raise ApiError(9, f"{kind.name} {resource['name'] or resource_id} is in use: {reason}")
        self.deleting.add(resource_id)

        def finish():
            self.deleting.discard(resource_id)
            gone = store.pop(resource_id)
            if kind.collection == "addresses":
                self.public_pool.append(gone["externalIpv4Address"]["address"])
            return {"response": dict(EMPTY)}

        return self._operation(f"Delete {kind.name} {resource_id}",
                               kind.type_url(f"Delete{kind.name}Metadata"), {kind.id_field: resource_id},
                               finish, kind.prefix)

    def _update(self, kind, resource_id, body):
        request = rules.validate(f"Update{kind.name}Request", {**(body or {}), kind.id_field: resource_id})
        store = self.store[kind.collection]
        resource = self._find(store, kind.name, resource_id)
        fields = [f for f in rules.MESSAGES[f"Update{kind.name}Request"].types
                  if f not in (kind.id_field, "updateMask")]
        if "updateMask" in request:
            masked = [p.strip() for p in request["updateMask"].split(",") if p.strip()]
            for path in masked:
                if path not in fields:
                    raise ApiError(3, f"Request validation error: updateMask: {path} is not a field of "
                                      f"Update{kind.name}Request")
        else:
            masked = [f for f in fields if f in request]
        # A masked field left out of the body is reset to its default, as a FieldMask means.
        changes = {f: request.get(f) for f in masked}
        if changes.get("name"):
            self._check_unique(store, kind.name, changes["name"], resource_id)
        getattr(self, f"_change_{kind.attr}")(resource, changes)
        for name in ("name", "description", "labels"):
            if name in changes:
                resource[name] = changes[name] or ({} if name == "labels" else "")
        return self._operation(
            f"Update {kind.name} {resource_id}", kind.type_url(f"Update{kind.name}Metadata"),
            {kind.id_field: resource_id},
            lambda: {"response": {"@type": kind.type_url(kind.name), **copy.deepcopy(resource)}}, kind.prefix)

    def _in_network(self, collection, network_id):
        return [r for r in self.store[collection].values() if r.get("networkId") == network_id]

    def _nics(self):
        return [(i, nic) for i in self.instances.values() for nic in i["networkInterfaces"]]

    # --- networks ------------------------------------------------------------------------------

    def _make_networks(self, request):
        return {}, "enp"

    def _users_of_networks(self, network):
        # Not in the sources: the fake refuses, as for every resource still used by another.
        users = [f"{kind} {r['name'] or r['id']}" for collection, kind in
                 (("subnets", "subnet"), ("routeTables", "route table"), ("securityGroups", "security group"))
                 for r in self._in_network(collection, network["id"])]
        return ", ".join(users)

    def _network_subnets(self, network_id, query):
        request = rules.query("ListNetworkSubnetsRequest", {**query, "networkId": network_id})
        self._find(self.networks, "Network", network_id)
        return self._page(self._in_network("subnets", network_id), request, "subnets")

    # --- subnets -------------------------------------------------------------------------------

    def _check_overlaps(self, network_id, blocks, subnet_id=None):
        """No two subnets of a network share an address (not in the sources: the fake's choice,
        INVALID_ARGUMENT naming both)."""
        seen = []
        for subnet in self._in_network("subnets", network_id):
            if subnet["id"] != subnet_id:
                seen += [(ipaddress.ip_network(b), f"subnet {subnet['name'] or subnet['id']}")
                         for b in subnet["v4CidrBlocks"]]
        for text in blocks:
            block = ipaddress.ip_network(text)
            for other, owner in seen:
                if block.overlaps(other):
                    raise ApiError(3, f"v4CidrBlocks: {block} overlaps {other} of {owner} in network "
                                      f"{network_id}")
            seen.append((block, "this request"))

    def _route_table_of(self, network_id, route_table_id):
        table = self._find(self.route_tables, "RouteTable", route_table_id, "routeTableId")
        if table["networkId"] != network_id:
            raise ApiError(3, f"Route table {route_table_id} is in network {table['networkId']}, "
                              f"the subnet in {network_id}")
        return table

    def _make_subnets(self, request):
        network = self._find(self.networks, "Network", request.get("networkId"), "networkId")
        zone = self._zone(request.get("zoneId"))
        blocks = request.get("v4CidrBlocks", [])
        self._check_overlaps(network["id"], blocks)
        fields = {"networkId": network["id"], "zoneId": zone, "v4CidrBlocks": list(blocks)}
        if request.get("routeTableId"):
            fields["routeTableId"] = self._route_table_of(network["id"], request["routeTableId"])["id"]
        if "dhcpOptions" in request:
            fields["dhcpOptions"] = request["dhcpOptions"]
        return fields, SUBNET_PREFIXES[zone]

    def _change_subnets(self, subnet, changes):
        if changes.get("routeTableId"):
            self._route_table_of(subnet["networkId"], changes["routeTableId"])
        if "v4CidrBlocks" in changes:
            self._check_overlaps(subnet["networkId"], changes["v4CidrBlocks"] or [], subnet["id"])
        for name in ("routeTableId", "dhcpOptions", "v4CidrBlocks"):
            if name in changes:
                if changes[name]:
                    subnet[name] = changes[name]
                else:
                    subnet.pop(name, None)

    def _users_of_subnets(self, subnet):
        return ", ".join(f"instance {i['name'] or i['id']}" for i, nic in self._nics()
                         if nic["subnetId"] == subnet["id"])

    # --- gateways and route tables -------------------------------------------------------------

    def _make_gateways(self, request):
        return ({"sharedEgressGateway": {}} if "sharedEgressGatewaySpec" in request else {}), "enp"

    def _users_of_gateways(self, gateway):
        return ", ".join(f"route table {t['name'] or t['id']}" for t in self.route_tables.values()
                         if any(r.get("gatewayId") == gateway["id"] for r in t["staticRoutes"]))

    def _static_routes(self, routes):
        for n, route in enumerate(routes):
            if route.get("gatewayId"):
                self._find(self.gateways, "Gateway", route["gatewayId"], f"staticRoutes[{n}].gatewayId")
        return [dict(r) for r in routes]

    def _make_route_tables(self, request):
        network = self._find(self.networks, "Network", request.get("networkId"), "networkId")
        routes = self._static_routes(request.get("staticRoutes", []))
        return {"networkId": network["id"], "staticRoutes": routes}, "enp"

    def _change_route_tables(self, table, changes):
        if "staticRoutes" in changes:
            table["staticRoutes"] = self._static_routes(changes["staticRoutes"] or [])

    def _users_of_route_tables(self, table):
        return ", ".join(f"subnet {s['name'] or s['id']}" for s in self.subnets.values()
                         if s.get("routeTableId") == table["id"])

    # --- security groups -----------------------------------------------------------------------

    def _make_security_groups(self, request):
        network = self._find(self.networks, "Network", request.get("networkId"), "networkId")
        group_rules = [{"id": _id("enp"), **_as_json(spec)} for spec in request.get("ruleSpecs", [])]
        return {"networkId": network["id"], "status": "ACTIVE", "rules": group_rules,
                "defaultForNetwork": False}, "enp"

    def _users_of_security_groups(self, group):
        # Not in the sources: refused while an interface uses it, like a subnet.
        return ", ".join(f"instance {i['name'] or i['id']}" for i, nic in self._nics()
                         if group["id"] in nic.get("securityGroupIds", []))

    # --- addresses -----------------------------------------------------------------------------

    @staticmethod
    def _external_address(address, zone):
        return {"externalIpv4Address": {"address": address, "zoneId": zone, "requirements": {}},
                "reserved": True, "used": False, "type": "EXTERNAL", "ipVersion": "IPV4",
                "deletionProtection": False}

    def _make_addresses(self, request):
        if "internalIpv4AddressSpec" in request:
            raise ApiError(12, "The fake reserves external addresses only")
        spec = request.get("externalIpv4AddressSpec", {})
        # zone_id is "only if address unspecified"; the fake needs it either way.
        if not spec.get("zoneId"):
            raise ApiError(3, "Request validation error: externalIpv4AddressSpec.zoneId: the fake needs "
                              "the zone")
        zone = self._zone(spec["zoneId"])
        wanted = spec.get("address")
        if wanted and wanted not in self.public_pool:
            raise ApiError(9, f"Address {wanted} is not free")
        if not self.public_pool:
            raise _quota("vpc.externalStaticAddresses.count", "No free public address is left")
        address = wanted or self.public_pool[0]
        self.public_pool.remove(address)
        fields = self._external_address(address, zone)
        fields["deletionProtection"] = bool(request.get("deletionProtection"))
        if request.get("dnsRecordSpecs"):
            fields["dnsRecords"] = _as_json(request["dnsRecordSpecs"])
        return fields, "e9b"

    def _users_of_addresses(self, address):
        if address["deletionProtection"]:
            return "its deletionProtection is on"
        ip = address["externalIpv4Address"]["address"]
        return ", ".join(f"instance {i['name'] or i['id']}" for i, nic in self._nics()
                         if nic["primaryV4Address"].get("oneToOneNat", {}).get("address") == ip)

    def _reserved_address(self, ip, zone, where):
        """The folder's reserved external address `ip`, free and in the instance's zone."""
        found = [a for a in self.addresses.values() if a["externalIpv4Address"]["address"] == ip]
        if not found:
            raise ApiError(5, f"{where}: {ip} is not a reserved address of folder {FOLDER}")
        address = found[0]
        if address["externalIpv4Address"]["zoneId"] != zone:
            raise ApiError(3, f"{where}: address {ip} is in {address['externalIpv4Address']['zoneId']}, "
                              f"the instance in {zone}")
        if address["used"] or address["id"] in self.deleting:
            raise ApiError(9, f"{where}: address {ip} is already used")
        return address

    # --- placement groups ----------------------------------------------------------------------

    def _make_placement_groups(self, request):
        if "partitionPlacementStrategy" in request:
            partitions = request["partitionPlacementStrategy"].get("partitions")
            if not partitions:
                # The proto gives no default for an unset count; the fake does not guess one.
                raise ApiError(3, "Request validation error: partitionPlacementStrategy.partitions: "
                                  "the fake needs the number of partitions")
            return {"partitionPlacementStrategy": {"partitions": str(partitions)}}, "fd8"
        return {"spreadPlacementStrategy": {}}, "fd8"

    def _members(self, group_id):
        return [i for i in self.instances.values()
                if i["placementPolicy"].get("placementGroupId") == group_id]

    def _users_of_placement_groups(self, group):
        return ", ".join(f"instance {i['name'] or i['id']}" for i in self._members(group["id"]))

    def _placement_group_instances(self, group_id, query):
        request = rules.query("ListPlacementGroupInstancesRequest", {**query, "placementGroupId": group_id})
        self._find(self.placement_groups, "PlacementGroup", group_id)
        return self._page([self._view(i, full=False) for i in self._members(group_id)], request, "instances")

    # --- instances -----------------------------------------------------------------------------

    def _instance(self, instance_id, request="GetInstanceRequest"):
        rules.validate(request, {"instanceId": instance_id})
        if instance_id not in self.instances:
            raise ApiError(5, f"Instance {instance_id} not found")
        return self.instances[instance_id]

    def _view(self, instance, full):
        if self.machines:
            self.machines.observe(instance)  # its status follows the machine's power
        shown = copy.deepcopy(instance)
        if not full:
            shown.pop("metadata", None)  # "currently omitted from response for the List request"
        return shown

    def _list_instances(self, query):
        request = rules.query("ListInstancesRequest", query)
        items = [self._view(i, full=False) for i in self.instances.values()
                 if i["folderId"] == request.get("folderId")]
        return self._page(self._filtered(items, request), request, "instances")

    def _get_instance(self, instance_id, query):
        request = rules.query("GetInstanceRequest", {**query, "instanceId": instance_id})
        return self._view(self._instance(instance_id), full=request.get("view") == "FULL")

    def _serial_port_output(self, instance_id, query):
        rules.query("GetInstanceSerialPortOutputRequest", {**query, "instanceId": instance_id})
        instance = self._instance(instance_id)
        return {"contents": self.machines.console(instance) if self.machines else ""}

    def _planned_disk(self, spec, zone, where, attached):
        """The disk an AttachedDiskSpec makes (a new dict) or attaches (an existing one)."""
        if "diskId" in spec:
            disk = self._find(self.disks, "Disk", spec["diskId"], f"{where}.diskId")
            if disk["zoneId"] != zone:
                raise ApiError(3, f"{where}.diskId: disk {disk['id']} is in {disk['zoneId']}, the instance "
                                  f"in {zone}")
            if disk["instanceIds"] or disk["id"] in attached:
                raise ApiError(9, f"{where}.diskId: disk {disk['id']} is already attached")
            attached.add(disk["id"])
            return disk
        disk_spec = spec["diskSpec"]
        where = f"{where}.diskSpec"
        type_id = disk_spec.get("typeId") or "network-hdd"
        if type_id not in DISK_TYPES:
            raise ApiError(5, f"Disk type {type_id} not found")
        for field, what in (("snapshotId", "Snapshot"), ("kmsKeyId", "KMS key")):
            if disk_spec.get(field):
                raise ApiError(5, f"{what} {disk_spec[field]} not found ({where}.{field})")
        placement = disk_spec.get("diskPlacementPolicy", {}).get("placementGroupId")
        if placement:
            raise ApiError(5, f"Disk placement group {placement} not found")
        disk = {"id": _id(ZONES[zone]), "folderId": FOLDER, "createdAt": _now_rfc3339(),
                "name": disk_spec.get("name", ""), "description": disk_spec.get("description", ""),
                "zoneId": zone, "typeId": type_id, "size": str(disk_spec["size"]),
                "blockSize": str(disk_spec.get("blockSize") or 4096), "status": "READY", "instanceIds": []}
        if disk_spec.get("imageId"):
            image = self.images.get(disk_spec["imageId"])
            if image is None:
                raise ApiError(5, f"Image {disk_spec['imageId']} not found")
            if disk_spec["size"] < int(image["minDiskSize"]):
                raise ApiError(3, f"Disk size {disk_spec['size']} is less than the image's minimum "
                                  f"{image['minDiskSize']}")
            disk["sourceImageId"] = image["id"]
        return disk

    def _planned_disks(self, request, zone):
        """[(spec, disk)] for the boot disk and the secondary ones, nothing made yet."""
        specs = [("bootDiskSpec", request["bootDiskSpec"])] + [
            (f"secondaryDiskSpecs[{n}]", s) for n, s in enumerate(request.get("secondaryDiskSpecs", []))]
        names, attached, planned = set(), set(), []
        for where, spec in specs:
            device = spec.get("deviceName")
            if device and device in names:
                # AttachedDiskSpec.device_name: "Specifies a unique serial number of your choice".
                raise ApiError(3, f"Request validation error: {where}.deviceName: \"{device}\" is used "
                                  "by another disk of the instance")
            names.add(device)
            planned.append((spec, self._planned_disk(spec, zone, where, attached)))
        return planned

    def _planned_nics(self, request, zone):
        """[(spec, subnet, address, nat)] where nat is None, "ephemeral" or a reserved Address."""
        planned, taken, indexes, reserved = [], set(), set(), set()
        for n, spec in enumerate(request["networkInterfaceSpecs"]):
            where = f"networkInterfaceSpecs[{n}]"
            subnet = self._find(self.subnets, "Subnet", spec["subnetId"], f"{where}.subnetId")
            if subnet["zoneId"] != zone:
                raise ApiError(3, f"Subnet {subnet['id']} is in zone {subnet['zoneId']}, not {zone}")
            for group_id in spec.get("securityGroupIds", []):
                group = self._find(self.security_groups, "SecurityGroup", group_id,
                                   f"{where}.securityGroupIds")
                if group["networkId"] != subnet["networkId"]:
                    raise ApiError(3, f"{where}: security group {group_id} is in network "
                                      f"{group['networkId']}, subnet {subnet['id']} in {subnet['networkId']}")
            index = spec.get("index") or str(n)
            if index in indexes:
                raise ApiError(3, f"Request validation error: {where}.index: \"{index}\" is used twice")
            indexes.add(index)
            if "primaryV6AddressSpec" in spec:
                # NetworkInterfaceSpec.primary_v6_address_spec: "IPv6 not available yet".
                raise ApiError(3, f"{where}.primaryV6AddressSpec: IPv6 is not available yet")
            v4 = spec.get("primaryV4AddressSpec", {})
            address = self._private_address(subnet, v4.get("address"), taken)
            taken.add(address)
            nat = None
            if "oneToOneNatSpec" in v4:
                nat_spec = v4["oneToOneNatSpec"]
                if nat_spec.get("ipVersion") == "IPV6":
                    raise ApiError(3, f"{where}.primaryV4AddressSpec.oneToOneNatSpec.ipVersion: IPv6 is not "
                                      "available yet")
                if nat_spec.get("address"):
                    nat = self._reserved_address(nat_spec["address"], zone,
                                                 f"{where}.primaryV4AddressSpec.oneToOneNatSpec.address")
                    if nat["id"] in reserved:
                        raise ApiError(9, f"{where}: address {nat_spec['address']} is already used")
                    reserved.add(nat["id"])
                else:
                    nat = "ephemeral"
            planned.append((spec, subnet, address, nat))
        if sum(nat == "ephemeral" for *_, nat in planned) > len(self.public_pool):
            raise ApiError(8, "Quota limit vpc.externalAddresses.count exceeded")
        return planned

    def _private_address(self, subnet, wanted, taken_here):
        blocks = [ipaddress.ip_network(b) for b in subnet.get("v4CidrBlocks", [])]
        if not blocks:
            # A subnet may be made without CIDR blocks (not required since a29b54e7).
            raise ApiError(9, f"Subnet {subnet['id']} has no IPv4 CIDR block")
        taken = taken_here | {nic["primaryV4Address"]["address"] for _, nic in self._nics()
                              if nic["subnetId"] == subnet["id"]}
        if wanted:
            try:
                address = ipaddress.ip_address(wanted)
            except ValueError:
                raise ApiError(3, f"Invalid IP address {wanted}") from None
            if not any(address in b and address not in (b.network_address, b.broadcast_address)
                       for b in blocks):
                raise ApiError(3, f"Address {wanted} is not in subnet {subnet['id']} "
                                  f"{', '.join(map(str, blocks))}")
            if wanted in taken:
                raise ApiError(6, f"Address {wanted} is already allocated")
            return wanted
        # Yandex reserves the first addresses of a subnet (.1 gateway, .2 DNS).
        for host in itertools.islice(blocks[0].hosts(), 20, None):
            if str(host) not in taken:
                return str(host)
        raise ApiError(9, f"No free addresses in subnet {subnet['id']}")

    def _placement_group(self, request):
        group_id = request.get("placementPolicy", {}).get("placementGroupId")
        if not group_id:
            return
        group = self._find(self.placement_groups, "PlacementGroup", group_id,
                           "placementPolicy.placementGroupId")
        # The docs' limit comes from when spread was the only strategy (placement-groups.md
        # @632f891f names no other); the fake does not cap partition groups.
        if "spreadPlacementStrategy" in group and len(self._members(group_id)) >= PLACEMENT_GROUP_LIMIT:
            # The docs give the limit, not the error: FAILED_PRECONDITION, since the group's state
            # refuses the VM and no wait or retry lifts it (it is a limit, not a quota).
            raise ApiError(9, f"Placement group {group['name'] or group_id} already has "
                              f"{PLACEMENT_GROUP_LIMIT} instances, its limit")

    def _unmodeled(self, request):
        """References to things the fake has none of: NOT_FOUND, as the real API would answer
        for an id it does not know."""
        if request.get("filesystemSpecs"):
            raise ApiError(5, f"Filesystem {request['filesystemSpecs'][0].get('filesystemId')} not found "
                              "(filesystemSpecs[0])")
        if request.get("gpuSettings", {}).get("gpuClusterId"):
            raise ApiError(5, f"GPU cluster {request['gpuSettings']['gpuClusterId']} not found")
        if request.get("reservedInstancePoolId"):
            raise ApiError(5, f"Reserved instance pool {request['reservedInstancePoolId']} not found")

    def _interfaces(self, nics):
        """The instance's networkInterfaces from the planned NICs (taking public addresses)."""
        interfaces = []
        for spec, subnet, address, nat in nics:
            v4_spec = spec.get("primaryV4AddressSpec", {})
            v4 = {"address": address}
            if v4_spec.get("dnsRecordSpecs"):
                v4["dnsRecords"] = _as_json(v4_spec["dnsRecordSpecs"])
            if nat == "ephemeral":
                v4["oneToOneNat"] = {"address": self.public_pool.pop(0), "ipVersion": "IPV4"}
            elif nat:
                nat["used"] = True
                v4["oneToOneNat"] = {"address": nat["externalIpv4Address"]["address"], "ipVersion": "IPV4"}
            if nat and v4_spec["oneToOneNatSpec"].get("dnsRecordSpecs"):
                v4["oneToOneNat"]["dnsRecords"] = _as_json(v4_spec["oneToOneNatSpec"]["dnsRecordSpecs"])
            interfaces.append({"index": spec.get("index") or str(len(interfaces)),
                               "macAddress": "d0:0d:" + ":".join(secrets.token_hex(1) for _ in range(4)),
                               "subnetId": subnet["id"], "primaryV4Address": v4,
                               "securityGroupIds": list(spec.get("securityGroupIds", []))})
        return interfaces

    def _create_instance(self, body):
        request = rules.validate("CreateInstanceRequest", body)
        self._check_folder(request["folderId"])
        zone = self._zone(request["zoneId"])
        platform = request["platformId"]
        rules.check_platform(platform, request["resourcesSpec"])
        self._unmodeled(request)
        disks = self._planned_disks(request, zone)
        nics = self._planned_nics(request, zone)
        self._placement_group(request)
        name = request.get("name", "")
        self._check_unique(self.instances, "Instance", name)
        if sum(i["folderId"] == FOLDER for i in self.instances.values()) >= self.instance_quota:
            raise _quota("compute.instances.count", f"The limit is {self.instance_quota}")

        # Checked: now make it.
        instance_id = _id(ZONES[zone])
        attached = []
        for spec, disk in disks:
            self.disks.setdefault(disk["id"], disk)["instanceIds"].append(instance_id)
            attached.append({"mode": spec.get("mode") if spec.get("mode") not in (None, "MODE_UNSPECIFIED")
                             else "READ_WRITE", "deviceName": spec.get("deviceName") or disk["id"],
                             "autoDelete": bool(spec.get("autoDelete")), "diskId": disk["id"]})
        interfaces = self._interfaces(nics)
        resources = request["resourcesSpec"]
        hostname = request.get("hostname")
        instance = {
            "id": instance_id, "folderId": FOLDER, "createdAt": _now_rfc3339(), "name": name,
            "description": request.get("description", ""), "labels": request.get("labels", {}),
            "zoneId": zone, "platformId": platform,
            "resources": {"memory": str(resources["memory"]), "cores": str(resources["cores"]),
                          "coreFraction": str(resources.get("coreFraction") or 100)},
            "status": "PROVISIONING", "metadata": request.get("metadata", {}),
            "bootDisk": attached[0], "networkInterfaces": interfaces,
            # CreateInstanceRequest.hostname: "If not specified, ... FQDN will be `<id>.auto.internal`.
            # Otherwise FQDN will be `<hostname>.<region_id>.internal`."
            "fqdn": f"{hostname}.ru-central1.internal" if hostname else f"{instance_id}.auto.internal",
            "schedulingPolicy": request.get("schedulingPolicy", {}),
            "networkSettings": {"type": request.get("networkSettings", {}).get("type") or "STANDARD"},
            "placementPolicy": _as_json(request.get("placementPolicy", {})),
        }
        if resources.get("gpus"):
            instance["resources"]["gpus"] = str(resources["gpus"])
        if attached[1:]:
            instance["secondaryDisks"] = attached[1:]
        if request.get("localDiskSpecs"):
            instance["localDisks"] = [{"size": str(d["size"]), "deviceName": _id("local")}
                                      for d in request["localDiskSpecs"]]
        for field in ("serviceAccountId", "metadataOptions", "serialPortSettings", "gpuSettings",
                      "maintenancePolicy", "maintenanceGracePeriod", "application"):
            if field in request:
                instance[field] = _as_json(request[field])
        self.instances[instance_id] = instance
        failure = self.failing_operations.pop(0) if self.failing_operations else None
        if self.machines and not failure:
            self.machines.network_changed(self)  # a public address may open the way out
        job = self.machines.create(self, instance) if self.machines and not failure else None

        def finish():
            if job and job.exception():
                instance["status"] = "ERROR"
                return {"error": {"code": 13, "message": f"the VM did not start: {job.exception()}",
                                  "details": []}}
            if failure:
                # A failed create leaves the instance in ERROR: the caller must clean it up.
                instance["status"] = "ERROR"
                return {"error": {"code": failure[0], "message": failure[1], "details": []}}
            instance["status"] = "RUNNING"
            return {"response": {"@type": "type.googleapis.com/yandex.cloud.compute.v1.Instance",
                                 **self._view(instance, full=False)}}

        return self._operation(f"Create instance {name}",
                               "type.googleapis.com/yandex.cloud.compute.v1.CreateInstanceMetadata",
                               {"instanceId": instance_id}, finish, ZONES[zone], job=job)

    def _delete_instance(self, instance_id):
        instance = self._instance(instance_id, "DeleteInstanceRequest")
        if instance["status"] == "DELETING":
            raise ApiError(9, f"Instance {instance_id} is already being deleted")
        instance["status"] = "DELETING"
        job = self.machines.delete(instance) if self.machines else None

        def finish():
            gone = self.instances.pop(instance_id)
            for disk in [gone["bootDisk"], *gone.get("secondaryDisks", [])]:
                if disk["autoDelete"]:
                    self.disks.pop(disk["diskId"], None)
                elif disk["diskId"] in self.disks:
                    self.disks[disk["diskId"]]["instanceIds"].remove(instance_id)
            for nic in gone["networkInterfaces"]:
                nat = nic["primaryV4Address"].get("oneToOneNat")
                if nat:
                    reserved = [a for a in self.addresses.values()
                                if a["externalIpv4Address"]["address"] == nat["address"]]
                    if reserved:
                        reserved[0]["used"] = False
                    else:
                        self.public_pool.append(nat["address"])
            return {"response": dict(EMPTY)}

        return self._operation(f"Delete instance {instance_id}",
                               "type.googleapis.com/yandex.cloud.compute.v1.DeleteInstanceMetadata",
                               {"instanceId": instance_id}, finish, instance_id[:3], job=job)

    def _power(self, instance_id, verb, body):
        request = f"{verb.capitalize()}InstanceRequest"
        rules.validate(request, {**(body or {}), "instanceId": instance_id})
        instance = self._instance(instance_id, request)
        allowed = {"start": ("STOPPED",), "stop": ("RUNNING",), "restart": ("RUNNING",)}[verb]
        if instance["status"] not in allowed:
            # Not in the sources: a power change in the wrong state is FAILED_PRECONDITION here.
            raise ApiError(9, f"Instance {instance_id} is {instance['status']}: cannot {verb} it")
        instance["status"] = {"start": "STARTING", "stop": "STOPPING", "restart": "RESTARTING"}[verb]
        job = self.machines.power(instance, verb) if self.machines else None

        def finish():
            instance["status"] = "STOPPED" if verb == "stop" else "RUNNING"
            # The operation options: Start answers the Instance, Stop and Restart Empty.
            if verb == "start":
                return {"response": {"@type": "type.googleapis.com/yandex.cloud.compute.v1.Instance",
                                     **self._view(instance, full=False)}}
            return {"response": dict(EMPTY)}

        kind = {"start": "StartInstance", "stop": "StopInstance", "restart": "RestartInstance"}[verb]
        return self._operation(f"{verb.capitalize()} instance",
                               f"type.googleapis.com/yandex.cloud.compute.v1.{kind}Metadata",
                               {"instanceId": instance_id}, finish, instance_id[:3], job=job)


def _handler(fake):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out apart: no 40 ms wait on keep-alive

        def log_message(self, *args):  # keep test output quiet
            pass

        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            request_id = str(uuid.uuid4())
            content_type = "application/json"
            try:
                status, body = 200, fake.handle(self.command, self.path, self.headers, raw)
                data = json.dumps(body).encode()
            except ApiError as exc:
                status = HTTP_OF_CODE.get(exc.code, 500)
                data = json.dumps({"code": exc.code, "message": exc.message, "details": [
                    *exc.extra_details,
                    {"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": request_id},
                ]}).encode()
            except PlainError as exc:
                status, content_type, data = exc.status, "text/plain", exc.text.encode() + b"\n"
            except Exception as exc:  # a bug of the fake: say so rather than drop the connection
                status = 500
                data = json.dumps({"code": 13, "message": f"fake bug: {type(exc).__name__}: {exc}",
                                   "details": []}).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Request-Id", request_id)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PATCH = _answer

    return Handler
