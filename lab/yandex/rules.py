"""What the fake Yandex Cloud API accepts, as data: one table per request message.

Each message lists its fields by their JSON name (lowerCamelCase, as the REST gateway takes
them), their types (strings, int64 as JSON numbers or strings, enums by name or number, nested
messages, repeated fields, maps), its oneofs and its validation rules. The rules are the
annotations of the yandex-cloud/cloudapi protos (yandex/cloud/validation.proto: required,
length, pattern, value, size, map_key.length, map_key.pattern, exactly_one); the newest protos
carry the same rules as generated comments ("The length must be less than or equal to 50.",
one for one), read the same way. Every rule carries its source: file@commit, message.field and
the annotation, e.g. "yandex/cloud/compute/v1/instance_service.proto@28783a71
CreateInstanceRequest.labels (map_key).pattern". Rules from prose (a proto comment, the docs)
say so in their source.

A violation raises ApiError(3, "Request validation error: <path>: <what> must <rule>"), the
path in JSON spelling (`resourcesSpec.cores`, `networkInterfaceSpecs[1].subnetId`, a `labels`
key). The real API's wording and gRPC code for these are not in the sources; INVALID_ARGUMENT
is what the docs say code 3 means ("Incorrect request parameters specified").

Where the sources are silent, the fake decides, and says so here:
- a pattern must match the whole value (a leading `|` in the protos only makes sense so);
- an unset or zero/empty value (proto3 cannot tell them apart) passes every rule but
  `required`, which it fails: an optional device_name left empty must not fail its pattern;
- fields the message does not have are refused, and so are two members of one oneof at once
  (the protobuf JSON mapping refuses that; whether Yandex's gateway refuses unknown fields is
  not in the sources);
- unknown query parameters of a GET are ignored.

Also here: the platform table of the docs (vCPU counts, core fractions, memory per vCPU),
which the fake checks after the proto rules of ResourcesSpec.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from fractions import Fraction

# Where the rules come from (yandex-cloud/cloudapi unless the path says docs). Annotated
# versions are cited where they were read; the rest are the comment form of the newest files.
INSTANCE = "yandex/cloud/compute/v1/instance_service.proto@28783a71"
INSTANCE_NEW = "yandex/cloud/compute/v1/instance_service.proto@05cf3509"
INSTANCE_MSG = "yandex/cloud/compute/v1/instance.proto@05cf3509"
APPLICATION = "yandex/cloud/compute/v1/application.proto@05cf3509"
MAINTENANCE = "yandex/cloud/compute/v1/maintenance.proto@05cf3509"
DISK_MSG = "yandex/cloud/compute/v1/disk.proto@05cf3509"
DISK = "yandex/cloud/compute/v1/disk_service.proto@62bc29e0"
DISK_NEW = "yandex/cloud/compute/v1/disk_service.proto@05cf3509"
IMAGE = "yandex/cloud/compute/v1/image_service.proto@62bc29e0"
ZONE = "yandex/cloud/compute/v1/zone_service.proto@05cf3509"
PLACEMENT = "yandex/cloud/compute/v1/placement_group_service.proto@05cf3509"
PLACEMENT_MSG = "yandex/cloud/compute/v1/placement_group.proto@05cf3509"
NETWORK = "yandex/cloud/vpc/v1/network_service.proto@a29b54e7"
SUBNET = "yandex/cloud/vpc/v1/subnet_service.proto@a29b54e7"
SUBNET_MSG = "yandex/cloud/vpc/v1/subnet.proto@a29b54e7"
GATEWAY = "yandex/cloud/vpc/v1/gateway_service.proto@94e00973"
ROUTE_TABLE = "yandex/cloud/vpc/v1/route_table_service.proto@a29b54e7"
ROUTE_TABLE_MSG = "yandex/cloud/vpc/v1/route_table.proto@a29b54e7"
SECURITY_GROUP = "yandex/cloud/vpc/v1/security_group_service.proto@6c4a2295"
SECURITY_GROUP_MSG = "yandex/cloud/vpc/v1/security_group.proto@a29b54e7"
ADDRESS = "yandex/cloud/vpc/v1/address_service.proto@a29b54e7"
ADDRESS_MSG = "yandex/cloud/vpc/v1/address.proto@a29b54e7"
IAM_TOKEN = "yandex/cloud/iam/v1/iam_token_service.proto@d93b73f2"
OPERATION = "yandex/cloud/operation/operation_service.proto@94e00973"
DOCS_LEVELS = "yandex-cloud/docs en/compute/concepts/performance-levels.md@0423c802"
DOCS_PAGINATION = "yandex-cloud/docs en/api-design-guide/concepts/pagination.md@0423c802"


class ApiError(Exception):
    """An answer of the API: a google.rpc.Status code, its message and extra details."""

    def __init__(self, code, message, extra_details=()):
        super().__init__(message)
        self.code, self.message, self.extra_details = code, message, list(extra_details)


def invalid(path, problem):
    where = f"{path}: " if path else ""
    return ApiError(3, f"Request validation error: {where}{problem}")


# --- field types ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scalar:
    name: str


STRING, INT64, BOOL, DURATION, FIELD_MASK = (Scalar(n) for n in
                                             ("string", "int64", "bool", "Duration", "FieldMask"))


@dataclass(frozen=True)
class Enum:
    values: tuple[str, ...]  # by number: values[0] is the UNSPECIFIED one


@dataclass(frozen=True)
class Repeated:
    item: object


@dataclass(frozen=True)
class Map:
    value: object = STRING


# A nested message is named by its key in MESSAGES (a plain str).


# --- rules ---------------------------------------------------------------------------------------

ANNOTATIONS = {"required": "(required)", "length": "(length)", "pattern": "(pattern)",
          "value": "(value)", "size": "(size)", "key_length": "(map_key).length",
          "key_pattern": "(map_key).pattern"}


@dataclass(frozen=True)
class Rule:
    kind: str  # a key of ANNOTATIONS, or "check" (a rule from prose, checked by a function)
    spec: str = ""  # "<=50", "1-63", "2,4,6", a regex; for "check": what it demands
    source: str = ""  # filled in by message(); a rule from elsewhere brings its own
    check: Callable | None = field(default=None, compare=False)


def required():
    return Rule("required")


def length(spec):
    return Rule("length", spec)


def pattern(regex):
    return Rule("pattern", regex)


def value(spec, source=""):
    return Rule("value", spec, source)


def size(spec):
    return Rule("size", spec)


def key_length(spec):
    return Rule("key_length", spec)


def key_pattern(regex):
    return Rule("key_pattern", regex)


def prose(demand, check, source):
    """A rule written as a sentence (a proto comment, a docs page): check(value) -> problem."""
    return Rule("check", demand, source, check)


@dataclass(frozen=True)
class Oneof:
    name: str
    members: tuple[str, ...]
    exactly_one: bool = False
    source: str = ""


def exactly_one(name, *members):
    return Oneof(name, members, True)


def oneof(name, *members):
    return Oneof(name, members)


@dataclass(frozen=True)
class Message:
    name: str  # as the proto names it, for sources
    types: dict
    rules: dict
    oneofs: tuple


MESSAGES: dict[str, Message] = {}


def _snake(name):
    return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), name)


def message(key, source, fields, *oneofs, name=None):
    """Declare a message: fields {json name: type or (type, rule, ...)}; each rule's source is
    the file@commit given here, the proto's message.field and the annotation."""
    name = name or key
    types, rules = {}, {}
    for json_name, spec in fields.items():
        kind, *field_rules = spec if isinstance(spec, tuple) else (spec,)
        types[json_name] = kind
        where = f"{name}.{_snake(json_name)}"
        rules[json_name] = tuple(
            replace(r, source=r.source if r.kind == "check" or r.source.startswith("yandex-cloud/docs")
                    else f"{r.source or source} {where} {ANNOTATIONS[r.kind]}")
            for r in field_rules)
    bound = tuple(replace(o, source=f"{source} {name} oneof {o.name}"
                          + (" (exactly_one)" if o.exactly_one else ""))
                  for o in oneofs)
    MESSAGES[key] = Message(name, types, rules, bound)


