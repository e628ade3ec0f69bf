"""
Facts the cluster's pillar states about a host, checked on the host before anything is
configured from them, and the one change that must not be made blindly: a filesystem on a disk.

.. code-block:: yaml

    host-has-its-pillar-address:
      pgcluster.has_address:
        - name: 10.0.0.11
        - key: pgcluster:members:postgres-srv1:address
        - failhard: true

    postgresql-data-disk:
      pgcluster.filesystem:
        - name: /dev/disk/by-id/virtio-pgdata
        - fstype: ext4
        - mountpoint: /var/lib/postgresql
"""

from __future__ import annotations

import ipaddress
import os
import stat

__virtualname__ = "pgcluster"


def __virtual__():
    return __virtualname__


def has_address(name, key="the pillar"):
    """
    The host has address ``name`` on one of its interfaces (grains ``ipv4``). When it has not,
    the state fails naming the host's addresses and the pillar key, so a map and a pillar that
    disagree stop a deployment before any service is bound to an address the host lacks.
    It changes nothing, so test mode gives the same answer.
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    have = [a for a in __grains__.get("ipv4", []) if not ipaddress.ip_address(a).is_loopback]
    if name in have:
        ret["comment"] = f"{__grains__['id']} has {name} ({key})"
        return ret
    ret["result"] = False
    ret["comment"] = (f"{__grains__['id']} has {', '.join(have) or 'no IPv4 address but loopback'}, "
                      f"but {key} gives it {name}: make the map (its ip_address) and the pillar agree")
    return ret


def _probe(device: str) -> dict:
    """What is on a block device: blkid's low-level probe (TYPE, PTTYPE...), {} when blank."""
    result = __salt__["cmd.run_all"](["blkid", "-p", "-o", "export", device], python_shell=False,
                                     ignore_retcode=True)
    if result["retcode"] == 2:  # blkid: nothing found
        return {}
    if result["retcode"] != 0:
        raise OSError(f"blkid -p {device}: {result['stderr'].strip() or result['retcode']}")
    return dict(line.split("=", 1) for line in result["stdout"].splitlines() if "=" in line)


def _mounts_of(device: str) -> list[str]:
    """Where the block device is mounted now (any namespace's view is this process's)."""
    rdev = os.stat(device).st_rdev
    wanted = f"{os.major(rdev)}:{os.minor(rdev)}"
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        return [line.split()[4] for line in mountinfo if line.split()[2] == wanted]


def _in_use(name: str, device: str) -> str | None:
    """Why the device is someone else's already (mounted elsewhere, swap, LVM, RAID), or None."""
    block = os.path.basename(device)
    holders = os.listdir(f"/sys/class/block/{block}/holders") \
        if os.path.isdir(f"/sys/class/block/{block}/holders") else []
    if holders:
        return f"{name} ({device}) is in use by {', '.join(sorted(holders))}"
    with open("/proc/swaps", encoding="utf-8") as swaps:
        if any(line.split()[0] == device for line in swaps.readlines()[1:]):
            return f"{name} ({device}) is in use as swap"
    return None


def _hidden_by_mount(mountpoint: str, name: str, device: str) -> str | None:
    """Why mounting the device on ``mountpoint`` would hide or break something, or None."""
    if os.path.islink(mountpoint):
        return (f"{mountpoint} is a symbolic link (to {os.path.realpath(mountpoint)}): a mount "
                f"unit cannot mount there")
    elsewhere = [m for m in _mounts_of(device) if m != mountpoint]
    if elsewhere:
        return f"{name} ({device}) is already mounted on {', '.join(elsewhere)}"
    return _occupied(mountpoint, name, device) if os.path.isdir(mountpoint) else None


def _occupied(mountpoint: str, name: str, device: str) -> str | None:
    """Why the folder cannot take the device: another device's mount point, or files in it."""
    if os.path.ismount(mountpoint):
        if os.stat(mountpoint).st_dev == os.stat(device).st_rdev:
            return None
        dev = os.stat(mountpoint).st_dev
        return (f"{mountpoint} is already the mount point of device {os.major(dev)}:{os.minor(dev)}, "
                f"not of {name}: unmount it, or set pgcluster:postgresql:data_disk:device to it")
    held = sorted(os.listdir(mountpoint))
    if held:
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        return (f"{mountpoint} already holds files ({shown}): mounting {name} there would hide "
                f"them. To move them onto the disk, stop Patroni, format the disk (mkfs.ext4 "
                f"{name}), mount it elsewhere, copy them over (cp -a), empty {mountpoint} and "
                f"apply again; or keep them on the system disk (data_disk:device: null)")
    return None


def _refusal(name: str, fstype: str, mountpoint: str | None, host: str) -> tuple[str | None, dict]:
    """Why ``name`` cannot carry ``fstype`` for ``mountpoint`` (None if it can), and what blkid
    found on it."""
    if not os.path.exists(name):
        return (f"{host} has no {name}: is the disk attached (the profile's secondary_disks, its "
                f"device_name)? Without one, set pgcluster:postgresql:data_disk:device: null"), {}
    device = os.path.realpath(name)
    if not stat.S_ISBLK(os.stat(device).st_mode):
        return f"{name} on {host} is not a block device", {}
    busy = _in_use(name, device) or (_hidden_by_mount(mountpoint, name, device) if mountpoint else None)
    if busy:
        return f"{host}: {busy}", {}
    try:
        found = _probe(device)
    except OSError as exc:
        return str(exc), {}
    if not found or found.get("TYPE") == fstype:
        return None, found
    what = (f"a {found['TYPE']} filesystem" if "TYPE" in found
            else f"a {found['PTTYPE']} partition table" if "PTTYPE" in found
            else ", ".join(f"{k}={v}" for k, v in found.items()))
    return (f"{name} on {host} holds {what}, not {fstype}: it is not formatted over. If nothing "
            f"on it is needed, wipe it (wipefs -a {name}) and apply again"), found


def filesystem(name, fstype="ext4", mountpoint=None):
    """
    Block device ``name`` carries a filesystem of type ``fstype``. A blank device (no
    filesystem, no partition table) is formatted; a device with anything else on it is refused,
    never formatted over, naming what blkid found. With ``mountpoint``, it also refuses when
    that folder is not yet this device's mount point and holds files or another device, which
    mounting would hide. Test mode formats nothing and says whether it would.
    """
    ret = {"name": name, "changes": {}, "result": False, "comment": ""}
    why, found = _refusal(name, fstype, mountpoint, __grains__["id"])
    if why:
        ret["comment"] = why
        return ret
    if found:
        ret["result"] = True
        ret["comment"] = f"{name} holds a {fstype} filesystem"
        return ret
    ret["changes"] = {"formatted": fstype}
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = f"{name} is blank and would be formatted {fstype}"
        return ret
    device = os.path.realpath(name)
    made = __salt__["cmd.run_all"]([f"mkfs.{fstype}", "-q", device], python_shell=False)
    try:
        now = _probe(device).get("TYPE") if made["retcode"] == 0 else None
    except OSError as exc:
        now = exc
    if now != fstype:
        ret["changes"] = {}
        why = made["stderr"].strip() or now or f"blkid sees no {fstype}"
        ret["comment"] = f"mkfs.{fstype} {name} failed: {why}"
        return ret
    ret["result"] = True
    ret["comment"] = f"{name} was blank and is formatted {fstype}"
    return ret
