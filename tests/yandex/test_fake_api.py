"""The fake Yandex Cloud API itself, over HTTP: requests the real API refuses (each with the rule
and its source, and checked to pass once that rule is taken out), requests it accepts that the
fake once refused, and the life of each resource."""

from __future__ import annotations

import copy
import re
from dataclasses import replace

import pytest
import requests

from lab.yandex import rules
from lab.yandex.fake_api import FOLDER, FakeYandex

GB = 1024**3
OAUTH = "y0_fake_oauth_for_the_fake"
EMPTY = "type.googleapis.com/google.protobuf.Empty"
COMPUTE = "type.googleapis.com/yandex.cloud.compute.v1"
INSTANCES = "/compute/v1/instances"
DROP = object()


class Api:
    """A client of the fake with an IAM token, and the ids a request needs."""

    def __init__(self, fake):
        self.fake = fake
        fake.oauth_tokens.add(OAUTH)
        answer = requests.post(f"{fake.url}/iam/v1/tokens", json={"yandexPassportOauthToken": OAUTH},
                               timeout=10)
        self.session = requests.Session()
        self.session.headers["Authorization"] = "Bearer " + answer.json()["iamToken"]
        self.image_id = max((i for i in fake.images.values() if i["family"] == "debian-12"),
                            key=lambda i: i["createdAt"])["id"]
        self.subnet_id = next(iter(fake.subnets))
        self.network_id = fake.subnets[self.subnet_id]["networkId"]

    def call(self, method, path, body=None, **params):
        return self.session.request(method, self.fake.url + path, json=body, params=params or None,
                                    timeout=10)

    def ok(self, method, path, body=None, **params):
        answer = self.call(method, path, body, **params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def refused(self, method, path, body=None, **params):
        answer = self.call(method, path, body, **params)
        assert answer.status_code != 200, answer.text
        return answer.status_code, answer.json()

    def done(self, method, path, body=None):
        """A mutating call, polled: the final Operation (the first answer is never done)."""
        operation = self.ok(method, path, body)
        assert operation["done"] is False
        for _ in range(10):
            operation = self.ok("GET", f"/operations/{operation['id']}")
            if operation["done"]:
                assert "error" not in operation, operation
                return operation
        raise AssertionError(f"operation {operation['id']} never done")

    def make(self, collection, body, service="vpc"):
        """Create, waited for: the resource."""
        response = self.done("POST", f"/{service}/v1/{collection}", {"folderId": FOLDER, **body})["response"]
        return {k: v for k, v in response.items() if k != "@type"}


@pytest.fixture
def api(fake):
    return Api(fake)


def instance_body(api, changes=None):
    """A CreateInstanceRequest the API takes, with changes {dotted path: value or DROP}."""
    body = {
        "folderId": FOLDER, "name": "db1", "zoneId": "ru-central1-a", "platformId": "standard-v3",
        "resourcesSpec": {"memory": str(2 * GB), "cores": "2", "coreFraction": "100"},
        "bootDiskSpec": {"autoDelete": True, "diskSpec": {"size": str(10 * GB), "imageId": api.image_id}},
        "networkInterfaceSpecs": [{"subnetId": api.subnet_id}],
    }
    for path, value in (changes or {}).items():
        *parents, last = path.split(".")
        node = body
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if value is DROP:
            del node[last]
        else:
            node[last] = copy.deepcopy(value)
    return body


def create_instance(**changes):
    return lambda api: ("POST", INSTANCES, instance_body(api, changes), {})


def resources(platform="standard-v3", **spec):
    """An instance create with these resourcesSpec fields changed."""
    return create_instance(platformId=platform, **{f"resourcesSpec.{k}": v for k, v in spec.items()})


def request(method, path, body=None, **params):
    return lambda api: (method, path, body, params)


def create(collection, service="vpc", **fields):
    return request("POST", f"/{service}/v1/{collection}", {"folderId": FOLDER, **fields})


def subnet(**fields):
    return create("subnets", **{"networkId": "enpnetwork", "zoneId": "ru-central1-a", **fields})


def disk(n):
    return {"autoDelete": True, "deviceName": f"data{n}", "diskSpec": {"size": str(GB)}}


def sg_rule(**fields):
    return create("securityGroups", networkId="enpnetwork", ruleSpecs=[fields])


R = rules
CREATE = f"{R.INSTANCE} CreateInstanceRequest"
LIST = f"{R.INSTANCE} ListInstancesRequest"
SPEC = f"{R.INSTANCE} ResourcesSpec"
SELF = "self_security_group"
NAT = "networkInterfaceSpecs.0.primaryV4AddressSpec"
# (source, request, what the message says): each a refusal the real API makes by that rule; a
# re.Pattern where a literal part will not do.
REFUSALS = [
    pytest.param(f"{CREATE}.labels (map_key).pattern", create_instance(labels={"Env": "x"}),
                 'labels: key "Env" must match [a-z][-_./\\@0-9a-z]*', id="label-key-uppercase"),
    pytest.param(f"{CREATE}.labels (length)", create_instance(labels={"env": "x" * 64}),
                 re.compile('labels: value "x+" of key "env" has length 64, it must be <=63'),
                 id="label-value-64"),
    pytest.param(f"{CREATE}.labels (size)", create_instance(labels={f"l{n}": "" for n in range(65)}),
                 "labels: 65 elements, the number must be <=64", id="65-labels"),
    pytest.param(f"{CREATE}.name (pattern)", create_instance(name="Web1"),
                 'name: "Web1" must match', id="name-uppercase"),
    pytest.param(f"{CREATE}.hostname (pattern)", create_instance(hostname="web_"),
                 'hostname: "web_" must match', id="hostname-trailing-underscore"),
    pytest.param(f"{CREATE}.description (length)", create_instance(description="d" * 257),
                 re.compile("description: .* has length 257, it must be <=256"), id="description-257"),
    pytest.param(f"{CREATE}.zone_id (required)", create_instance(zoneId=DROP),
                 "zoneId: is required", id="no-zone"),
    pytest.param(f"{LIST}.page_size (value)", request("GET", INSTANCES, folderId=FOLDER, pageSize=1001),
                 "pageSize: 1001 must be <=1000", id="page-size-1001"),
    pytest.param(f"{R.DOCS_PAGINATION} page_size: from 0 to 1000",
                 request("GET", INSTANCES, folderId=FOLDER, pageSize=-1),
                 "pageSize: -1 must be 0-1000", id="page-size-negative"),
    pytest.param(f"{LIST}.page_token (length)",
                 request("GET", INSTANCES, folderId=FOLDER, pageToken="t" * 101),
                 re.compile("pageToken: .* has length 101, it must be <=100"), id="page-token-101"),
    pytest.param(f"{LIST}.folder_id (required)", request("GET", INSTANCES),
                 "folderId: is required", id="list-without-folder"),
    pytest.param(f"{SPEC}.cores (value)", resources(cores="38"),
                 "resourcesSpec.cores: 38 must be one of 2,4,", id="cores-38"),
    pytest.param(f"{SPEC}.cores (value)", resources(cores=3),
                 "resourcesSpec.cores: 3 must be one of 2,4,", id="cores-3"),
    pytest.param(f"{SPEC}.core_fraction (value)", resources(coreFraction="30"),
                 "resourcesSpec.coreFraction: 30 must be one of 0,5,20,50,100", id="core-fraction-30"),
    pytest.param(f"{SPEC}.memory (value)", resources(memory=str(256 * GB + 1)),
                 "resourcesSpec.memory: 274877906945 must be <=274877906944", id="memory-over-256-gib"),
    pytest.param(f"{SPEC}.gpus (value)", resources(gpus="3"),
                 "resourcesSpec.gpus: 3 must be one of 0,1,2,4", id="gpus-3"),
    pytest.param(R.DOCS_LEVELS, resources(coreFraction="5"),
                 "resourcesSpec.coreFraction: 5 must be one of 20, 50, 100 on standard-v3",
                 id="fraction-5-on-standard-v3"),
    pytest.param(R.DOCS_LEVELS, resources(coreFraction="20", cores="8", memory=str(8 * GB)),
                 "resourcesSpec.cores: 8 must be one of 2, 4 on standard-v3 at 20%",
                 id="fraction-20-with-8-cores"),
    pytest.param(R.DOCS_LEVELS, resources(memory=str(34 * GB)),
                 re.compile("memory: .* is 17 GB per vCPU, it must be one of 1, 2, .*, 16 GB per vCPU"),
                 id="17-gb-per-core"),
    pytest.param(R.DOCS_LEVELS, resources("standard-v2", coreFraction="5", memory=str(GB * 3 // 2)),
                 "is 0.75 GB per vCPU, it must be one of 0.25, 0.5, 1, 1.5, 2 GB per vCPU on standard-v2",
                 id="0.75-gb-per-core-at-5-percent"),
    pytest.param(f"{R.INSTANCE} AttachedDiskSpec.DiskSpec.size (value)",
                 create_instance(**{"bootDiskSpec.diskSpec.size": str(1024**2)}),
                 "bootDiskSpec.diskSpec.size: 1048576 must be 4194304-4398046511104", id="boot-disk-1-mib"),
    pytest.param(f"{R.INSTANCE} AttachedDiskSpec oneof disk (exactly_one)",
                 create_instance(**{"bootDiskSpec.diskId": "fhmdisk"}),
                 "bootDiskSpec: exactly one of diskSpec, diskId must be set, got diskSpec, diskId",
                 id="boot-disk-spec-and-id"),
    pytest.param(f"{CREATE}.secondary_disk_specs (size)",
                 create_instance(secondaryDiskSpecs=[disk(n) for n in range(4)]),
                 "secondaryDiskSpecs: 4 elements, the number must be <=3", id="4-secondary-disks"),
    pytest.param(f"{R.INSTANCE} AttachedDiskSpec.device_name (pattern)",
                 create_instance(secondaryDiskSpecs=[{**disk(0), "deviceName": "Disk0"}]),
                 'secondaryDiskSpecs[0].deviceName: "Disk0" must match', id="device-name-Disk0"),
    pytest.param(f"{R.INSTANCE} DnsRecordSpec.ttl (value)",
                 create_instance(**{NAT: {"dnsRecordSpecs": [{"fqdn": "db1.", "ttl": "86401"}]}}),
                 "primaryV4AddressSpec.dnsRecordSpecs[0].ttl: 86401 must be 0-86400", id="dns-ttl-86401"),
    pytest.param(f"{CREATE}.maintenance_grace_period (value)",
                 create_instance(maintenanceGracePeriod="90000s"),
                 'maintenanceGracePeriod: "90000s" must be 1s-24h', id="grace-period-25h"),
    pytest.param(R.METADATA.source, create_instance(metadata={f"k{n}": "v" * 200_000 for n in range(3)}),
                 "metadata: keys and values together (600006 bytes) must be less than 512 KB",
                 id="metadata-over-512-kb"),
    pytest.param(f"{R.IMAGE} GetImageLatestByFamilyRequest.family (pattern)",
                 request("GET", "/compute/v1/images:latestByFamily", folderId="standard-images",
                         family="Debian_12"),
                 'family: "Debian_12" must match', id="image-family-underscore"),
    pytest.param(f"{R.GATEWAY} CreateGatewayRequest.name (pattern)", create("gateways", name="nat_gw"),
                 'name: "nat_gw" must match', id="gateway-name-nat_gw"),
    pytest.param(f"{R.SUBNET} CreateSubnetRequest.labels (map_key).pattern",
                 subnet(labels={"app.kubernetes.io": "x"}),
                 'labels: key "app.kubernetes.io" must match', id="subnet-label-key-dot"),
    pytest.param(R.V4_CIDR_BLOCKS.source, subnet(v4CidrBlocks=["10.0.0.0/15"]),
                 'v4CidrBlocks[0]: "10.0.0.0/15" must be a network of /16 to /28', id="subnet-slash-15"),
    pytest.param(R.V4_CIDR_BLOCKS.source, subnet(v4CidrBlocks=["10.9.0.0/29"]),
                 'v4CidrBlocks[0]: "10.9.0.0/29" must be a network of /16 to /28', id="subnet-slash-29"),
    pytest.param(f"{R.SUBNET} CreateSubnetRequest.zone_id (required)", subnet(zoneId=""),
                 "zoneId: is required", id="subnet-without-zone"),
    pytest.param(R.vpc_filter(R.SUBNET, "ListSubnetsRequest").source,
                 request("GET", "/vpc/v1/subnets", folderId=FOLDER, filter='name="PgSubnet"'),
                 'filter: "name="PgSubnet"" must be name=', id="subnet-filter-uppercase"),
    pytest.param(f"{R.ROUTE_TABLE} CreateRouteTableRequest.network_id (required)",
                 create("routeTables", name="egress"), "networkId: is required",
                 id="route-table-without-network"),
    pytest.param(f"{R.SECURITY_GROUP} SecurityGroupRuleSpec oneof target (exactly_one)",
                 sg_rule(direction="INGRESS"),
                 "ruleSpecs[0]: exactly one of cidrBlocks, securityGroupId, predefinedTarget must be set, "
                 "got none",
                 id="security-rule-without-target"),
    pytest.param(f"{R.SECURITY_GROUP} SecurityGroupRuleSpec.direction (required)",
                 sg_rule(predefinedTarget=SELF),
                 "ruleSpecs[0].direction: is required", id="security-rule-without-direction"),
    pytest.param(f"{R.SECURITY_GROUP_MSG} PortRange.to_port (value)",
                 sg_rule(direction="INGRESS", predefinedTarget=SELF,
                         ports={"fromPort": "0", "toPort": "65536"}),
                 "ruleSpecs[0].ports.toPort: 65536 must be 0-65535", id="port-65536"),
    pytest.param(f"{R.ADDRESS} CreateAddressRequest oneof address_spec (exactly_one)",
                 create("addresses", name="web"),
                 "exactly one of externalIpv4AddressSpec, internalIpv4AddressSpec must be set, got none",
                 id="address-without-spec"),
    pytest.param(f"{R.ADDRESS} DnsRecordSpec.dns_zone_id (length)",
                 create("addresses", externalIpv4AddressSpec={"zoneId": "ru-central1-a"},
                        dnsRecordSpecs=[{"fqdn": "web.", "dnsZoneId": "d" * 19}]),
                 re.compile(r"dnsRecordSpecs\[0\].dnsZoneId: .* has length 19, it must be exactly 20"),
                 id="dns-zone-id-19"),
    pytest.param(f"{R.PLACEMENT_MSG} PartitionPlacementStrategy.partitions (value)",
                 create("placementGroups", "compute", partitionPlacementStrategy={"partitions": 6}),
                 "partitionPlacementStrategy.partitions: 6 must be 2-5", id="partitions-6"),
    pytest.param(f"{R.PLACEMENT} CreatePlacementGroupRequest oneof placement_strategy (exactly_one)",
                 create("placementGroups", "compute", name="spread"),
                 "exactly one of spreadPlacementStrategy, partitionPlacementStrategy must be set, got none",
                 id="placement-group-without-strategy"),
    pytest.param(f"{R.INSTANCE} GetInstanceSerialPortOutputRequest.port (value)",
                 request("GET", f"{INSTANCES}/fhminstance:serialPortOutput", port=5),
                 "port: 5 must be one of 1,2,3,4", id="serial-port-5"),
    pytest.param(f"{R.INSTANCE} GetInstanceRequest.instance_id (length)",
                 request("GET", f"{INSTANCES}/{'i' * 51}"),
                 re.compile("instanceId: .* has length 51, it must be <=50"), id="instance-id-51"),
]


def _says(text, expected):
    """Does the message say this (a literal part of it, or a pattern)?"""
    return expected.search(text) if isinstance(expected, re.Pattern) else expected in text


def _without_rule(monkeypatch, source):
    """Take the rule with this source out of the tables (or the docs' platform check)."""
    if source == rules.DOCS_LEVELS:
        monkeypatch.setattr(rules, "check_platform", lambda *args: None)
        return
    found = False
    for key, msg in list(rules.MESSAGES.items()):
        kept = {f: tuple(r for r in rs if r.source != source) for f, rs in msg.rules.items()}
        oneofs = tuple(o for o in msg.oneofs if o.source != source)
        if kept != msg.rules or oneofs != msg.oneofs:
            found = True
            monkeypatch.setitem(rules.MESSAGES, key, replace(msg, rules=kept, oneofs=oneofs))
    assert found, f"no rule has the source {source}"


@pytest.mark.parametrize(("source", "make_request", "message"), REFUSALS)
def test_the_api_refuses(api, monkeypatch, source, make_request, message):
    assert source in rules.sources(), source
    method, path, body, params = make_request(api)
    status, answer = api.refused(method, path, body, **params)
    assert (status, answer["code"]) == (400, 3), answer
    assert answer["message"].startswith("Request validation error: ")
    assert _says(answer["message"], message), (message, answer["message"])
    assert answer["details"][-1]["@type"] == "type.googleapis.com/google.rpc.RequestInfo"
    # The refusal is this rule's: without it, the same request is not refused with this message.
    _without_rule(monkeypatch, source)
    again = api.call(method, path, body, **params)
    assert again.status_code == 200 or not _says(again.json()["message"], message), again.text


def test_unknown_fields_and_wrong_types_are_refused(api):
    _, answer = api.refused("POST", INSTANCES, instance_body(api, {"bootDiskSpec.size": "1"}))
    assert answer["message"] == ("Request validation error: bootDiskSpec.size: unknown field of "
                                 "AttachedDiskSpec")
    _, answer = api.refused("POST", INSTANCES, instance_body(api, {"resourcesSpec.cores": "two"}))
    assert "resourcesSpec.cores: \"two\" must be an int64" in answer["message"]
    _, answer = api.refused("POST", INSTANCES,
                            instance_body(api, {"networkSettings": {"type": "FAST"}}))
    assert "networkSettings.type: \"FAST\" must be one of TYPE_UNSPECIFIED, STANDARD" in answer["message"]
    _, answer = api.refused("POST", INSTANCES, instance_body(api, {"maintenanceGracePeriod": "25h"}))
    assert 'maintenanceGracePeriod: "25h" must be a duration such as "3600s"' in answer["message"]


# --- what the API takes ------------------------------------------------------------------------


def make_instance(api, **changes):
    operation = api.done("POST", INSTANCES, instance_body(api, changes))
    assert operation["metadata"]["@type"] == f"{COMPUTE}.CreateInstanceMetadata"
    return api.ok("GET", f"{INSTANCES}/{operation['metadata']['instanceId']}", view="FULL")


def test_what_the_old_fake_refused_is_taken(api, fake):
    group = api.make("placementGroups", {"name": "pg", "spreadPlacementStrategy": {}}, service="compute")
    second = api.make("subnets", {"name": "PgSubnet_B", "networkId": api.network_id,
                                  "zoneId": "ru-central1-a", "v4CidrBlocks": ["10.1.0.0/24"]})
    assert second["name"] == "PgSubnet_B"  # VPC names allow capitals and '_'
    vm = make_instance(
        api, name="web_1", placementPolicy={"placementGroupId": group["id"]},
        networkSettings={"type": "SOFTWARE_ACCELERATED"}, metadataOptions={"gceHttpToken": "DISABLED"},
        serialPortSettings={"sshAuthorization": "OS_LOGIN"}, maintenanceGracePeriod="3600s",
        maintenancePolicy="MIGRATE", schedulingPolicy={"preemptible": True},
        secondaryDiskSpecs=[{"deviceName": "data0", "autoDelete": True,
                             "diskSpec": {"size": 4 * GB, "typeId": "network-ssd"}},
                            {"deviceName": "data1", "diskSpec": {"size": str(GB)}}],
        networkInterfaceSpecs=[{"subnetId": api.subnet_id}, {"subnetId": second["id"]}])
    assert vm["name"] == "web_1"
    assert vm["placementPolicy"] == {"placementGroupId": group["id"]}
    assert vm["networkSettings"] == {"type": "SOFTWARE_ACCELERATED"}
    assert vm["metadataOptions"] == {"gceHttpToken": "DISABLED"}
    assert vm["maintenanceGracePeriod"] == "3600s"
    assert [(n["index"], n["subnetId"]) for n in vm["networkInterfaces"]] == [
        ("0", api.subnet_id), ("1", second["id"])]
    assert vm["networkInterfaces"][1]["primaryV4Address"]["address"].startswith("10.1.0.")
    assert [d["deviceName"] for d in vm["secondaryDisks"]] == ["data0", "data1"]
    kept = vm["secondaryDisks"][1]["diskId"]
    assert fake.disks[kept]["size"] == str(GB) and fake.disks[kept]["instanceIds"] == [vm["id"]]
    listed = api.ok("GET", f"/compute/v1/placementGroups/{group['id']}/instances")
    assert [i["id"] for i in listed["instances"]] == [vm["id"]] and "metadata" not in listed["instances"][0]

    api.done("DELETE", f"{INSTANCES}/{vm['id']}")
    # The auto-deleted disks went with the VM; the other one stays, detached.
    assert set(fake.disks) == {kept} and fake.disks[kept]["instanceIds"] == []


def test_standard_v2_at_5_percent_takes_a_quarter_gb_per_core(api):
    vm = make_instance(api, platformId="standard-v2",
                       resourcesSpec={"memory": GB // 2, "cores": 2, "coreFraction": 5})
    assert vm["resources"] == {"memory": str(GB // 2), "cores": "2", "coreFraction": "5"}


def test_stop_and_restart_answer_empty_and_start_the_instance(api):
    vm = make_instance(api)
    stop = api.done("POST", f"{INSTANCES}/{vm['id']}:stop")
    assert stop["response"] == {"@type": EMPTY}
    assert stop["metadata"] == {"@type": f"{COMPUTE}.StopInstanceMetadata",
                                "instanceId": vm["id"]}
    start = api.done("POST", f"{INSTANCES}/{vm['id']}:start")
    assert start["response"]["@type"] == f"{COMPUTE}.Instance"
    assert start["response"]["status"] == "RUNNING"
    assert api.done("POST", f"{INSTANCES}/{vm['id']}:restart")["response"] == {"@type": EMPTY}


# --- each resource's life ------------------------------------------------------------------------

LIFECYCLES = [
    ("vpc", "networks", "Network", lambda api, n: {"name": f"net{n}"}),
    ("vpc", "subnets", "Subnet", lambda api, n: {"name": f"sub{n}", "networkId": api.network_id,
                                                 "zoneId": "ru-central1-b",
                                                 "v4CidrBlocks": [f"10.{50 + n}.0.0/24"]}),
    ("vpc", "gateways", "Gateway", lambda api, n: {"name": f"gw{n}", "sharedEgressGatewaySpec": {}}),
    ("vpc", "routeTables", "RouteTable", lambda api, n: {"name": f"rt{n}", "networkId": api.network_id}),
    ("vpc", "securityGroups", "SecurityGroup",
     lambda api, n: {"name": f"sg{n}", "networkId": api.network_id, "ruleSpecs": [
         {"direction": "INGRESS", "ports": {"fromPort": 22, "toPort": 22}, "protocolName": "TCP",
          "cidrBlocks": {"v4CidrBlocks": ["0.0.0.0/0"]}}]}),
    ("vpc", "addresses", "Address", lambda api, n: {"name": f"ip{n}",
                                                   "externalIpv4AddressSpec": {"zoneId": "ru-central1-a"}}),
    ("compute", "placementGroups", "PlacementGroup",
     lambda api, n: {"name": f"pg{n}", "partitionPlacementStrategy": {"partitions": "3"}}),
]


@pytest.mark.parametrize(("service", "collection", "name", "body"), LIFECYCLES,
                         ids=[c for _, c, _, _ in LIFECYCLES])
def test_create_list_get_delete(api, fake, service, collection, name, body):
    base = f"/{service}/v1/{collection}"
    id_field = name[0].lower() + name[1:] + "Id"
    made = []
    for n in range(3):
        first = api.ok("POST", base, {"folderId": FOLDER, **body(api, n)})
        assert first["done"] is False
        assert first["metadata"] == {
            "@type": f"type.googleapis.com/yandex.cloud.{service}.v1.Create{name}Metadata",
            id_field: first["metadata"][id_field]}
        made.append(first["metadata"][id_field])
        # It is there at once; the operation ends with it.
        assert api.ok("GET", f"{base}/{made[-1]}")["name"] == body(api, n)["name"]
        operation = api.ok("GET", f"/operations/{first['id']}")
        while not operation["done"]:
            operation = api.ok("GET", f"/operations/{first['id']}")
        assert operation["response"]["@type"] == f"type.googleapis.com/yandex.cloud.{service}.v1.{name}"
        assert operation["response"]["id"] == made[-1]

    pages, token = [], None
    while True:
        page = api.ok("GET", base, folderId=FOLDER, **({"pageToken": token} if token else {}))
        pages.append([r["id"] for r in page[collection]])
        token = page.get("nextPageToken")
        if not token:
            break
    listed = [i for page in pages for i in page]
    assert len(pages) >= 2 and set(made) <= set(listed) and all(len(p) <= fake.page_size for p in pages)
    found = api.ok("GET", base, folderId=FOLDER, filter=f'name="{body(api, 1)["name"]}"')[collection]
    assert [r["id"] for r in found] == [made[1]]

    status, answer = api.refused("POST", base, {"folderId": FOLDER, **body(api, 0)})
    assert (status, answer["code"]) == (409, 6), answer  # the name is taken in the folder

    delete = api.done("DELETE", f"{base}/{made[0]}")
    assert delete["response"] == {"@type": EMPTY}
    assert delete["metadata"]["@type"] == f"type.googleapis.com/yandex.cloud.{service}.v1.Delete{name}" \
        "Metadata"
    status, answer = api.refused("GET", f"{base}/{made[0]}")
    assert (status, answer["code"]) == (404, 5)
    status, answer = api.refused("GET", base, folderId=FOLDER, pageSize=1001)
    assert (status, answer["code"]) == (400, 3)


def test_what_is_in_use_is_not_deleted(api, fake):
    network = api.make("networks", {"name": "pgnet"})
    subnet = api.make("subnets", {"name": "pgnet-a", "networkId": network["id"], "zoneId": "ru-central1-a",
                                  "v4CidrBlocks": ["10.128.0.0/24"]})
    gateway = api.make("gateways", {"name": "pgnet-egress", "sharedEgressGatewaySpec": {}})
    assert gateway["sharedEgressGateway"] == {}
    table = api.make("routeTables", {"name": "pgnet-egress", "networkId": network["id"], "staticRoutes": [
        {"destinationPrefix": "0.0.0.0/0", "gatewayId": gateway["id"]}]})
    patched = api.done("PATCH", f"/vpc/v1/subnets/{subnet['id']}",
                       {"updateMask": "routeTableId", "routeTableId": table["id"]})
    assert patched["response"]["routeTableId"] == table["id"]
    assert patched["metadata"]["@type"] == "type.googleapis.com/yandex.cloud.vpc.v1.UpdateSubnetMetadata"
    group = api.make("securityGroups", {"name": "pgnet-sg", "networkId": network["id"], "ruleSpecs": [
        {"direction": "EGRESS", "predefinedTarget": "self_security_group"}]})
    address = api.make("addresses", {"name": "web-ip",
                                     "externalIpv4AddressSpec": {"zoneId": "ru-central1-a"}})
    ip = address["externalIpv4Address"]["address"]
    assert (address["reserved"], address["used"], address["type"], address["ipVersion"]) == (
        True, False, "EXTERNAL", "IPV4")
    assert ip not in fake.public_pool
    placement = api.make("placementGroups", {"name": "pgnet-spread", "spreadPlacementStrategy": {}},
                         "compute")
    vm = make_instance(api, placementPolicy={"placementGroupId": placement["id"]}, networkInterfaceSpecs=[{
        "subnetId": subnet["id"], "securityGroupIds": [group["id"]],
        "primaryV4AddressSpec": {"oneToOneNatSpec": {"ipVersion": "IPV4", "address": ip}}}])
    assert vm["networkInterfaces"][0]["primaryV4Address"]["oneToOneNat"]["address"] == ip
    assert api.ok("GET", f"/vpc/v1/addresses/{address['id']}")["used"] is True
    listed = api.ok("GET", f"/vpc/v1/networks/{network['id']}/subnets")["subnets"]
    assert [s["id"] for s in listed] == [subnet["id"]]

    for path, user in ((f"/vpc/v1/networks/{network['id']}", "subnet pgnet-a"),
                       (f"/vpc/v1/subnets/{subnet['id']}", "instance db1"),
                       (f"/vpc/v1/routeTables/{table['id']}", "subnet pgnet-a"),
                       (f"/vpc/v1/gateways/{gateway['id']}", "route table pgnet-egress"),
                       (f"/vpc/v1/securityGroups/{group['id']}", "instance db1"),
                       (f"/vpc/v1/addresses/{address['id']}", "instance db1"),
                       (f"/compute/v1/placementGroups/{placement['id']}", "instance db1")):
        status, answer = api.refused("DELETE", path)
        assert (status, answer["code"]) == (400, 9), answer
        assert f"is in use: {user}" in answer["message"]
    status, answer = api.refused("POST", INSTANCES, instance_body(api, {
        "name": "db2", "networkInterfaceSpecs.0.primaryV4AddressSpec": {"oneToOneNatSpec": {"address": ip}}}))
    assert (status, answer["code"]) == (400, 9) and "already used" in answer["message"]

    # Taken apart in the order the API allows.
    api.done("DELETE", f"{INSTANCES}/{vm['id']}")
    assert api.ok("GET", f"/vpc/v1/addresses/{address['id']}")["used"] is False
    api.done("DELETE", f"/vpc/v1/addresses/{address['id']}")
    assert ip in fake.public_pool
    api.done("DELETE", f"/compute/v1/placementGroups/{placement['id']}")
    api.done("DELETE", f"/vpc/v1/subnets/{subnet['id']}")
    api.done("DELETE", f"/vpc/v1/routeTables/{table['id']}")
    api.done("DELETE", f"/vpc/v1/gateways/{gateway['id']}")
    status, answer = api.refused("DELETE", f"/vpc/v1/networks/{network['id']}")
    assert (status, answer["code"]) == (400, 9) and "security group pgnet-sg" in answer["message"]
    api.done("DELETE", f"/vpc/v1/securityGroups/{group['id']}")
    api.done("DELETE", f"/vpc/v1/networks/{network['id']}")


def test_subnets_of_a_network_do_not_overlap_and_routes_stay_in_it(api):
    status, answer = api.refused("POST", "/vpc/v1/subnets", {
        "folderId": FOLDER, "name": "wide", "networkId": api.network_id, "zoneId": "ru-central1-b",
        "v4CidrBlocks": ["10.0.0.0/16"]})
    assert (status, answer["code"]) == (400, 3)
    assert "10.0.0.0/16 overlaps 10.0.0.0/24 of subnet pgcluster-subnet" in answer["message"]
    other = api.make("networks", {"name": "other"})
    api.make("subnets", {"name": "same-range", "networkId": other["id"], "zoneId": "ru-central1-b",
                         "v4CidrBlocks": ["10.0.0.0/16"]})  # another network may reuse it
    table = api.make("routeTables", {"name": "elsewhere", "networkId": other["id"]})
    status, answer = api.refused("PATCH", f"/vpc/v1/subnets/{api.subnet_id}",
                                 {"updateMask": "routeTableId", "routeTableId": table["id"]})
    assert (status, answer["code"]) == (400, 3) and "is in network" in answer["message"]
    status, answer = api.refused("POST", "/vpc/v1/routeTables", {
        "folderId": FOLDER, "name": "nowhere", "networkId": api.network_id,
        "staticRoutes": [{"destinationPrefix": "0.0.0.0/0", "gatewayId": "enpnosuchgateway"}]})
    assert (status, answer["code"]) == (404, 5) and "staticRoutes[0].gatewayId" in answer["message"]
    status, answer = api.refused("POST", INSTANCES, instance_body(api, {
        "networkInterfaceSpecs.0.subnetId": api.subnet_id, "networkInterfaceSpecs.0.securityGroupIds": [
            api.make("securityGroups", {"name": "sg-other", "networkId": other["id"]})["id"]]}))
    assert (status, answer["code"]) == (400, 3) and "security group" in answer["message"]


def test_a_spread_group_takes_five_instances(api):
    group = api.make("placementGroups", {"name": "spread", "spreadPlacementStrategy": {}}, "compute")
    for n in range(5):
        make_instance(api, name=f"db{n}", placementPolicy={"placementGroupId": group["id"]})
    status, answer = api.refused("POST", INSTANCES, instance_body(api, {
        "name": "db5", "placementPolicy": {"placementGroupId": group["id"]}}))
    assert (status, answer["code"]) == (400, 9) and "already has 5 instances" in answer["message"]
    status, answer = api.refused("POST", INSTANCES, instance_body(api, {
        "name": "db6", "placementPolicy": {"placementGroupId": "fd8nosuchgroup"}}))
    assert (status, answer["code"]) == (404, 5)


def test_the_metadata_service_gives_a_vm_a_token():
    cloud = FakeYandex(metadata_service=True).start()
    try:
        url = f"{cloud.url}/computeMetadata/v1/instance/service-accounts/default/token"
        refused = requests.get(url, timeout=10)
        assert refused.status_code == 403
        answer = requests.get(url, headers={"Metadata-Flavor": "Google"}, timeout=10)
        assert answer.status_code == 200
        token = answer.json()
        assert token["token_type"] == "Bearer" and token["expires_in"] == 3600
        listed = requests.get(f"{cloud.url}/compute/v1/instances", params={"folderId": FOLDER},
                              headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=10)
        assert listed.status_code == 200 and listed.json() == {"instances": []}
    finally:
        cloud.stop()


def test_without_it_there_is_no_metadata_service(fake):
    answer = requests.get(f"{fake.url}/computeMetadata/v1/instance/service-accounts/default/token",
                          headers={"Metadata-Flavor": "Google"}, timeout=10)
    assert answer.status_code == 404


def test_the_token_exchange_takes_exactly_one_credential(fake):
    for body in ({}, {"jwt": "a.b.c", "yandexPassportOauthToken": "y0"}):
        answer = requests.post(f"{fake.url}/iam/v1/tokens", json=body, timeout=10)
        assert answer.status_code == 400
        assert "exactly one of yandexPassportOauthToken, jwt must be set" in answer.json()["message"]
