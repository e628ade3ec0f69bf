"""
The local lab as a salt-cloud provider
======================================

Creates Debian 12 hosts on this machine (systemd-nspawn containers with their own systemd,
network namespace and address) through ``bin/lab``, so that the same map -> bootstrap ->
orchestration flow that runs on Yandex Cloud runs locally.

Provider (``cloud.providers.d/lab.conf``):

.. code-block:: yaml

    lab:
      driver: lab
      minion:
        master: 10.0.0.1

Profile options: ``ip_address`` (the host's address in the lab subnet, required) and
``secondary_disks`` as in the Yandex driver (``[{size: GB, device_name: NAME}]``, at most 3): each
a sparse file on this machine that the host sees as ``/dev/disk/by-id/virtio-NAME``.

The minion is bootstrapped the way salt-cloud does it: a key pair is generated here, the public
key is accepted on the master, and the minion's config and keys are laid into the new host
before it boots. The minion itself runs from the machine's Salt environment, mounted read-only.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile

import salt.utils.cloud
import salt.utils.files
import salt.utils.yaml
from salt import config
from salt.exceptions import SaltCloudException, SaltCloudSystemExit

log = logging.getLogger(__name__)

__virtualname__ = "lab"

# _clouds/lab.py -> the repo, whose bin/lab does the work on the machine.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB_COMMAND = os.path.join(REPO, "bin", "lab")


def __virtual__():
    if get_configured_provider() is False:
        return False
    return __virtualname__


def _get_active_provider_name():
    try:
        return __active_provider_name__.value()
    except AttributeError:
        return __active_provider_name__


def get_configured_provider():
    return config.is_provider_configured(
        __opts__, _get_active_provider_name() or __virtualname__, ()
    )


def _lab(*args, timeout=300):
    """Run ``bin/lab`` and return its standard output; raise with its message on failure."""
    cmd = [sys.executable, LAB_COMMAND, *args]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise SaltCloudSystemExit(f"bin/lab {' '.join(args)} took more than {timeout}s") from None
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise SaltCloudSystemExit(
            f"bin/lab {args[0]} failed: {message[-1] if message else 'no output'}"
        )
    return result.stdout


def _fire(name, stage, description, args):
    """The standard salt/cloud/<name>/<stage> event."""
    __utils__["cloud.fire_event"](
        "event",
        description,
        f"salt/cloud/{name}/{stage}",
        args=args,
        sock_dir=__opts__["sock_dir"],
        transport=__opts__["transport"],
    )


def _hosts():
    # The emulated cloud's VMs are hosts too, but the yandex driver's.
    return {h["name"]: h for h in json.loads(_lab("status", "--json")) if h.get("kind", "lab") == "lab"}


def _node(host):
    return {
        "id": host["name"],
        "image": "debian-12",
        "size": "lab",
        "state": host["state"],
        "private_ips": [host["address"]],
        "public_ips": [],
    }


def avail_images(call=None):
    """The one image the lab boots: Debian 12, built with debootstrap."""
    if call == "action":
        raise SaltCloudSystemExit("The avail_images function must be called with -f or --function")
    return {"debian-12": {"name": "debian-12", "description": "Debian 12 (bookworm), minbase"}}


def avail_sizes(call=None):
    """Lab hosts share the machine's cores and memory: there is one size."""
    if call == "action":
        raise SaltCloudSystemExit("The avail_sizes function must be called with -f or --function")
    return {"lab": {"name": "lab", "description": "shares the machine's CPU and memory"}}


def avail_locations(call=None):
    """The one location: this machine's lab bridge."""
    if call == "action":
        raise SaltCloudSystemExit(
            "The avail_locations function must be called with -f or --function"
        )
    return {"local": {"name": "local", "description": "this machine's lab network 10.0.0.0/24"}}


def list_nodes(call=None):
    """
    The lab's hosts, keyed by name.

    CLI Example:

    .. code-block:: bash

        salt-cloud -Q
    """
    if call == "action":
        raise SaltCloudSystemExit("The list_nodes function must be called with -f or --function")
    return {name: _node(host) for name, host in _hosts().items()}


def list_nodes_full(call=None):
    """The lab's hosts with everything bin/lab knows of them (memory, PIDs)."""
    if call == "action":
        raise SaltCloudSystemExit(
            "The list_nodes_full function must be called with -f or --function"
        )
    nodes = {}
    for name, host in _hosts().items():
        nodes[name] = {**host, **_node(host)}
    return nodes


def list_nodes_select(call=None):
    """The lab's hosts with the fields chosen by ``query.selection``."""
    return salt.utils.cloud.list_nodes_select(
        list_nodes_full(), __opts__["query.selection"], call
    )


def show_instance(name, call=None):
    """
    One host.

    CLI Example:

    .. code-block:: bash

        salt-cloud -a show_instance postgres-srv1
    """
    if call != "action":
        raise SaltCloudSystemExit("The show_instance action must be called with -a or --action.")
    nodes = list_nodes_full()
    if name not in nodes:
        raise SaltCloudSystemExit(f"no lab host named {name}")
    __utils__["cloud.cache_node"](nodes[name], _get_active_provider_name(), __opts__)
    return nodes[name]


