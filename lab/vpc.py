"""The emulated cloud's network (a Yandex VPC, made of lab parts).

- Each subnet is a bridge on the machine (network.subnet_bridge). Its first address is the
  router's, as in a Yandex subnet, and the VMs' default gateway.
- The router is a network namespace of its own (ROUTER_NS), the one place where forwarding is
  on (never on the machine). It joins the subnets, holds the metadata service's address
  (169.254.169.254, served by the emulation from inside it), and forwards to "the internet"
  only from the sources in its `egress` set: the subnets routed through a NAT gateway and the
  VMs with a public address. It masquerades them, as a NAT gateway does.
- The internet is another namespace (INTERNET_NS) at the far end of a /30 from the router, with
  one server: the lab's package mirror. It has no route anywhere else, so nothing a VM sends
  leaves the lab.
- The machine joins the subnet of the salt-master's address (the master runs "on a VM" there)
  and routes to the other subnets through the router, as a VM in that subnet would.
"""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

from . import settings
from .network import link_exists, subnet_bridge
from .system import LabError, run

TABLE = f"{settings.NAME}_vpc"
INTERNET_IF = "inet"  # the router's end of the link to the internet


def _router(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run("ip", "netns", "exec", settings.ROUTER_NS, *args, **kwargs)


def _router_if(subnet: str) -> str:
    return "s" + subnet_bridge(subnet).rsplit("-n", 1)[1]


def _machine_veth(subnet: str) -> str:
    return f"{settings.NAME}-r" + subnet_bridge(subnet).rsplit("-n", 1)[1]


def _ns_exists(name: str) -> bool:
    listing = run("ip", "netns", "list", capture=True, check=False).stdout
    return any(line.split()[0] == name for line in listing.splitlines() if line.strip())


def ensure_router() -> None:
    """The router and the internet behind it, with nobody allowed out yet."""
    for ns in (settings.ROUTER_NS, settings.INTERNET_NS):
        if not _ns_exists(ns):
            run("ip", "netns", "add", ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
    have = run("ip", "-n", settings.ROUTER_NS, "-o", "-4", "addr", "show", "dev", "lo",
               capture=True).stdout
    if f"{settings.METADATA_ADDRESS}/" not in have:
        run("ip", "-n", settings.ROUTER_NS, "addr", "add", f"{settings.METADATA_ADDRESS}/32", "dev", "lo")
    _router("sysctl", "-qw", "net.ipv4.ip_forward=1")
    if run("ip", "-n", settings.ROUTER_NS, "link", "show", INTERNET_IF, check=False,
           quiet=True).returncode != 0:
        pair = f"{settings.NAME}-inet"
        run("ip", "link", "add", pair, "type", "veth", "peer", "name", f"{pair}p")
        run("ip", "link", "set", pair, "netns", settings.ROUTER_NS)
        run("ip", "-n", settings.ROUTER_NS, "link", "set", pair, "name", INTERNET_IF)
        run("ip", "link", "set", f"{pair}p", "netns", settings.INTERNET_NS)
        run("ip", "-n", settings.INTERNET_NS, "link", "set", f"{pair}p", "name", "eth0")
        prefix = settings.INTERNET_PREFIXLEN
        run("ip", "-n", settings.ROUTER_NS, "addr", "add",
            f"{settings.INTERNET_ROUTER_END}/{prefix}", "dev", INTERNET_IF)
        run("ip", "-n", settings.INTERNET_NS, "addr", "add",
            f"{settings.INTERNET_MIRROR}/{prefix}", "dev", "eth0")
        run("ip", "-n", settings.ROUTER_NS, "link", "set", INTERNET_IF, "up")
        run("ip", "-n", settings.INTERNET_NS, "link", "set", "eth0", "up")
    if _router("nft", "list", "table", "inet", TABLE, check=False, quiet=True).returncode != 0:
        ruleset = f"""
table inet {TABLE} {{
    set egress {{ type ipv4_addr; flags interval; }}
    chain forward {{
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "s*" oifname "s*" accept
        iifname "s*" oifname "{INTERNET_IF}" ip saddr @egress accept
    }}
    chain postrouting {{
        type nat hook postrouting priority 100;
        oifname "{INTERNET_IF}" masquerade
    }}
}}
"""
        result = subprocess.run(["ip", "netns", "exec", settings.ROUTER_NS, "nft", "-f", "-"],
                                check=False, input=ruleset, text=True, capture_output=True)
        if result.returncode != 0:
            raise LabError(f"cannot set up the emulated cloud's router: {result.stderr.strip()}")


def check_subnet(subnet: str) -> ipaddress.IPv4Network:
    """A subnet the emulation can make: inside the lab's block, clear of the lab's own ranges."""
    try:
        network = ipaddress.ip_network(subnet)
    except ValueError:
        raise LabError(f"{subnet} is not an IPv4 block") from None
    allowed = ipaddress.ip_network(settings.CLOUD_ALLOWED_BLOCK)
    taken = [ipaddress.ip_network(settings.SUBNET),
             ipaddress.ip_network(f"{settings.INTERNET_ROUTER_END}/{settings.INTERNET_PREFIXLEN}",
                                  strict=False)]
    if network.version != 4 or not network.subnet_of(allowed) or any(network.overlaps(t) for t in taken):
        raise LabError(f"the emulated cloud makes subnets inside {allowed} only, clear of "
                       f"{', '.join(map(str, taken))} (the lab's own): not {subnet}")
    # Nor one this machine already reaches some other way: its routes are not the lab's to change.
    routes = run("ip", "-o", "-4", "route", "show", "to", "match", str(network[1]), capture=True).stdout
    for line in routes.splitlines():
        fields = line.split()
        dev = fields[fields.index("dev") + 1] if "dev" in fields else ""
        if fields[0] != "default" and not dev.startswith(f"{settings.NAME}-n"):
            raise LabError(f"this machine already routes {subnet} ({line.strip()}): the emulated "
                           "cloud needs it for itself; change the provider's network:subnets")
    return network


def ensure_subnet(subnet: str, router: bool = True) -> None:
    """The subnet's bridge, and (unless router=False) the router's leg in it."""
    network = check_subnet(subnet)
    bridge, veth, inside = subnet_bridge(subnet), _machine_veth(subnet), _router_if(subnet)
    if not link_exists(bridge):
        run("ip", "link", "add", bridge, "type", "bridge")
    run("ip", "link", "set", bridge, "up")
    if not router:
        return
    if not link_exists(veth):
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", inside)
        run("ip", "link", "set", inside, "netns", settings.ROUTER_NS)
        run("ip", "-n", settings.ROUTER_NS, "addr", "add", f"{network[1]}/{network.prefixlen}",
            "dev", inside)
    run("ip", "link", "set", veth, "master", bridge)
    run("ip", "link", "set", veth, "up")
    run("ip", "-n", settings.ROUTER_NS, "link", "set", inside, "up")


def remove_subnet(subnet: str, keep_bridge: bool = False) -> None:
    """The router's leg in the subnet and its bridge (kept for the master's own subnet)."""
    for link in (_machine_veth(subnet), *([] if keep_bridge else [subnet_bridge(subnet)])):
        if link_exists(link):
            run("ip", "link", "del", link, check=False, quiet=True)


def set_egress(sources: list[str]) -> None:
    """Who may reach the internet: blocks (subnets with a NAT route) and addresses (VMs with a
    public address)."""
    elements = ", ".join(sorted(set(sources)))
    commands = f"flush set inet {TABLE} egress\n"
    if elements:
        commands += f"add element inet {TABLE} egress {{ {elements} }}\n"
    result = subprocess.run(["ip", "netns", "exec", settings.ROUTER_NS, "nft", "-f", "-"],
                            check=False, input=commands, text=True, capture_output=True)
    if result.returncode != 0:
        raise LabError(f"cannot set the emulated cloud's egress: {result.stderr.strip()}")


def join_machine(address: str, subnets: list[str]) -> None:
    """Put the machine at `address` in its subnet and route it to the others via the router."""
    home = next((s for s in subnets if ipaddress.ip_address(address) in ipaddress.ip_network(s)), None)
    if home is None:
        return
    network, bridge = ipaddress.ip_network(home), subnet_bridge(home)
    have = run("ip", "-o", "-4", "addr", "show", "dev", bridge, capture=True).stdout
    if f"{address}/" not in have:
        run("ip", "addr", "add", f"{address}/{network.prefixlen}", "dev", bridge)
    for other in subnets:
        if other != home:
            run("ip", "route", "replace", other, "via", str(network[1]), "dev", bridge)


def subnet_links() -> list[str]:
    """Every bridge and router link of the emulated cloud on the machine."""
    prefixes = (f"{settings.NAME}-n", f"{settings.NAME}-r")
    return sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith(prefixes))


def teardown() -> None:
    """Remove the router, the internet and every subnet (routes through them go with them)."""
    for ns in (settings.ROUTER_NS, settings.INTERNET_NS):
        if _ns_exists(ns):
            run("ip", "netns", "del", ns, check=False, quiet=True)
    for link in subnet_links():
        if link_exists(link):
            run("ip", "link", "del", link, check=False, quiet=True)