def sources():
    """Every rule's source, for tests that cite them."""
    found = {DOCS_LEVELS}
    for msg in MESSAGES.values():
        found.update(r.source for rules in msg.rules.values() for r in rules)
        found.update(o.source for o in msg.oneofs)
    return found


# --- the tables ------------------------------------------------------------------------------------

COMPUTE_NAME = r"|[a-z]([-_a-z0-9]{0,61}[a-z0-9])?"
VPC_NAME = r"|[a-zA-Z]([-_a-zA-Z0-9]{0,61}[a-zA-Z0-9])?"
GATEWAY_NAME = r"|[a-z]([-a-z0-9]{0,61}[a-z0-9])?"
DEVICE_NAME = r"[a-z][a-z0-9-_]{,19}"
# Labels: compute, gateways and security groups allow '.', '/' and '@'; networks, subnets,
# route tables and addresses do not.
WIDE_LABELS = (Map(), size("<=64"), length("<=63"), pattern(r"[-_./\@0-9a-z]*"),
               key_length("1-63"), key_pattern(r"[a-z][-_./\@0-9a-z]*"))
NARROW_LABELS = (Map(), size("<=64"), length("<=63"), pattern(r"[-_0-9a-z]*"),
                 key_length("1-63"), key_pattern(r"[a-z][-_0-9a-z]*"))
ID = (STRING, required(), length("<=50"))
PAGE_SIZE = (INT64, value("<=1000"), value("0-1000", DOCS_PAGINATION + " page_size: from 0 to 1000"))


def page_fields(filter_rules=None, order_by=True):
    filter_rules = (length("<=1000"),) if filter_rules is None else filter_rules
    fields = {"folderId": ID, "pageSize": PAGE_SIZE, "pageToken": (STRING, length("<=100")),
              "filter": (STRING, *filter_rules)}
    if order_by:
        fields["orderBy"] = (STRING, length("<=100"))
    return fields


def _metadata_size(metadata):
    values = [len(v.encode()) for v in metadata.values()]
    if any(v > 256 * 1024 for v in values):
        return "each value must be 256 KB or less"
    total = sum(values) + sum(len(k.encode()) for k in metadata)
    if total >= 512 * 1024:
        return f"keys and values together ({total} bytes) must be less than 512 KB"
    return None


