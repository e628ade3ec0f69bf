"""A lab host: an overlay on the cached image, booted by systemd-nspawn in its own namespace.

A host is a folder under STATE/hosts/<name> (host.json, the overlay's upper layer) plus, while it
runs, a mount, a network namespace, cgroup folders and the systemd-nspawn process whose PID is
kept in RUN/<name>.pid. `stop` and `crash` leave the folder (the disk survives a power cut),
`destroy` removes it.

A host may have data disks besides its root, as a VM has secondary disks: each a sparse file in
the host's folder, attached to a loop device while the host runs and handed in as /dev/vdb,
/dev/vdc..., with the /dev/disk/by-id/virtio-<device name> link udev makes on a Yandex VM.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import image, network, settings
from .system import (
    LabError,
    children,
    descendants,
    is_mounted,
    log,
    machine_lock,
    pid_alive,
    pid_cmdline,
    run,
    umount_tree,
    wait_for,
)

LOCK = settings.STATE / "lock"
HOSTNAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,61}[a-z0-9]$")
# Yandex's AttachedDiskSpec.device_name: what the VM sees under /dev/disk/by-id/virtio-<name>.
DISK_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,19}$")
MAX_DISKS = 3

MINION_UNIT = """\
[Unit]
Description=The Salt Minion (lab: from the machine's read-only Salt environment)
Documentation=man:salt-minion(1)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
KillMode=process
Restart=on-failure
RestartSec=2
LimitNOFILE=8192
ExecStart={venv}/bin/salt-minion -c /etc/salt

[Install]
WantedBy=multi-user.target
"""


@dataclass
class Host:
    name: str
    address: str
    # The clone whose Salt environment the host's minion runs from (mounted read-only).
    repo: str = str(settings.REPO)
    # Data disks: {device name: size in GiB}, in the order they appear (vdb, vdc, ...).
    disks: dict[str, int] = field(default_factory=dict)
    # "lab": on the lab's bridge, its minion laid in and run from the machine's Salt. "cloud": a
    # VM of the emulated cloud, booted from the cloud image on its subnet's bridge; cloud-init,
    # sshd and salt-cloud's bootstrap make it what it becomes.
    kind: str = "lab"
    subnet: str | None = None  # a cloud host's subnet (its bridge, its gateway)

    @property
    def is_cloud(self) -> bool:
        return self.kind == "cloud"

    @property
    def folder(self) -> Path:
        return settings.HOSTS_DIR / self.name

    @property
    def root(self) -> Path:
        return self.folder / "root"

    @property
    def pidfile(self) -> Path:
        return settings.RUN / f"{self.name}.pid"

    def disk_file(self, device_name: str) -> Path:
        return self.folder / "disks" / f"{device_name}.img"

    def disk_nodes(self) -> dict[str, str]:
        """{device name: its node inside the host}: the first data disk is vdb, as on a VM."""
        return {name: f"/dev/vd{chr(ord('b') + n)}" for n, name in enumerate(self.disks)}

    # -- what is running ------------------------------------------------------------------

    def nspawn_pid(self) -> int | None:
        """The PID of this host's systemd-nspawn, if it is alive and really ours."""
        try:
            pid = int(self.pidfile.read_text())
        except (OSError, ValueError):
            return None
        cmdline = pid_cmdline(pid)
        if pid_alive(pid) and cmdline and cmdline[0].endswith("systemd-nspawn") \
                and f"--machine={self.name}" in cmdline:
            return pid
        return None

    def init_pid(self) -> int | None:
        """The PID (on the machine) of the host's own systemd, PID 1 inside it."""
        pid = self.nspawn_pid()
        if pid is None:
            return None
        # nspawn's short-lived helper children live in the machine's PID namespace; the
        # host's systemd is the child in a namespace of its own, once it has exec'd.
        own_ns = os.readlink("/proc/self/ns/pid")
        for kid in children(pid):
            try:
                in_container = os.readlink(f"/proc/{kid}/ns/pid") != own_ns
                comm = Path(f"/proc/{kid}/comm").read_text().strip()
            except OSError:
                continue
            if in_container and comm in ("systemd", "init") and pid_alive(kid):
                return kid
        return None

    def state(self) -> str:
        if self.nspawn_pid() is None:
            return "stopped"
        if network.is_partitioned(self.address):
            return "partitioned"
        return "running"

    def cgroup_dirs(self) -> list[Path]:
        return [settings.CGROUP_ROOT / h / settings.NAME / self.name
                for h in settings.CGROUP_HIERARCHIES]

    def memory_bytes(self) -> int | None:
        """Resident memory (RSS, without page cache) of everything in the host."""
        stat = settings.CGROUP_ROOT / "memory" / settings.NAME / self.name / "memory.stat"
        try:
            fields = dict(line.split() for line in stat.read_text().splitlines())
        except OSError:
            return None
        return int(fields.get("total_rss", 0))

    # -- lifecycle ------------------------------------------------------------------------

    def create(self, seed: Path | None = None) -> None:
        self._check()
        with machine_lock(LOCK):
            if self.folder.exists():
                raise LabError(f"host {self.name} already exists (bin/lab status)")
            for other in all_hosts():
                if other.address == self.address:
                    raise LabError(f"address {self.address} is already taken by host {other.name}")
            for sub in ("upper", "work", "root"):
                (self.folder / sub).mkdir(parents=True)
            (self.folder / "host.json").write_text(
                json.dumps({"name": self.name, "address": self.address, "repo": self.repo,
                            "disks": self.disks, "kind": self.kind, "subnet": self.subnet,
                            "created": time.time()})
                + "\n"
            )
            for disk, size in self.disks.items():
                self.disk_file(disk).parent.mkdir(exist_ok=True)
                # Sparse: a blank disk costs nothing until it is written.
                with open(self.disk_file(disk), "wb") as f:
                    f.truncate(size * 2**30)
        try:
            self._mount()
            self._provision(seed)
            self.start()
        except BaseException:
            self.destroy()
            raise

    def _check(self) -> None:
        if not HOSTNAME_RE.match(self.name):
            raise LabError(
                f"'{self.name}' is not a valid host name: lower-case letters, digits and '-', "
                "starting with a letter, at most 63 characters"
            )
        if self.is_cloud:
            if self.subnet is None or \
                    ipaddress.ip_address(self.address) not in ipaddress.ip_network(self.subnet):
                raise LabError(f"{self.name}: address {self.address} is not in its subnet {self.subnet}")
        else:
            network.validate_address(self.address)
        if len(self.disks) > MAX_DISKS:
            raise LabError(f"{self.name}: at most {MAX_DISKS} data disks, not {len(self.disks)}")
        for disk, size in self.disks.items():
            if not DISK_NAME_RE.match(disk) or not 1 <= size <= 1024:
                raise LabError(f"{self.name}: disk {disk}:{size} must be NAME:GiB, the name "
                               "[a-z][a-z0-9_-] (at most 20), 1 to 1024 GiB")

    def start(self, wait: bool = True) -> None:
        with machine_lock(LOCK):
            if self.nspawn_pid() is not None:
                return
            self.release_runtime()
            network.ensure_host_network(self.name, self.address, self.subnet)
            self._mount()
            _ensure_nspawn_runtime()
            for d in self.cgroup_dirs():
                d.mkdir(parents=True, exist_ok=True)
            settings.RUN.mkdir(parents=True, exist_ok=True)
            self._launch()
        if wait:
            self.wait_booted()

    def _launch(self) -> None:
        cmd = [
            "systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--quiet",
            f"--machine={self.name}", f"--hostname={self.name}",
            "--directory", str(self.root),
            f"--network-namespace-path={network.netns_path(self.name)}",
            # The host's own network namespace: its firewall state manages nftables there,
            # as on a VM (nspawn grants this itself only with --private-network).
            "--capability=CAP_NET_ADMIN",
            # A lab host's packages and Salt come from the machine; a cloud host's from the
            # internet (the emulation's mirror), through salt-cloud's bootstrap.
            *([] if self.is_cloud else [
                f"--bind-ro={image.apt_repo_dir()}:{settings.HOST_APT_DIR}",
                f"--bind-ro={image.wheelhouse_dir()}:{settings.HOST_WHEEL_DIR}",
                f"--bind-ro={settings.VENV}"]),
            "--resolv-conf=off", "--timezone=off", "--link-journal=no", "--console=read-only",
            *(f"--bind={self._attach(disk)}:{node}" for disk, node in self.disk_nodes().items()),
        ]
        console = open(self.folder / "console.log", "ab")
        # Each host gets cgroups of its own before nspawn starts (lab.md pitfall 4): a shell
        # moves itself into them and becomes nspawn (no Python between fork and exec, which
        # would not be safe in the emulated cloud's threaded server).
        enter_cgroups = " ".join(f'echo $$ > {shlex.quote(str(d / "cgroup.procs"))} &&'
                                 for d in self.cgroup_dirs())
        proc = subprocess.Popen(["/bin/sh", "-c", f'{enter_cgroups} exec "$@"', "sh", *cmd],
                                stdin=subprocess.DEVNULL, stdout=console, stderr=console,
                                start_new_session=True, close_fds=True)
        console.close()
        self.pidfile.write_text(f"{proc.pid}\n")
        # Until the exec, the PID is the shell's: nspawn_pid() would not know it.
        wait_for(lambda: proc.poll() is not None or self.nspawn_pid() is not None, 10,
                 f"{self.name}'s systemd-nspawn to start")

    def wait_booted(self, timeout: float = 90) -> None:
        wait_for(lambda: self.init_pid() or self._failed_to_start(), 20, f"{self.name} to start")
        # systemctl needs the manager's private socket, which appears a moment after exec.
        wait_for(lambda: self.exec(["test", "-S", "/run/systemd/private"], check=False).returncode == 0
                 or self._failed_to_start(), 30, f"{self.name}'s systemd to listen")
        if self.is_cloud:
            return  # powered on: what runs on it is cloud-init's and salt-cloud's business
        # Up means its minion runs. The whole boot may take longer on purpose: a lone etcd
        # member waits for its peers (so hosts of a cluster must be booted together).
        def minion_active() -> bool:
            self._failed_to_start()
            state = self.exec(["systemctl", "is-active", "salt-minion.service"], capture=True,
                              check=False).stdout.strip()
            if state == "failed":
                raise LabError(f"{self.name}'s salt-minion failed to start; see "
                               f"`bin/lab exec {self.name} -- journalctl -u salt-minion`")
            return state == "active"

        wait_for(minion_active, timeout, f"{self.name}'s salt-minion to start")

    def _failed_to_start(self) -> bool:
        if self.nspawn_pid() is None:
            tail = (self.folder / "console.log").read_text(errors="replace")[-1500:]
            raise LabError(f"systemd-nspawn for {self.name} exited at start:\n{tail}")
        return False

    def stop(self, timeout: float = 60) -> None:
        """Clean power-off: SIGTERM makes nspawn shut the host's systemd down in order."""
        pid = self.nspawn_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            try:
                wait_for(lambda: not pid_alive(pid), timeout, f"{self.name} to power off")
            except LabError:
                log(f"{self.name} did not power off in {timeout:.0f}s; cutting the power")
                self.crash()
                return
        self.release_runtime()

    def crash(self) -> None:
        """Power cut: the address goes silent and every process of the host dies at once."""
        network.partition(self.address)
        victims = self._all_pids()
        # Freeze everything first so nothing forks or reacts while the kills land.
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in victims:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if sig == signal.SIGSTOP:
                victims = sorted(set(victims) | set(self._all_pids()))
        wait_for(lambda: not any(pid_alive(p) for p in victims), 10, f"{self.name}'s processes to die")
        self.release_runtime()

    def destroy(self) -> None:
        self.crash()
        shutil.rmtree(self.folder, ignore_errors=True)

    def partition(self) -> None:
        if self.nspawn_pid() is None:
            raise LabError(f"{self.name} is not running")
        network.partition(self.address)

    def heal(self) -> None:
        network.heal(self.address)

    def exec(self, argv: list[str], capture: bool = False, timeout: float | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
        pid = self.init_pid()
        if pid is None:
            raise LabError(f"{self.name} is not running (bin/lab start {self.name})")
        env = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME=/root", "LANG=C.UTF-8", f"TERM={os.environ.get('TERM', 'dumb')}"]
        try:
            result = subprocess.run(["nsenter", "-t", str(pid), "-a", *env, *argv], check=False, text=True,
                                    capture_output=capture, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"`{' '.join(argv)}` on {self.name} took longer than {timeout}s") from None
        if check and capture and result.returncode != 0:
            raise LabError(f"`{' '.join(argv)}` on {self.name} failed: {result.stderr.strip()}")
        return result

    # -- internals ------------------------------------------------------------------------

    def _all_pids(self) -> list[int]:
        pids: set[int] = set()
        nspawn = self.nspawn_pid()
        if nspawn is not None:
            pids.add(nspawn)
            pids.update(descendants(nspawn))
        for d in self.cgroup_dirs():
            for procs in d.rglob("cgroup.procs") if d.exists() else []:
                try:
                    pids.update(int(p) for p in procs.read_text().split())
                except OSError:
                    continue
        pids.discard(os.getpid())
        return sorted(pids)

    def _mount(self) -> None:
        if is_mounted(self.root):
            return
        lower = image.build_cloud_image() if self.is_cloud else image.build_image()
        run("mount", "-t", "overlay", f"{settings.NAME}-{self.name}", "-o",
            f"lowerdir={lower},upperdir={self.folder / 'upper'},workdir={self.folder / 'work'}",
            self.root)

    def _attach(self, disk: str) -> str:
        """A fresh loop device on a data disk's file, for one boot. A loop of an earlier boot is
        cleared by the kernel once its last user lets go; until then the filesystem may still be
        mounted through it, and a second loop would mount it twice: wait, never reuse one."""
        try:
            wait_for(lambda: not self._loops(disk), 10, f"{self.name}'s old loop on {disk} to clear")
        except LabError:
            raise LabError(f"{self.name}: disk {disk} is still attached to {', '.join(self._loops(disk))} "
                           "from an earlier boot (something still holds it: see `fuser -m`)") from None
        return run("losetup", "--find", "--show", self.disk_file(disk), capture=True).stdout.strip()

    def _loops(self, disk: str) -> list[str]:
        return [loop for loop, back in _lab_loops() if back == self.disk_file(disk)]

    def release_runtime(self) -> None:
        """Undo what a running host holds on the machine; keep its disks."""
        for disk in self.disks:
            for loop in self._loops(disk):
                # Detached once nothing holds it any more (the kernel's autoclear).
                run("losetup", "--detach", loop, check=False, quiet=True)
        umount_tree(self.root)
        network.remove_host_network(self.name, self.address)
        for d in self.cgroup_dirs():
            _rmdir_tree(d)
        self.pidfile.unlink(missing_ok=True)

    def _provision(self, seed: Path | None) -> None:
        """What a cloud image and its cloud-init would set up: identity and package sources."""
        root = self.root
        (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        (root / "etc/hostname").write_text(self.name + "\n")
        # A cloud VM resolves the emulated internet's servers by name (settings.INTERNET_HOSTS).
        internet = settings.INTERNET_HOSTS if self.is_cloud else {}
        (root / "etc/hosts").write_text(
            "127.0.0.1\tlocalhost\n"
            f"{self.address}\t{self.name}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
            + "".join(f"{address}\t{name}\n" for name, address in internet.items())
        )
        (root / "etc/resolv.conf").unlink(missing_ok=True)
        (root / "etc/resolv.conf").write_text("# the lab has no DNS: hosts are reached by address\n")
        self._provision_disks()
        if self.is_cloud:
            # The emulated internet's CA is one of the public ones to its VMs.
            ca = settings.INTERNET_PKI / "ca.crt"
            if ca.exists():
                shutil.copyfile(ca, root / "usr/local/share/ca-certificates/pglab-internet.crt")
                run("chroot", root, "update-ca-certificates", quiet=True)
            # The rest is cloud-init's, from the metadata service; package sources are the image's.
            if seed is not None:
                _overlay_files(seed, root)
            return
        # Package sources: the lab's offline repository and wheelhouse instead of the internet.
        (root / "etc/apt/sources.list").unlink(missing_ok=True)
        (root / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
        (root / "etc/apt/sources.list.d/pglab.list").write_text(
            f"deb [trusted=yes] file:{settings.HOST_APT_DIR} ./\n"
        )
        (root / "etc/pip.conf").write_text(
            f"[global]\nno-index = true\nfind-links = {settings.HOST_WHEEL_DIR}\n"
        )
        # The salt-minion, as salt-cloud's bootstrap would install it.
        unit = root / "etc/systemd/system/salt-minion.service"
        unit.write_text(MINION_UNIT.format(venv=settings.VENV))
        wants = root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / "salt-minion.service").symlink_to("/etc/systemd/system/salt-minion.service")
        for tool in ("salt-call", "salt-minion"):
            link = root / "usr/local/bin" / tool
            link.unlink(missing_ok=True)
            link.symlink_to(settings.VENV / "bin" / tool)
        if seed is not None:
            _overlay_files(seed, root)

    def _provision_disks(self) -> None:
        """The data disks' stable names, as udev links them on a VM (the lab's hosts run no udev)."""
        if self.disks:
            (self.root / "etc/tmpfiles.d").mkdir(parents=True, exist_ok=True)
            (self.root / "etc/tmpfiles.d/pglab-disks.conf").write_text("".join(
                f"L /dev/disk/by-id/virtio-{disk} - - - - ../../{node.removeprefix('/dev/')}\n"
                for disk, node in self.disk_nodes().items()))


def _overlay_files(seed: Path, root: Path) -> None:
    """Copy seed's files into root, creating missing folders (0755) but never changing the mode
    or owner of a folder that root already has: the seed is often a private 0700 temp folder."""
    for src in sorted(seed.rglob("*")):
        dest = root / src.relative_to(seed)
        if src.is_dir() and not src.is_symlink():
            if not dest.exists():
                dest.mkdir(mode=0o755, parents=True)
        else:
            dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            shutil.copy2(src, dest, follow_symlinks=False)


def _rmdir_tree(path: Path) -> None:
    if not path.exists():
        return
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                      reverse=True):
        try:
            sub.rmdir()
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError as exc:
        log(f"could not remove cgroup {path}: {exc}")


def _ensure_nspawn_runtime() -> None:
    if not is_mounted(settings.NSPAWN_RUNTIME):
        settings.NSPAWN_RUNTIME.mkdir(parents=True, exist_ok=True)
        run("mount", "-t", "tmpfs", "-o", "mode=0755", f"{settings.NAME}-nspawn",
            settings.NSPAWN_RUNTIME)


def release_nspawn_runtime() -> None:
    if is_mounted(settings.NSPAWN_RUNTIME):
        run("umount", "-l", settings.NSPAWN_RUNTIME, check=False, quiet=True)


def release_stale_loops() -> None:
    """Detach loop devices left on disk files of hosts that no longer run or exist."""
    # Under the lock a host takes to attach and launch: a starting host's new loop is safe.
    with machine_lock(LOCK):
        running = {h.name for h in all_hosts() if h.nspawn_pid() is not None}
        for loop, back in _lab_loops():
            if back.parts[len(settings.HOSTS_DIR.parts)] not in running:
                run("losetup", "--detach", loop, check=False, quiet=True)


def _lab_loops() -> list[tuple[str, Path]]:
    """(loop device, its file) for every loop device on a lab host's disk file."""
    listing = run("losetup", "--list", "--json", "--output", "NAME,BACK-FILE", capture=True,
                  check=False).stdout
    found = []
    for loop in json.loads(listing or '{"loopdevices": []}')["loopdevices"]:
        back = Path((loop.get("back-file") or "").removesuffix(" (deleted)"))
        if back.is_relative_to(settings.HOSTS_DIR):
            found.append((loop["name"], back))
    return found


def load(name: str) -> Host:
    record = settings.HOSTS_DIR / name / "host.json"
    try:
        data = json.loads(record.read_text())
    except FileNotFoundError:
        raise LabError(f"no lab host named '{name}' (bin/lab status lists them)") from None
    return Host(name=data["name"], address=data["address"], repo=data.get("repo", ""),
                disks=data.get("disks", {}), kind=data.get("kind", "lab"), subnet=data.get("subnet"))


def all_hosts() -> list[Host]:
    if not settings.HOSTS_DIR.exists():
        return []
    return [load(p.parent.name) for p in sorted(settings.HOSTS_DIR.glob("*/host.json"))]
