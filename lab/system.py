"""Small helpers around the commands and kernel interfaces the lab uses."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


class LabError(Exception):
    """Something the user has to fix, with the fix in the message."""


def log(message: str) -> None:
    print(f"lab: {message}", file=sys.stderr, flush=True)


def run(*cmd: str | os.PathLike, check: bool = True, capture: bool = False,
        quiet: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """Run a command; on failure raise LabError with its output."""
    args = [str(c) for c in cmd]
    result = subprocess.run(
        args,
        check=False,
        text=True,
        stdout=subprocess.PIPE if (capture or quiet) else None,
        stderr=subprocess.PIPE if (capture or quiet) else None,
        **kwargs,
    )
    if check and result.returncode != 0:
        output = ((result.stdout or "") + (result.stderr or "")).strip()
        raise LabError(f"`{' '.join(args)}` failed (exit {result.returncode}): {output[-2000:]}")
    return result


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, mounts, cgroups): run it with sudo")


def require_commands(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise LabError(
            f"missing commands: {', '.join(missing)}; run `make lab` (it installs them) "
            "or `apt-get install debootstrap systemd-container dpkg-dev iproute2 nftables`"
        )


def require_kernel_features() -> None:
    filesystems = Path("/proc/filesystems").read_text()
    if "overlay" not in filesystems:
        raise LabError("the kernel has no overlay filesystem (try `modprobe overlay`)")
    if not Path("/proc/self/ns/net").exists():
        raise LabError("the kernel has no network namespaces")
    for hierarchy in ("systemd", "unified"):
        if not (Path("/sys/fs/cgroup") / hierarchy / "cgroup.procs").exists():
            raise LabError(
                f"/sys/fs/cgroup/{hierarchy} is not mounted: the lab expects cgroup v1 with "
                "a name=systemd hierarchy and the v2 tree at /sys/fs/cgroup/unified"
            )


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below path, deepest first."""
    prefix = str(path).rstrip("/")
    found = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            point = line.split()[1].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(set(found), key=len, reverse=True)


def umount_tree(path: Path) -> None:
    for point in mounts_under(path):
        run("umount", "-l", point, check=False, quiet=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def pid_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids.extend(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return kids


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for kid in children(todo.pop()):
            if kid not in found:
                found.append(kid)
                todo.append(kid)
    return found


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def machine_lock(path: Path):
    """Serialise changes to what all hosts share (bridge, mounts): salt-cloud -P runs in parallel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def in_netns(name: str):
    """Run the block (this thread) in a named network namespace; sockets made there stay there."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)