METADATA = prose(
    "values of 256 KB or less, keys and values less than 512 KB in all", _metadata_size,
    f"{INSTANCE} CreateInstanceRequest.metadata (comment) \"The total size of all keys and values "
    "must be less than 512 KB.\" \"The values must be 256 KB or less.\"")

# --- compute: instances
message("GetInstanceRequest", INSTANCE, {"instanceId": ID, "view": Enum(("BASIC", "FULL"))})
message("ListInstancesRequest", INSTANCE, page_fields())
for _verb in ("Delete", "Start", "Stop", "Restart"):
    message(f"{_verb}InstanceRequest", INSTANCE, {"instanceId": ID})
message("GetInstanceSerialPortOutputRequest", INSTANCE,
        {"instanceId": ID, "port": (INT64, value("1,2,3,4"))})
message("CreateInstanceRequest", INSTANCE, {
    "folderId": ID,
    "name": (STRING, pattern(COMPUTE_NAME)),
    "description": (STRING, length("<=256")),
    "labels": WIDE_LABELS,
    "zoneId": ID,
    "platformId": (STRING, required()),
    "resourcesSpec": ("ResourcesSpec", required()),
    "metadata": (Map(), METADATA),
    "metadataOptions": "MetadataOptions",
    "bootDiskSpec": ("AttachedDiskSpec", required()),
    "secondaryDiskSpecs": (Repeated("AttachedDiskSpec"), size("<=3")),
    "localDiskSpecs": Repeated("AttachedLocalDiskSpec"),
    "filesystemSpecs": Repeated("AttachedFilesystemSpec"),
    "networkInterfaceSpecs": (Repeated("NetworkInterfaceSpec"), required()),
    "hostname": (STRING, pattern(COMPUTE_NAME)),
    "schedulingPolicy": "SchedulingPolicy",
    "serviceAccountId": STRING,
    "networkSettings": "NetworkSettings",
    "placementPolicy": "PlacementPolicy",
    "gpuSettings": "GpuSettings",
    "maintenancePolicy": Enum(("MAINTENANCE_POLICY_UNSPECIFIED", "RESTART", "MIGRATE")),
    "maintenanceGracePeriod": (DURATION, value("1s-24h")),
    "serialPortSettings": "SerialPortSettings",
    "application": "Application",  # 05cf3509 only
    "reservedInstancePoolId": (STRING, length("<=50")),
})
message("ResourcesSpec", INSTANCE, {
    "memory": (INT64, required(), value("<=274877906944")),
    "cores": (INT64, required(),
              value("2,4,6,8,10,12,14,16,18,20,22,24,26,28,30,32,34,36,40,44,48,52,56,60,64,68,72,76,80")),
    "coreFraction": (INT64, value("0,5,20,50,100")),
    "gpus": (INT64, value("0,1,2,4")),
})
_MODE = Enum(("MODE_UNSPECIFIED", "READ_ONLY", "READ_WRITE"))
message("AttachedDiskSpec", INSTANCE, {
    "mode": _MODE,
    "deviceName": (STRING, pattern(DEVICE_NAME)),
    "autoDelete": BOOL,
    "diskSpec": "AttachedDiskSpec.DiskSpec",
    "diskId": (STRING, length("<=50")),
}, exactly_one("disk", "diskSpec", "diskId"))
message("AttachedDiskSpec.DiskSpec", INSTANCE, {
    "name": (STRING, pattern(COMPUTE_NAME)),
    "description": (STRING, length("<=256")),
    "typeId": (STRING, length("<=50")),
    "size": (INT64, required(), value("4194304-4398046511104")),
    "imageId": (STRING, length("<=50")),
    "snapshotId": (STRING, length("<=50")),
    "diskPlacementPolicy": "DiskPlacementPolicy",
    "blockSize": INT64,
    "kmsKeyId": (STRING, length("<=50")),
}, oneof("source", "imageId", "snapshotId"))
message("DiskPlacementPolicy", DISK_MSG, {"placementGroupId": STRING, "placementGroupPartition": INT64})
message("AttachedLocalDiskSpec", INSTANCE_NEW, {
    "size": (INT64, required()), "physicalLocalDisk": "PhysicalLocalDiskSpec",
}, oneof("type", "physicalLocalDisk"))
message("PhysicalLocalDiskSpec", INSTANCE_NEW, {"kmsKeyId": STRING})
message("AttachedFilesystemSpec", INSTANCE, {
    "mode": _MODE, "deviceName": (STRING, pattern(DEVICE_NAME)),
    "filesystemId": (STRING, length("<=50")),
})
message("NetworkInterfaceSpec", INSTANCE, {
    "subnetId": ID,
    "primaryV4AddressSpec": "PrimaryAddressSpec",
    "primaryV6AddressSpec": "PrimaryAddressSpec",
    "securityGroupIds": Repeated(STRING),
    "index": STRING,
})
message("PrimaryAddressSpec", INSTANCE, {
    "address": STRING, "oneToOneNatSpec": "OneToOneNatSpec",
    "dnsRecordSpecs": Repeated("compute.DnsRecordSpec"),
})
message("OneToOneNatSpec", INSTANCE, {
    "ipVersion": Enum(("IP_VERSION_UNSPECIFIED", "IPV4", "IPV6")), "address": STRING,
    "dnsRecordSpecs": Repeated("compute.DnsRecordSpec"),
})
message("compute.DnsRecordSpec", INSTANCE, {
    "fqdn": (STRING, required()), "dnsZoneId": STRING, "ttl": (INT64, value("0-86400")), "ptr": BOOL,
}, name="DnsRecordSpec")
message("SchedulingPolicy", INSTANCE_MSG, {"preemptible": BOOL})
message("NetworkSettings", INSTANCE_MSG, {
    "type": Enum(("TYPE_UNSPECIFIED", "STANDARD", "SOFTWARE_ACCELERATED", "HARDWARE_ACCELERATED")),
})
message("PlacementPolicy", INSTANCE_MSG, {
    "placementGroupId": STRING, "placementGroupPartition": INT64,
    "hostAffinityRules": Repeated("PlacementPolicy.HostAffinityRule"),
})
message("PlacementPolicy.HostAffinityRule", INSTANCE_MSG, {
    "key": STRING, "op": Enum(("OPERATOR_UNSPECIFIED", "IN", "NOT_IN")), "values": Repeated(STRING),
})
_OPTION = Enum(("METADATA_OPTION_UNSPECIFIED", "ENABLED", "DISABLED"))
message("MetadataOptions", INSTANCE_MSG, {
    name: _OPTION for name in ("gceHttpEndpoint", "awsV1HttpEndpoint", "gceHttpToken",
                               "awsV1HttpToken", "awsV2HttpEndpoint", "awsV2HttpToken")})