def _seed_tree(vm_, folder):
    """The files salt-cloud's bootstrap would leave on a new VM: minion config and keys."""
    minion = salt.utils.cloud.minion_config(__opts__, vm_)
    etc = os.path.join(folder, "etc", "salt")
    pki = os.path.join(etc, "pki", "minion")
    os.makedirs(pki)
    with salt.utils.files.fopen(os.path.join(etc, "minion"), "w") as fh:
        fh.write(salt.utils.cloud.salt_config_to_yaml(minion))
    with salt.utils.files.fopen(os.path.join(pki, "minion.pem"), "w") as fh:
        fh.write(vm_["priv_key"])
    os.chmod(os.path.join(pki, "minion.pem"), 0o400)
    with salt.utils.files.fopen(os.path.join(pki, "minion.pub"), "w") as fh:
        fh.write(vm_["pub_key"])


def _disk_args(vm_):
    """secondary_disks as bin/lab's --disk NAME:GIB arguments, checked as the Yandex driver does."""
    disks = config.get_cloud_config_value("secondary_disks", vm_, __opts__, search_global=False,
                                          default=None) or []
    if not isinstance(disks, list) or len(disks) > 3:
        raise SaltCloudSystemExit(f"{vm_['name']}: secondary_disks must be a list of at most 3 disks")
    args = []
    for n, disk in enumerate(disks):
        size = disk.get("size") if isinstance(disk, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise SaltCloudSystemExit(f"{vm_['name']}: secondary_disks[{n}] needs a size in GB")
        args += ["--disk", f"{disk.get('device_name', f'data{n}')}:{size}"]
    return args


def create(vm_):
    """
    Create one lab host and bootstrap its minion.

    CLI Example:

    .. code-block:: bash

        salt-cloud -p lab-db postgres-srv1
    """
    name = vm_["name"]
    address = config.get_cloud_config_value(
        "ip_address", vm_, __opts__, search_global=False, default=None
    )
    if not address:
        raise SaltCloudSystemExit(f"lab host {name}: set ip_address (an address in 10.0.0.0/24)")
    disk_args = _disk_args(vm_)
    event_args = {"name": name, "profile": vm_.get("profile"), "provider": vm_.get("driver")}
    filtered = __utils__["cloud.filter_event"]
    _fire(name, "creating", "starting create", filtered("creating", event_args, list(event_args)))
    vm_["priv_key"], vm_["pub_key"] = salt.utils.cloud.gen_keys(
        config.get_cloud_config_value("keysize", vm_, __opts__)
    )
    _fire(name, "requesting", "requesting instance", {"kwargs": {"name": name, "ip_address": address}})
    salt.utils.cloud.accept_key(__opts__["pki_dir"], vm_["pub_key"], name)
    try:
        with tempfile.TemporaryDirectory(prefix="lab-seed-") as seed:
            _seed_tree(vm_, seed)
            _lab("create", name, address, "--seed", seed, *disk_args)
    except SaltCloudException:
        salt.utils.cloud.remove_key(__opts__["pki_dir"], name)
        raise
    node = list_nodes_full()[name]
    log.info("Created lab host %s at %s", name, address)
    _fire(name, "created", "created instance", filtered("created", event_args, list(event_args)))
    return {**node, "deployed": True}


def destroy(name, call=None):
    """
    Power a lab host off and delete its disk; forget its minion key.

    CLI Example:

    .. code-block:: bash

        salt-cloud -d postgres-srv3
    """
    if call == "function":
        raise SaltCloudSystemExit("The destroy action must be called with -d, --destroy, -a or --action.")
    _fire(name, "destroying", "destroying instance", {"name": name})
    _lab("destroy", name)
    salt.utils.cloud.remove_key(__opts__["pki_dir"], name)
    if __opts__.get("update_cachedir", False):
        __utils__["cloud.delete_minion_cachedir"](
            name, _get_active_provider_name().split(":")[0], __opts__
        )
    _fire(name, "destroyed", "destroyed instance", {"name": name})
    return {"destroyed": name}


def _action(verb, name, call):
    if call != "action":
        raise SaltCloudSystemExit(f"The {verb} action must be called with -a or --action.")
    _lab(verb, name)
    return {name: _hosts()[name]["state"]}


def start(name, call=None):
    """
    Boot a stopped lab host.

    CLI Example:

    .. code-block:: bash

        salt-cloud -a start postgres-srv1
    """
    return _action("start", name, call)


def stop(name, call=None):
    """
    Power a lab host off cleanly (its disk is kept).

    CLI Example:

    .. code-block:: bash

        salt-cloud -a stop postgres-srv1
    """
    return _action("stop", name, call)


def reboot(name, call=None):
    """
    Power a lab host off cleanly and boot it again.

    CLI Example:

    .. code-block:: bash

        salt-cloud -a reboot postgres-srv1
    """
    if call != "action":
        raise SaltCloudSystemExit("The reboot action must be called with -a or --action.")
    _lab("stop", name)
    return _action("start", name, call)
