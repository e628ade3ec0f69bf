"""The lab itself: four Debian 12 hosts, each with its own systemd, network and minion."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from lab import settings
from lab.cluster import cluster, salt
from tests.conftest import REPO, VENV_BIN, run
from tests.lab.conftest import LAB, lab_exec

C = cluster()
HOSTS = C.hosts  # the lab map makes the hosts the pillar describes
MASTER = settings.GATEWAY  # the salt-master listens on the lab's bridge
FIRST, SECOND, THIRD = C.model["member_names"][:3]
WEB = C.web


def status() -> dict:
    return {h["name"]: h for h in json.loads(run(LAB, "status", "--json").stdout)}


def ping_all() -> dict:
    return salt("*", "test.ping", timeout=15)


def tcp_probe(host: str, address: str, port: int, timeout: float = 3) -> str:
    """From inside a lab host: 'open', 'refused' (a live host said no) or 'silent' (no answer:
    the connection timed out, or ARP found nobody), as with a dead or cut-off machine."""
    code = (
        "import errno, socket\n"
        f"s = socket.socket(); s.settimeout({timeout})\n"
        "try:\n"
        f"    s.connect(('{address}', {port})); print('open')\n"
        "except ConnectionRefusedError: print('refused')\n"
        "except TimeoutError: print('silent')\n"
        "except OSError as e: print('silent' if e.errno == errno.EHOSTUNREACH else repr(e))\n"
    )
    return lab_exec(host, "python3", "-c", code, timeout=timeout + 30).stdout.strip()


def host_pids(name: str) -> set[int]:
    """Every process of a host: its systemd-nspawn and all in its cgroup tree."""
    pids = {status()[name]["pid"]}
    for procs in Path(f"/sys/fs/cgroup/systemd/pglab/{name}").rglob("cgroup.procs"):
        pids.update(int(p) for p in procs.read_text().split())
    return pids


def test_every_minion_answers(lab):
    assert ping_all() == {name: True for name in HOSTS}


def test_hosts_are_booted_debian_12_with_their_own_identity(lab):
    grains = salt("*", "grains.item", "os", "osrelease", "init", "virtual", "host", "ipv4",
                  "machine_id", check=True)
    assert set(grains) == set(HOSTS)
    for name, g in grains.items():
        assert (g["os"], g["osrelease"], g["init"]) == ("Debian", "12", "systemd")
        assert g["virtual"] == "systemd-nspawn"
        assert g["host"] == name
        assert HOSTS[name] in g["ipv4"]
    assert len({g["machine_id"] for g in grains.values()}) == len(HOSTS)
    hosts_file = lab_exec(WEB, "getent", "hosts", FIRST).stdout
    assert hosts_file.split()[0] == HOSTS[FIRST]


def test_salt_cloud_lists_four_running_nodes(lab):
    nodes = salt("-Q", tool="salt-cloud", check=True)["lab"]["lab"]
    assert set(nodes) == set(HOSTS)
    for name, node in nodes.items():
        assert node["state"] == "running"
        assert node["private_ips"] == [HOSTS[name]]
        assert node["image"] == "debian-12"


def test_every_minion_and_the_master_look_a_function_up_in_its_own_module_only(lab):
    # etc/salt/cloud gives every minion salt-cloud makes the loader's strict matching (a
    # lookup that misses would import every state and execution module, in every state run).
    assert salt("*", "config.get", "lazy_loader_strict_matching", timeout=30) == \
        {name: True for name in HOSTS}
    master = run(VENV_BIN / "salt-run", "config.get", "lazy_loader_strict_matching", "--out=json")
    assert json.loads(master.stdout) is True


def test_running_the_map_again_creates_nothing(lab):
    before = {name: h["pid"] for name, h in status().items()}
    out = run(VENV_BIN / "salt-cloud", "-m", "cloud.maps.d/lab.map", "-P", "-y")
    assert "already exists" in out.stdout + out.stderr
    assert {name: h["pid"] for name, h in status().items()} == before


def test_packages_come_from_the_lab_repository_and_are_not_preinstalled(lab):
    lab_exec(FIRST, "apt-get", "update", "-q")
    policy = lab_exec(FIRST, "apt-cache", "policy", "postgresql-15").stdout
    assert "file:/srv/pglab/apt" in policy
    # The image the hosts boot from is bare: what the cluster needs, the states install.
    images = list(Path("/var/cache/pglab").glob("image-*"))
    assert images and not any((i / "usr/lib/postgresql").exists() for i in images)
    assert not any((i / "usr/bin/etcd").exists() for i in images)
    pip = lab_exec(FIRST, "cat", "/etc/pip.conf").stdout
    assert "find-links = /srv/pglab/wheels" in pip
    wheels = lab_exec(FIRST, "ls", "/srv/pglab/wheels").stdout
    assert re.search(r"^patroni-4\.1\.\d+-", wheels, re.M)


def test_hosts_reach_each_other_and_nothing_beyond_the_lab(lab):
    assert "default" not in lab_exec(WEB, "ip", "route").stdout
    assert lab_exec(WEB, "ping", "-c1", "-W2", HOSTS[FIRST], check=False).returncode == 0
    # No route out: an address beyond the lab subnet is unreachable at once.
    out = lab_exec(WEB, "ping", "-c1", "-W1", "192.0.2.1", check=False)
    assert out.returncode != 0
    assert "unreachable" in (out.stdout + out.stderr).lower()


def test_partition_cuts_a_host_off_silently_and_heal_restores_it(lab):
    run(LAB, "partition", THIRD)
    try:
        assert status()[THIRD]["state"] == "partitioned"
        # Silence, not resets: even a closed port of the cut-off host does not answer...
        assert tcp_probe(FIRST, HOSTS[THIRD], 22) == "silent"
        # ...and it cannot reach the others or the salt-master.
        assert tcp_probe(THIRD, MASTER, 4506) == "silent"
        assert salt(THIRD, "test.ping", timeout=5).get(THIRD) is not True
    finally:
        run(LAB, "heal", THIRD)
    assert status()[THIRD]["state"] == "running"
    assert tcp_probe(FIRST, HOSTS[THIRD], 22) == "refused"
    _wait_minion(THIRD, timeout=60)


def test_crash_kills_everything_at_once_and_the_address_goes_silent(lab):
    family = host_pids(SECOND)
    assert len(family) > 5  # nspawn, systemd, journald, the minion...
    run(LAB, "crash", SECOND)
    assert status()[SECOND]["state"] == "stopped"
    for p in family:
        assert not _alive(p), f"process {p} of the crashed host survived"
    assert tcp_probe(FIRST, HOSTS[SECOND], 22) == "silent"
    run(LAB, "start", SECOND)
    assert status()[SECOND]["state"] == "running"
    _wait_minion(SECOND)
    # Its data disk came back through one loop device, not two (the old one was cleared).
    disks = list((settings.HOSTS_DIR / SECOND / "disks").glob("*.img"))
    assert disks, f"{SECOND} has no data disk"
    for disk in disks:
        assert len(_loops_of(disk)) == 1, run("losetup", "--list").stdout


def _loops_of(disk_file: Path) -> list[str]:
    return run("losetup", "--noheadings", "--output", "NAME", "--associated", disk_file).stdout.split()


def test_clean_stop_and_start_through_salt_cloud_actions(lab):
    machine_id = lab_exec(WEB, "cat", "/etc/machine-id").stdout.strip()
    marker = f"/var/tmp/survives-a-stop-{time.time_ns()}"
    lab_exec(WEB, "touch", marker)
    out = salt("-a", "stop", WEB, "-y", tool="salt-cloud", check=True)
    assert "stopped" in json.dumps(out)
    assert status()[WEB]["state"] == "stopped"
    salt("-a", "start", WEB, "-y", tool="salt-cloud", check=True)
    assert status()[WEB]["state"] == "running"
    _wait_minion(WEB)
    # The disk survived the power-off: the same machine id, and a file written before it.
    assert lab_exec(WEB, "cat", "/etc/machine-id").stdout.strip() == machine_id
    assert lab_exec(WEB, "test", "-f", marker, check=False).returncode == 0


def test_destroy_and_recreate_through_salt_cloud(lab):
    run(VENV_BIN / "salt-cloud", "-d", WEB, "-y")
    assert WEB not in status()
    keys = salt("-L", tool="salt-key", check=True)
    assert WEB not in keys.get("minions", [])
    run(VENV_BIN / "salt-cloud", "-m", "cloud.maps.d/lab.map", "-P", "-y")
    assert status()[WEB]["state"] == "running"
    _wait_minion(WEB)
    # A fresh VM converges with one highstate (and the cluster has its web host back).
    result = salt(WEB, "state.apply", timeout=600, check=True)
    assert all(s["result"] for s in result[WEB].values())


@pytest.mark.lab_last
def test_up_recovers_from_a_killed_lab(lab):
    """Everything the lab started dies at once (as when a session is ended): `up` carries on."""
    victims = set()
    for name in HOSTS:
        victims |= host_pids(name)
    victims |= set(map(int, subprocess.run(["pgrep", "-f", f"salt-master -c {REPO}/etc/salt"],
                                           capture_output=True, text=True, check=False).stdout.split()))
    subprocess.run(["kill", "-KILL", *map(str, victims)], check=False)
    time.sleep(1)
    assert not any(_alive(p) for p in victims)
    run(LAB, "up", timeout=600)
    assert ping_all() == {name: True for name in HOSTS}


@pytest.mark.lab_last
def test_down_leaves_nothing_behind(lab):
    run(LAB, "down")
    assert "pglab" not in run("ip", "netns", "list").stdout
    assert "pglab" not in run("ip", "-o", "link").stdout
    mounts = open("/proc/mounts").read()
    assert "pglab" not in mounts and "/run/systemd/nspawn" not in mounts
    for hierarchy in ("systemd", "unified", "memory"):
        assert not Path(f"/sys/fs/cgroup/{hierarchy}/pglab").exists()
    leftovers = subprocess.run(["pgrep", "-f", f"systemd-nspawn.*--machine=|salt-master -c {REPO}"],
                               capture_output=True, text=True, check=False).stdout
    assert leftovers == ""
    assert "pglab" not in run("nft", "list", "tables").stdout
    assert str(settings.STATE) not in run("losetup", "--list").stdout  # the hosts' data disks


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_minion(name: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while salt(name, "test.ping", timeout=5).get(name) is not True:
        assert time.monotonic() < deadline, f"{name}'s minion did not answer within {timeout}s"
        time.sleep(1)


def test_tcp_probe_helper_sees_an_open_port(lab):
    # The probes above mean something only if 'open' is reachable: the salt-master's port is.
    assert tcp_probe(WEB, MASTER, 4506) == "open"


def test_this_machine_runs_none_of_the_packages_services(lab):
    """make apt installs PostgreSQL, PgBouncer, etcd, nginx and HAProxy here for the tests'
    own throw-away copies: none of them may run as this machine's service (bin/host-packages)."""
    listening = {line.split()[3].rpartition(":")[2] for line in
                 run("ss", "-ltnH").stdout.splitlines() if line.strip()}
    assert not listening & {"5432", "6432", "2379", "2380"}, sorted(listening)