message("SerialPortSettings", INSTANCE_MSG, {
    "sshAuthorization": Enum(("SSH_AUTHORIZATION_UNSPECIFIED", "INSTANCE_METADATA", "OS_LOGIN")),
})
message("GpuSettings", INSTANCE_MSG, {"gpuClusterId": STRING})
message("Application", APPLICATION, {
    "containerSolution": "ContainerSolutionSpec", "cloudbackup": "BackupSpec",
}, oneof("container", "containerSolution"))
message("ContainerSolutionSpec", APPLICATION, {
    "productId": ID,
    "secrets": (Map("Secret"), key_length("<=100"), size("<=100")),
    "environment": (Map(), key_length("<=100"), length("<=10000"), size("<=100")),
})
message("Secret", APPLICATION, {
    "id": ID, "key": (STRING, required(), length("<=256")), "versionId": (STRING, length("<=50")),
})
message("BackupSpec", APPLICATION, {
    "enabled": BOOL,
    "initialPolicyIds": (Repeated(STRING), length("1-50"), size("<=50")),
    "recoveryFromBackup": BOOL,
    "backupId": (STRING, length("<=100")),
    "instanceRegistrationId": (STRING, length("<=100")),
})

# --- compute: disks, images, zones
message("GetDiskRequest", DISK, {"diskId": ID})
message("ListDisksRequest", DISK, {**page_fields(order_by=False),
                                   "orderBy": (STRING, replace(length("<=100"), source=DISK_NEW))})
message("GetImageRequest", IMAGE, {"imageId": ID})
message("ListImagesRequest", IMAGE, page_fields(order_by=False))
message("GetImageLatestByFamilyRequest", IMAGE, {
    "folderId": ID, "family": (STRING, pattern(r"|[a-z][-a-z0-9]{1,61}[a-z0-9]")),
})
message("ListZonesRequest", ZONE, {"pageSize": PAGE_SIZE, "pageToken": (STRING, length("<=100"))})

# --- compute: placement groups (no rules at all on CreatePlacementGroupRequest's own fields)
message("GetPlacementGroupRequest", PLACEMENT, {"placementGroupId": STRING})
message("ListPlacementGroupsRequest", PLACEMENT, page_fields())
message("CreatePlacementGroupRequest", PLACEMENT, {
    "folderId": STRING, "name": STRING, "description": STRING, "labels": Map(),
    "spreadPlacementStrategy": "SpreadPlacementStrategy",
    "partitionPlacementStrategy": "PartitionPlacementStrategy",
}, exactly_one("placement_strategy", "spreadPlacementStrategy", "partitionPlacementStrategy"))
message("SpreadPlacementStrategy", PLACEMENT_MSG, {})
message("PartitionPlacementStrategy", PLACEMENT_MSG, {"partitions": (INT64, value("2-5"))})
message("DeletePlacementGroupRequest", PLACEMENT, {"placementGroupId": STRING})
message("ListPlacementGroupInstancesRequest", PLACEMENT, {
    "placementGroupId": STRING, "pageSize": (INT64, PAGE_SIZE[2]), "pageToken": STRING,
})

# --- vpc
# Every VPC list but security groups: only `name`, only `=`, the value in double quotes and
# "3-63 characters long and match the regular expression `[a-z][-a-z0-9]{1,61}[a-z0-9]`" (so a
# subnet named with capitals, which its name rule allows, cannot be filtered for).
VPC_FILTER_VALUE = r"[a-z][-a-z0-9]{1,61}[a-z0-9]"
VPC_FILTER = re.compile(rf'\s*name\s*=\s*(?:"({VPC_FILTER_VALUE})"|({VPC_FILTER_VALUE}))\s*')


