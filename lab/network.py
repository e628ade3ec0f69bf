"""The lab network: one bridge, one network namespace and veth pair per host.

No default route inside the hosts and no forwarding on the machine: the hosts reach each other
and the bridge address (the salt-master) and nothing else. Partitions are nftables rules in the
bridge family, so a cut-off host's traffic is silently dropped, as on a real network.
"""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess
from pathlib import Path

from . import settings
from .system import LabError, run

NFT_TABLE = settings.NAME


def netns_name(host: str) -> str:
    return f"{settings.NAME}-{host}"


def netns_path(host: str) -> Path:
    return Path("/run/netns") / netns_name(host)


def veth_name(address: str) -> str:
    # Interface names are at most 15 characters: name the host end after the address (its
    # last number in the lab's subnet, the last two in the emulated cloud's subnets).
    octets = address.split(".")
    if address.startswith(settings.SUBNET_PREFIX + "."):
        return f"{settings.NAME}-v{octets[3]}"
    return f"{settings.NAME}-v{octets[2]}-{octets[3]}"


def validate_address(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise LabError(f"'{address}' is not an IPv4 address") from None
    if ip not in ipaddress.ip_network(settings.SUBNET) or str(ip) in (settings.GATEWAY,):
        raise LabError(f"address {address} is not a host address in the lab subnet {settings.SUBNET}")
    last = int(address.rsplit(".", 1)[1])
    if last in (0, 255):
        raise LabError(f"address {address} is not a host address in the lab subnet {settings.SUBNET}")
    return str(ip)


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def check_subnet_is_free() -> None:
    """The lab's subnet must not be one this machine already reaches through another link."""
    routes = run("ip", "-o", "-4", "route", "show", "to", "match", settings.GATEWAY,
                 capture=True).stdout
    for line in routes.splitlines():
        fields = line.split()
        if fields[0] != "default" and "dev" in fields and fields[fields.index("dev") + 1] != settings.BRIDGE:
            raise LabError(
                f"this machine already routes {settings.SUBNET} ({line.strip()}): the lab needs "
                "that subnet for itself; change SUBNET_PREFIX in lab/settings.py and the maps"
            )


def ensure_bridge() -> None:
    if not link_exists(settings.BRIDGE):
        check_subnet_is_free()
        run("ip", "link", "add", settings.BRIDGE, "type", "bridge")
    addresses = run("ip", "-o", "-4", "addr", "show", "dev", settings.BRIDGE, capture=True).stdout
    if f"{settings.GATEWAY}/" not in addresses:
        run("ip", "addr", "add", f"{settings.GATEWAY}/{settings.PREFIXLEN}", "dev", settings.BRIDGE)
    run("ip", "link", "set", settings.BRIDGE, "up")
    ensure_partition_table()


def ensure_partition_table() -> None:
    """A bridge-family table whose set of cut-off ports drops every frame in and out."""
    if run("nft", "list", "table", "bridge", NFT_TABLE, check=False, quiet=True).returncode == 0:
        return
    ruleset = f"""
table bridge {NFT_TABLE} {{
    set partitioned {{ type ifname; }}
    chain inbound {{ type filter hook prerouting priority -200; iifname @partitioned drop; }}
    chain outbound {{ type filter hook postrouting priority -200; oifname @partitioned drop; }}
}}
"""
    result = subprocess.run(["nft", "-f", "-"], check=False, input=ruleset, text=True, capture_output=True)
    if result.returncode != 0:
        raise LabError(f"cannot create the nftables bridge table for partitions: {result.stderr.strip()}")


def remove_bridge() -> None:
    run("nft", "delete", "table", "bridge", NFT_TABLE, check=False, quiet=True)
    if link_exists(settings.BRIDGE):
        run("ip", "link", "del", settings.BRIDGE, check=False, quiet=True)


def ensure_host_network(host: str, address: str, subnet: str | None = None) -> None:
    """Create the host's namespace with eth0 at address, plugged into the bridge: the lab's,
    or the emulated cloud's bridge of `subnet`, whose router (its first address) is then the
    host's default gateway, as DHCP makes it on a Yandex VM."""
    if subnet is None:
        ensure_bridge()
        bridge, prefixlen, gateway = settings.BRIDGE, settings.PREFIXLEN, None
    else:
        network = ipaddress.ip_network(subnet)
        bridge, prefixlen, gateway = subnet_bridge(subnet), network.prefixlen, str(network[1])
        if not link_exists(bridge):
            raise LabError(f"the emulated cloud has no subnet {subnet} (bin/lab cloud status)")
    ns, veth = netns_name(host), veth_name(address)
    if not netns_path(host).exists():
        run("ip", "netns", "add", ns)
    peer_in_ns = run("ip", "-n", ns, "link", "show", "eth0", check=False, quiet=True).returncode == 0
    if not peer_in_ns:
        if link_exists(veth):
            run("ip", "link", "del", veth)
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
        run("ip", "link", "set", f"{veth}p", "netns", ns)
        run("ip", "-n", ns, "link", "set", f"{veth}p", "name", "eth0")
    elif not link_exists(veth):
        raise LabError(f"namespace {ns} has an eth0 whose peer {veth} is gone; run `bin/lab down`")
    run("ip", "link", "set", veth, "master", bridge)
    run("ip", "link", "set", veth, "up")
    have = run("ip", "-n", ns, "-o", "-4", "addr", "show", "dev", "eth0", capture=True).stdout
    if f"{address}/" not in have:
        run("ip", "-n", ns, "addr", "flush", "dev", "eth0")
        run("ip", "-n", ns, "addr", "add", f"{address}/{prefixlen}", "dev", "eth0")
    run("ip", "-n", ns, "link", "set", "eth0", "up")
    run("ip", "-n", ns, "link", "set", "lo", "up")
    if gateway:
        run("ip", "-n", ns, "route", "replace", "default", "via", gateway, "dev", "eth0")
    heal(address)


def subnet_bridge(subnet: str) -> str:
    """The emulated cloud's bridge of a subnet: named after a hash of its block (15 characters)."""
    return f"{settings.NAME}-n{hashlib.sha256(subnet.encode()).hexdigest()[:8]}"


def remove_host_network(host: str, address: str | None) -> None:
    if address:
        heal(address)
        if link_exists(veth_name(address)):
            run("ip", "link", "del", veth_name(address), check=False, quiet=True)
    if netns_path(host).exists():
        run("ip", "netns", "del", netns_name(host), check=False, quiet=True)


def partition(address: str) -> None:
    ensure_partition_table()
    run("nft", "add", "element", "bridge", NFT_TABLE, "partitioned", f"{{ {veth_name(address)} }}")


def heal(address: str) -> None:
    if is_partitioned(address):
        run("nft", "delete", "element", "bridge", NFT_TABLE, "partitioned",
            f"{{ {veth_name(address)} }}")


def is_partitioned(address: str) -> bool:
    listing = run("nft", "list", "set", "bridge", NFT_TABLE, "partitioned", check=False, quiet=True)
    return listing.returncode == 0 and f'"{veth_name(address)}"' in listing.stdout


def stale_namespaces() -> list[str]:
    prefix = f"{settings.NAME}-"
    listing = run("ip", "netns", "list", check=False, capture=True).stdout
    # The emulated cloud's router and internet are not hosts' (lab/vpc.py removes them).
    cloud = (settings.ROUTER_NS, settings.INTERNET_NS)
    return [line.split()[0] for line in listing.splitlines()
            if line.startswith(prefix) and line.split()[0] not in cloud]


def stale_veths() -> list[str]:
    prefix = f"{settings.NAME}-v"
    return [p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith(prefix)]
