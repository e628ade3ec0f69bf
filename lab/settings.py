"""Where the lab keeps things and how its network is laid out.

One lab per machine: names (bridge, namespaces, cgroups) are fixed so that a later run can
always find and clean up what an earlier one left, even if that run was killed.
"""

from __future__ import annotations

import os
from pathlib import Path

NAME = "pglab"

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"

# Built once and kept across `make lab-down`: the Debian image, the apt repository and the
# Python wheelhouse. Each is keyed by a hash of its recipe, so a changed recipe rebuilds it.
CACHE = Path(os.environ.get("PGLAB_CACHE", "/var/cache/pglab"))
# Everything below goes away with `make lab-down`.
STATE = Path("/var/lib/pglab")
HOSTS_DIR = STATE / "hosts"
MASTER_ROOT = STATE / "master"
RUN = Path("/run/pglab")
NSPAWN_RUNTIME = Path("/run/systemd/nspawn")  # nspawn needs a tmpfs here (lab.md pitfall 3)

# The original task's addresses (10.0.0.11-13), as in the Yandex map: one pillar serves both.
BRIDGE = f"{NAME}0"
SUBNET_PREFIX = "10.0.0"
PREFIXLEN = 24
GATEWAY = f"{SUBNET_PREFIX}.1"  # the bridge: the salt-master listens here
SUBNET = f"{SUBNET_PREFIX}.0/{PREFIXLEN}"

# Inside every host: where the read-only package sources are mounted.
HOST_APT_DIR = "/srv/pglab/apt"
HOST_WHEEL_DIR = "/srv/pglab/wheels"

# cgroup v1 hierarchies the lab makes a folder in per host (lab.md pitfall 4); memory gives
# per-host figures for `bin/lab status`.
CGROUP_HIERARCHIES = ("systemd", "unified", "memory")
CGROUP_ROOT = Path("/sys/fs/cgroup")

SUITE = "bookworm"
IMAGE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "python3",
    "ca-certificates",
    "procps",
    "iputils-ping",
)

# What the states install on the hosts, fetched once with every dependency into the lab's
# apt repository. The image itself stays bare: the states install these, as on a fresh VM.
APT_PACKAGES = (
    "postgresql-15",
    "postgresql-client-15",
    "postgresql-contrib",
    "etcd-server",
    "etcd-client",
    "haproxy",
    "nginx",
    "pgbouncer",
    "gunicorn",
    "python3-psycopg2",
    "python3-venv",
    "python3-pip",
    "nftables",
    "curl",
    "jq",
    "less",
    "rsync",
    "pgbackrest",
    "prometheus",
    "prometheus-alertmanager",
    "prometheus-node-exporter",
    "prometheus-postgres-exporter",
    "python3-prometheus-client",
)

# What the states install from PyPI, fetched once for the hosts' Python (Debian 12's 3.11).
WHEELS = (
    "patroni[etcd3]==4.1.5",
    "psycopg2-binary==2.9.13",
)

# --- the emulated Yandex Cloud (lab/yandex/cloud.py; bin/lab cloud up|down) ---------------------
# Its VMs are lab hosts of kind "cloud": booted from the cloud image (the lab's image plus
# cloud-init, sshd and sudo), each on the bridge of its subnet. A router namespace joins the
# subnets, serves the metadata service and, for subnets with a NAT gateway route (or VMs with
# a public address), masquerades out to "the internet": a namespace of its own whose only
# server is the lab's package mirror and wheelhouse.
CLOUD_STATE = STATE / "cloud"
CLOUD_API_PORT = 18443  # the fake API, on loopback only
CLOUD_API_URL = f"http://127.0.0.1:{CLOUD_API_PORT}"
CLOUD_PIDFILE = RUN / "cloud.pid"
# "--": no host's namespace (pglab-<host name>, which starts with a letter) can be called so.
ROUTER_NS = f"{NAME}--vpc"
INTERNET_NS = f"{NAME}--inet"
# The link between the router and the internet: the router's end and the mirror's address.
INTERNET_ROUTER_END = "10.0.250.1"
INTERNET_MIRROR = "10.0.250.2"
INTERNET_PREFIXLEN = 30
METADATA_ADDRESS = "169.254.169.254"
# Yandex Object Storage, served beside the mirror (lab/object_storage.py: INTERNET) with a
# certificate of the emulated internet's own CA. DNS is not emulated: a cloud VM's /etc/hosts
# names the internet's servers and its trust store has that CA, as a real VM resolves the name
# and trusts the public CAs.
OBJECT_STORAGE_ENDPOINT = "storage.yandexcloud.net"
OBJECT_STORAGE_PORT = 443
INTERNET_HOSTS = {OBJECT_STORAGE_ENDPOINT: INTERNET_MIRROR}
INTERNET_PKI = CLOUD_STATE / "internet-pki"
# The emulated cloud's VPC may use these private blocks only (the lab's own range).
CLOUD_ALLOWED_BLOCK = "10.0.0.0/16"
CLOUD_IMAGE_PACKAGES = ("cloud-init", "openssh-server", "sudo")
# Where the image's apt and pip look for packages: what the internet is to a Yandex VM.
MIRROR_APT_URL = f"http://{INTERNET_MIRROR}/debian"
MIRROR_PIP_INDEX = f"http://{INTERNET_MIRROR}/simple/"
# What salt-cloud's deploy script installs on a VM from the package index: the master's Salt.
SALT_VERSION = "3008.4"