def _vpc_filter(text):
    if VPC_FILTER.fullmatch(text):
        return None
    return f'"{text}" must be name="<{VPC_FILTER_VALUE}>"'


def vpc_filter(file, message_name):
    return prose(f'name="<{VPC_FILTER_VALUE}>"', _vpc_filter,
                 f"{file} {message_name}.filter (comment) \"Currently you can use filtering only on "
                 "the [...name] field\", \"An `=` operator\", \"The value in double quotes (`\"`). Must be "
                 f"3-63 characters long and match the regular expression `{VPC_FILTER_VALUE}`\"")


def _subnet_block(text):
    try:
        block = ipaddress.ip_network(text)
    except ValueError:
        return f'"{text}" must be an IPv4 network in CIDR notation'
    if block.version != 4 or not 16 <= block.prefixlen <= 28:
        return f'"{text}" must be a network of /16 to /28'
    return None


V4_CIDR_BLOCKS = prose(
    "IPv4 networks of /16 to /28", _subnet_block,
    f"{SUBNET} CreateSubnetRequest.v4_cidr_blocks (comment) \"Minimum subnet size is /28, maximum "
    "subnet size is /16.\"")


def _vpc_list(file, name, with_filter_length=True):
    filter_rules = (length("<=1000"),) if with_filter_length else ()
    return page_fields((*filter_rules, vpc_filter(file, name)), order_by=False)


message("GetNetworkRequest", NETWORK, {"networkId": ID})
message("ListNetworksRequest", NETWORK, _vpc_list(NETWORK, "ListNetworksRequest"))
message("CreateNetworkRequest", NETWORK, {
    "folderId": ID, "name": (STRING, pattern(VPC_NAME)),
    "description": (STRING, length("<=256")), "labels": NARROW_LABELS,
})
message("DeleteNetworkRequest", NETWORK, {"networkId": ID})
message("ListNetworkSubnetsRequest", NETWORK, {
    "networkId": ID, "pageSize": PAGE_SIZE, "pageToken": (STRING, length("<=100")),
})

message("GetSubnetRequest", SUBNET, {"subnetId": ID})
message("ListSubnetsRequest", SUBNET, _vpc_list(SUBNET, "ListSubnetsRequest"))
_SUBNET_FIELDS = {
    "name": (STRING, pattern(VPC_NAME)), "description": (STRING, length("<=256")),
    "labels": NARROW_LABELS, "routeTableId": (STRING, length("<=50")), "dhcpOptions": "DhcpOptions",
}
message("CreateSubnetRequest", SUBNET, {
    "folderId": ID, **_SUBNET_FIELDS, "networkId": ID, "zoneId": ID,
    # Required in 0fba2d28, no longer in a29b54e7.
    "v4CidrBlocks": (Repeated(STRING), V4_CIDR_BLOCKS),
})
message("UpdateSubnetRequest", SUBNET, {
    "subnetId": ID, "updateMask": FIELD_MASK, **_SUBNET_FIELDS,
    # Its own comment says only "New CIDR blocks which will overwrite the existing ones".
    "v4CidrBlocks": (Repeated(STRING), replace(V4_CIDR_BLOCKS, source=V4_CIDR_BLOCKS.source.replace(
        "CreateSubnetRequest.v4_cidr_blocks (comment)",
        "UpdateSubnetRequest.v4_cidr_blocks (comment of CreateSubnetRequest.v4_cidr_blocks)"))),
})
message("DeleteSubnetRequest", SUBNET, {"subnetId": ID})
message("DhcpOptions", SUBNET_MSG, {
    "domainNameServers": Repeated(STRING), "domainName": STRING, "ntpServers": Repeated(STRING),
})

message("GetGatewayRequest", GATEWAY, {"gatewayId": ID})
message("ListGatewaysRequest", GATEWAY, _vpc_list(GATEWAY, "ListGatewaysRequest"))
message("CreateGatewayRequest", GATEWAY, {
    "folderId": ID, "name": (STRING, pattern(GATEWAY_NAME)),
    "description": (STRING, length("<=256")), "labels": WIDE_LABELS,
    "sharedEgressGatewaySpec": "SharedEgressGatewaySpec",
}, oneof("gateway", "sharedEgressGatewaySpec"))  # no exactly_one: the spec may be left out
message("SharedEgressGatewaySpec", GATEWAY, {})
message("DeleteGatewayRequest", GATEWAY, {"gatewayId": ID})

message("GetRouteTableRequest", ROUTE_TABLE, {"routeTableId": ID})
message("ListRouteTablesRequest", ROUTE_TABLE, _vpc_list(ROUTE_TABLE, "ListRouteTablesRequest"))
_ROUTE_TABLE_FIELDS = {
    "name": (STRING, pattern(VPC_NAME)), "description": (STRING, length("<=256")),
    "labels": NARROW_LABELS, "staticRoutes": Repeated("StaticRoute"),
}
message("CreateRouteTableRequest", ROUTE_TABLE, {"folderId": ID, **_ROUTE_TABLE_FIELDS,
                                                 "networkId": ID})
message("UpdateRouteTableRequest", ROUTE_TABLE, {"routeTableId": ID, "updateMask": FIELD_MASK,
                                                 **_ROUTE_TABLE_FIELDS})
message("DeleteRouteTableRequest", ROUTE_TABLE, {"routeTableId": ID})
# StaticRoute has no validation rules at all (nor had ab7aaaa6).
message("StaticRoute", ROUTE_TABLE_MSG, {
    "destinationPrefix": STRING, "nextHopAddress": STRING, "gatewayId": STRING, "labels": Map(),
}, oneof("destination", "destinationPrefix"), oneof("next_hop", "nextHopAddress", "gatewayId"))

message("GetSecurityGroupRequest", SECURITY_GROUP, {"securityGroupId": (STRING, required())})
# No rules on page_size, page_token or filter here: only the docs' 0-1000.
message("ListSecurityGroupsRequest", SECURITY_GROUP, {
    "folderId": (STRING, required()), "pageSize": (INT64, PAGE_SIZE[2]), "pageToken": STRING,
    "filter": STRING,
})
message("CreateSecurityGroupRequest", SECURITY_GROUP, {
    "folderId": ID, "name": (STRING, pattern(VPC_NAME)),
    "description": (STRING, length("<=256")), "labels": WIDE_LABELS,
    "networkId": (STRING, required()), "ruleSpecs": Repeated("SecurityGroupRuleSpec"),
})
message("SecurityGroupRuleSpec", SECURITY_GROUP, {
    "description": (STRING, length("<=256")), "labels": WIDE_LABELS,
    "direction": (Enum(("DIRECTION_UNSPECIFIED", "INGRESS", "EGRESS")), required()),
    "ports": "PortRange",
    "protocolName": STRING, "protocolNumber": INT64,
    "cidrBlocks": "CidrBlocks", "securityGroupId": STRING, "predefinedTarget": STRING,
}, oneof("protocol", "protocolName", "protocolNumber"),
    exactly_one("target", "cidrBlocks", "securityGroupId", "predefinedTarget"))
message("PortRange", SECURITY_GROUP_MSG, {
    "fromPort": (INT64, value("0-65535")), "toPort": (INT64, value("0-65535")),
})
message("CidrBlocks", SECURITY_GROUP_MSG, {"v4CidrBlocks": Repeated(STRING),
                                           "v6CidrBlocks": Repeated(STRING)})
message("DeleteSecurityGroupRequest", SECURITY_GROUP, {"securityGroupId": (STRING, required())})

message("GetAddressRequest", ADDRESS, {"addressId": ID})
message("ListAddressesRequest", ADDRESS, _vpc_list(ADDRESS, "ListAddressesRequest", with_filter_length=False))
message("CreateAddressRequest", ADDRESS, {
    "folderId": ID, "name": (STRING, pattern(VPC_NAME)),
    "description": (STRING, length("<=256")), "labels": NARROW_LABELS,
    "externalIpv4AddressSpec": "ExternalIpv4AddressSpec",
    "internalIpv4AddressSpec": "InternalIpv4AddressSpec",
    "deletionProtection": BOOL, "dnsRecordSpecs": Repeated("vpc.DnsRecordSpec"),
}, exactly_one("address_spec", "externalIpv4AddressSpec", "internalIpv4AddressSpec"))
message("ExternalIpv4AddressSpec", ADDRESS, {
    "address": STRING, "zoneId": STRING, "requirements": "AddressRequirements",
})
message("AddressRequirements", ADDRESS_MSG, {"ddosProtectionProvider": STRING,
                                             "outgoingSmtpCapability": STRING})
message("InternalIpv4AddressSpec", ADDRESS, {
    "address": (STRING, length("<=16")), "subnetId": (STRING, length("<=50")),
}, exactly_one("scope", "subnetId"))
message("vpc.DnsRecordSpec", ADDRESS, {
    "fqdn": (STRING, required()), "dnsZoneId": (STRING, required(), length("20")),
    "ttl": (INT64, value("0-86400")), "ptr": BOOL,
}, name="DnsRecordSpec")
message("DeleteAddressRequest", ADDRESS, {"addressId": ID})

# --- iam, operations
message("CreateIamTokenRequest", IAM_TOKEN, {
    "yandexPassportOauthToken": (STRING, length("<=4000")), "jwt": (STRING, length("<=8000")),
}, exactly_one("identity", "yandexPassportOauthToken", "jwt"))
message("GetOperationRequest", OPERATION, {"operationId": (STRING, required())})


# --- checking a request ----------------------------------------------------------------------------


def _join(path, name):
    return f"{path}.{name}" if path else name


def _bounds(spec, parse=int):
    """'<=N' -> (None, N); 'N' -> (N, N); 'A-B' -> (A, B)."""
    if spec.startswith("<="):
        return None, parse(spec[2:])
    low, _, high = spec.partition("-")
    return parse(low), parse(high or low)


def _within(number, spec, parse=int):
    """Does number satisfy a (value)/(length)/(size) spec? And how to say the spec."""
    if "," in spec:
        return number in {parse(v) for v in spec.split(",")}, f"one of {spec}"
    low, high = _bounds(spec, parse)
    ok = (low is None or number >= low) and number <= high
    if low is None:
        return ok, f"<={spec[2:]}"
    return ok, spec if low != high else f"exactly {spec}"


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def _duration_bound(text):
    return Fraction(text[:-1]) * _DURATION_UNITS[text[-1]]


def _duration(text):
    """google.protobuf.Duration in JSON: "3600s", "1.5s"."""
    match = re.fullmatch(r"(-?\d+(?:\.\d{1,9})?)s", text) if isinstance(text, str) else None
    return Fraction(match.group(1)) if match else None


def _unset(value):
    """Proto3's default values: what a server cannot tell from a field left out."""
    if isinstance(value, bool):
        return not value
    return value is None or value in ("", 0) or value in ([], {})


def _enum(path, kind, value):
    """An enum value by name (JSON may also give its number)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(kind.values):
        return kind.values[value]
    if value not in kind.values:
        raise invalid(path, f"{_shown(value)} must be one of {', '.join(kind.values)}")
    return value


def _scalar(path, kind, value):
    """The value of a scalar field, typed (int64 from a number or a string)."""
    if isinstance(kind, Enum):
        return _enum(path, kind, value)
    if kind is INT64:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
            return int(value)
        raise invalid(path, f"{_shown(value)} must be an int64 (a number or a string of digits)")
    if kind is BOOL:
        if not isinstance(value, bool):
            raise invalid(path, f"{_shown(value)} must be true or false")
        return value
    if kind is DURATION:
        if _duration(value) is None:
            raise invalid(path, f'{_shown(value)} must be a duration such as "3600s"')
        return value
    if not isinstance(value, str):  # string, FieldMask
        raise invalid(path, f"{_shown(value)} must be a string")
    return value


def _shown(value):
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 80 else text[:77] + "..."


def _typed(path, kind, value):
    """The JSON value checked against its type and normalized (int64 as int, enums by name)."""
    if isinstance(kind, Repeated):
        if not isinstance(value, list):
            raise invalid(path, "must be a list")
        return [_typed(f"{path}[{n}]", kind.item, item) for n, item in enumerate(value)]
    if isinstance(kind, Map):
        if not isinstance(value, dict):
            raise invalid(path, "must be an object (a map)")
        return {k: _typed(f'{path}["{k}"]', kind.value, v) for k, v in value.items()}
    if isinstance(kind, str):
        return _validate(kind, value, path)
    return _scalar(path, kind, value)


def _check_prose(rule, path, kind, value):
    """A rule from prose, on the value or (a repeated field) on each element."""
    items = enumerate(value) if isinstance(kind, Repeated) else [(None, value)]
    for n, item in items:
        problem = rule.check(item)
        if problem:
            raise invalid(path if n is None else f"{path}[{n}]", problem)


def _apply(rule, path, kind, value):
    """Raise if value (typed, set) breaks rule."""
    if rule.kind == "check":
        _check_prose(rule, path, kind, value)
        return
    if rule.kind == "size":
        ok, said = _within(len(value), rule.spec)
        if not ok:
            raise invalid(path, f"{len(value)} elements, the number must be {said}")
        return
    if rule.kind in ("key_length", "key_pattern"):
        for key in value:
            _check_key(rule, path, key)
        return
    if isinstance(kind, Map):
        for key, item in value.items():
            if not _unset(item):
                _check_one(rule, path, item, f'value {_shown(item)} of key "{key}"')
        return
    if isinstance(kind, Repeated):
        for n, item in enumerate(value):
            if not _unset(item):
                _check_one(rule, f"{path}[{n}]", item, None)
        return
    _check_one(rule, path, value, None)


def _check_key(rule, path, key):
    if rule.kind == "key_length":
        ok, said = _within(len(key), rule.spec)
        if not ok:
            raise invalid(path, f'key "{key}" has length {len(key)}, it must be {said}')
    elif not re.fullmatch(rule.spec, key):
        raise invalid(path, f'key "{key}" must match {rule.spec}')


def _check_one(rule, path, value, subject):
    if rule.kind == "length":
        ok, said = _within(len(value), rule.spec)
        if not ok:
            raise invalid(path, f"{subject or _shown(value)} has length {len(value)}, it must be {said}")
    elif rule.kind == "pattern":
        if not re.fullmatch(rule.spec, value):
            raise invalid(path, f"{subject or _shown(value)} must match {rule.spec}")
    elif rule.kind == "value":
        if isinstance(value, str):  # a Duration
            ok, _ = _within(_duration(value), rule.spec, _duration_bound)
            said = rule.spec
        else:
            ok, said = _within(value, rule.spec)
        if not ok:
            raise invalid(path, f"{subject or _shown(value)} must be {said}")
    else:
        raise AssertionError(rule.kind)


def _check_oneof(group, path, body):
    present = [m for m in group.members if body.get(m) is not None]
    if len(present) > 1 or (group.exactly_one and not present):
        got = ", ".join(present) or "none"
        rule = "exactly one" if group.exactly_one else "at most one"
        raise invalid(path, f"{rule} of {', '.join(group.members)} must be set, got {got}")


def _validate(key, body, path):
    msg = MESSAGES[key]
    if not isinstance(body, dict):
        raise invalid(path, f"{_shown(body)} must be an object ({msg.name})")
    for name in body:
        if name not in msg.types:
            # Whether Yandex's REST gateway refuses unknown fields is not in the sources; the
            # fake does, so that a misspelt field is not silently dropped.
            raise invalid(_join(path, name), f"unknown field of {msg.name}")
    for group in msg.oneofs:
        _check_oneof(group, path, body)
    typed = {}
    for name, kind in msg.types.items():
        where = _join(path, name)
        raw = body.get(name)
        rules = msg.rules[name]
        if raw is None:
            if any(r.kind == "required" for r in rules):
                raise invalid(where, "is required")
            continue
        if isinstance(kind, str):  # a message: its own fields first, then rules on it
            typed[name] = _validate(kind, raw, where)
            continue
        typed[name] = _typed(where, kind, raw)
        if _unset(typed[name]) or (isinstance(kind, Enum) and typed[name] == kind.values[0]):
            if any(r.kind == "required" for r in rules):
                raise invalid(where, "is required")
            continue
        for rule in rules:
            if rule.kind != "required":
                _apply(rule, where, kind, typed[name])
    return typed


def validate(key, body):
    """The request checked against its message's table: its typed form (int64 as int, enums
    by name), or ApiError(3) naming the first field that breaks a rule."""
    return _validate(key, {} if body is None else body, "")


def query(key, params):
    """A GET's query parameters (strings) as the message's fields; unknown ones are left out."""
    msg = MESSAGES[key]
    return validate(key, {k: v for k, v in params.items() if k in msg.types})


# --- platforms (docs) ------------------------------------------------------------------------------


def _steps(low, high, step):
    low, high, step = Fraction(low), Fraction(high), Fraction(step)
    return tuple(low + n * step for n in range(int((high - low) / step) + 1))


_EVEN_TO_16 = tuple(range(2, 17, 2))
_BURSTABLE = [((2, 4), _steps("0.5", 4, "0.5"))]
# Per platform and core fraction: [(vCPU counts, GB of memory per vCPU offered)], the docs'
# "Available configurations". Below 100 % only 2 or 4 vCPUs; on standard-v3 the memory per vCPU
# shrinks as the count grows. GB here are GiB (2^30 bytes), as the API's byte counts are.
PLATFORMS = {
    "standard-v1": {
        5: [((2, 4), _steps("0.5", 2, "0.5"))],
        20: _BURSTABLE,
        100: [((*_EVEN_TO_16, 20, 24, 28, 32), _steps(1, 8, 1))],
    },
    "standard-v2": {
        5: [((2, 4), (Fraction("0.25"), *_steps("0.5", 2, "0.5")))],
        20: _BURSTABLE,
        50: _BURSTABLE,
        100: [((*_EVEN_TO_16, *range(20, 81, 4)), _steps(1, 16, 1))],
    },
    "standard-v3": {
        20: _BURSTABLE,
        50: _BURSTABLE,
        100: [((*_EVEN_TO_16, 20, 36, 40), _steps(1, 16, 1)), ((24, 48), _steps(1, 13, 1)),
              ((28, 56), _steps(1, 11, 1)), ((32, 60, 64), _steps(1, 10, 1)),
              ((44,), _steps(1, 14, 1)), ((52,), _steps(1, 12, 1)), ((68,), _steps(1, 9, 1)),
              ((72, 76, 80), _steps(1, 8, 1)), ((84, 88), _steps(1, 7, 1)),
              ((92, 96), _steps(1, 6, 1))],
    },
    "highfreq-v3": {
        100: [((*_EVEN_TO_16, *range(20, 57, 4)), _steps(1, 16, 1))],
    },
}
GIB = 1024**3


def _listed(numbers):
    return ", ".join(f"{float(n):g}" for n in numbers)


def check_platform(platform, resources):
    """ResourcesSpec (typed, after its proto rules) against the docs' table for the platform:
    ApiError(3) naming the field. An unknown platform is NOT_FOUND. GPUs: no platform here has
    any (the table is the docs' CPU platforms)."""
    if platform not in PLATFORMS:
        raise ApiError(5, f"Platform {platform} not found")
    by_fraction = PLATFORMS[platform]
    cores, memory = resources["cores"], resources["memory"]
    fraction = resources.get("coreFraction") or 100  # unset means a full core
    if fraction not in by_fraction:
        raise invalid("resourcesSpec.coreFraction",
                      f"{fraction} must be one of {_listed(by_fraction)} on {platform}")
    if resources.get("gpus"):
        raise invalid("resourcesSpec.gpus", f"{resources['gpus']} must be 0 on {platform}")
    for counts, per_core in by_fraction[fraction]:
        if cores in counts:
            if Fraction(memory, GIB * cores) not in per_core:
                raise invalid("resourcesSpec.memory",
                              f"{memory} bytes is {float(Fraction(memory, GIB * cores)):g} GB per vCPU, it "
                              f"must be one of {_listed(per_core)} GB per vCPU on {platform} at "
                              f"{fraction}% with {cores} vCPUs")
            return
    offered = sorted(c for counts, _ in by_fraction[fraction] for c in counts)
    raise invalid("resourcesSpec.cores",
                  f"{cores} must be one of {_listed(offered)} on {platform} at {fraction}%")
