"""bin/lab: bring the lab up and down, look at it, and inject faults.

    bin/lab up                      build what is missing, start the salt-master and the object
                                    storage (lab/object_storage.py), create the hosts from the
                                    lab map with salt-cloud, wait for the minions
    bin/lab down                    remove everything the lab made (keeps the caches)
    bin/lab status [--json]         hosts, addresses, states, memory
    bin/lab exec HOST -- CMD...     run a command inside a host
    bin/lab stop|start HOST         clean power-off / boot
    bin/lab crash HOST              power cut: every process at once, the address goes silent
    bin/lab partition|heal HOST     cut the host off the lab network / plug it back
    bin/lab create NAME ADDRESS [--seed DIR] [--disk NAME:GIB]...   (used by the salt-cloud lab driver)
    bin/lab destroy NAME                       (used by the salt-cloud lab driver)
    bin/lab cloud up|down|status|use|storage|ca   the emulated Yandex Cloud (lab/yandex/cloud.py):
                                    its API on loopback, whose VMs are lab hosts; `up` also
                                    starts the salt-master for the Yandex site in the master's
                                    subnet; `use` points salt-cloud at it (fails when it is
                                    down); `storage` makes what a user makes with yc for backups
                                    in Object Storage: the pillar's bucket and access key file;
                                    `ca` the organisation's CA (certificate and key) the Yandex
                                    pillar names, as a user who brings one has it
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import host as hosts
from . import image, master, network, object_storage, settings, vpc
from .cluster import cluster
from .system import (
    LabError,
    log,
    machine_lock,
    pid_alive,
    pid_cmdline,
    require_commands,
    require_kernel_features,
    require_root,
    run,
    umount_tree,
    wait_for,
)

LAB_MAP = settings.REPO / "cloud.maps.d/lab.map"


def _salt(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """A Salt command from the repo root, where the Saltfile points it at etc/salt."""
    return run(settings.VENV / "bin" / args[0], *args[1:], cwd=settings.REPO, **kwargs)


def preflight() -> None:
    require_root()
    require_commands("systemd-nspawn", "debootstrap", "dpkg-scanpackages", "ip", "nft", "nsenter")
    require_kernel_features()
    if not (settings.VENV / "bin/salt-master").exists():
        raise LabError(f"no Salt environment at {settings.VENV}: run `make lab`, which creates it")


def recover() -> None:
    """Clean up what a killed or half-finished run left, so `up` can carry on from it."""
    for h in hosts.all_hosts():
        if h.repo != str(settings.REPO):
            # Its minion runs from another clone's Salt environment: start it afresh.
            log(f"removing {h.name}, made from another clone ({h.repo})")
            h.destroy()
        elif h.nspawn_pid() is None:
            h.release_runtime()
    if settings.HOSTS_DIR.exists():
        for folder in settings.HOSTS_DIR.iterdir():
            if not (folder / "host.json").exists():
                log(f"removing half-created host folder {folder}")
                run("umount", "-l", folder / "root", check=False, quiet=True)
                shutil.rmtree(folder, ignore_errors=True)
    known = {network.netns_name(h.name) for h in hosts.all_hosts()}
    for ns in network.stale_namespaces():
        if ns not in known:
            run("ip", "netns", "del", ns, check=False, quiet=True)
    hosts.release_stale_loops()
    known_veths = {network.veth_name(h.address) for h in hosts.all_hosts()}
    for veth in network.stale_veths():
        if veth not in known_veths:
            run("ip", "link", "del", veth, check=False, quiet=True)


def wait_for_minions(names: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    missing = set(names)
    while missing:
        result = _salt("salt", "*", "test.ping", "--out=json", "--static", "-t", "5",
                       check=False, capture=True)
        try:
            answered = {k for k, v in json.loads(result.stdout or "{}").items() if v is True}
        except json.JSONDecodeError:
            answered = set()
        missing = set(names) - answered
        if missing and time.monotonic() > deadline:
            raise LabError(f"minions did not answer within {timeout:.0f}s: {', '.join(sorted(missing))}")
        if missing:
            time.sleep(1)


def cmd_up(args: argparse.Namespace) -> None:
    preflight()
    started = time.monotonic()
    if cloud_pid() is not None or any(h.is_cloud for h in hosts.all_hosts()):
        raise LabError("the emulated cloud is up (bin/lab cloud status): one lab at a time; "
                       "`make yandex-lab-down` (or bin/lab down) first")
    recover()
    build_caches()
    network.ensure_bridge()
    master.start()
    object_storage.ensure_files()  # the lab pillar names them: before anything renders it
    object_storage.start(cluster().model)
    # Boot every stopped host at once (a cluster's members wait for each other), then wait.
    stopped = [h for h in hosts.all_hosts() if h.nspawn_pid() is None]
    for h in stopped:
        log(f"booting {h.name} again")
        h.start(wait=False)
    for h in stopped:
        h.wait_booted()
    log("creating the hosts of the lab map with salt-cloud")
    cloud = _salt("salt-cloud", "-m", LAB_MAP, "-P", "-y", "--log-level=warning",
                  "--out=json", check=False, capture=True)
    names = [h.name for h in hosts.all_hosts()]
    if not names or cloud.returncode != 0:
        raise LabError("salt-cloud did not create the lab's hosts:\n"
                       f"{(cloud.stdout + cloud.stderr).strip()[-3000:]}")
    wait_for_minions(names)
    log(f"lab up in {time.monotonic() - started:.0f}s")
    print_status()


def cmd_down(args: argparse.Namespace) -> None:
    require_root()
    stop_cloud()  # first: it would go on booting VMs while they are removed
    existing = hosts.all_hosts()
    if existing:
        log(f"deleting the lab's hosts and their disks, the cluster's data with them: "
            f"{', '.join(h.name for h in existing)}")
    for h in existing:
        log(f"removing {h.name}")
        h.destroy()
    object_storage.stop()
    master.stop()
    recover()
    network.remove_bridge()
    hosts.release_nspawn_runtime()
    for hierarchy in settings.CGROUP_HIERARCHIES:
        lab_cgroup = settings.CGROUP_ROOT / hierarchy / settings.NAME
        hosts._rmdir_tree(lab_cgroup)
    for path in (settings.STATE, settings.RUN):
        umount_tree(path)
        shutil.rmtree(path, ignore_errors=True)
    for generated in ("master.d/paths.conf", "cloud.conf.d/paths.conf"):
        (master.CONFIG_DIR / generated).unlink(missing_ok=True)
    log("lab removed: its hosts' data is gone; the image, apt repository and wheelhouse stay "
        f"cached in {settings.CACHE} for the next bin/lab up")


# --- the emulated cloud ---------------------------------------------------------------------------


def cloud_pid() -> int | None:
    """The emulated cloud's process, if it runs."""
    try:
        pid = int(settings.CLOUD_PIDFILE.read_text())
    except (OSError, ValueError):
        return None
    argv = [arg for arg in pid_cmdline(pid) if arg]  # /proc's cmdline ends in a NUL
    return pid if pid_alive(pid) and argv[-2:] == ["cloud", "serve"] else None


# Only `cloud up`, `use` and `serve` load lab/yandex/cloud.py, which needs the Salt
# environment's packages (cryptography, PyYAML): `bin/lab down` runs with the machine's python3.
def cmd_cloud(args: argparse.Namespace) -> int | None:
    actions = {"up": cloud_up, "down": cloud_down, "status": cloud_status, "serve": cloud_serve,
               "use": cloud_use, "storage": cloud_storage, "ca": cloud_ca}
    return actions[args.action]()


def cloud_use() -> None:
    """Point salt-cloud (and the master's paths) at the running emulation, or fail: what
    `make yandex-lab-down` runs before it deletes anything through salt-cloud."""
    from .yandex import cloud

    if cloud_pid() is None:
        raise LabError("the emulated cloud is not up: nothing to delete through salt-cloud "
                       "(bin/lab down removes any leftovers)")
    master.write_paths(cloud.master_address(), "yandex", cloud.providers_dir())


def cloud_storage() -> None:
    """The user's part before a deployment with backups in Object Storage (the README does it
    with `yc`): the Yandex pillar's bucket in the emulated Object Storage, and its access key."""
    from .yandex import cloud

    if cloud_pid() is None:
        raise LabError("the emulated cloud is not up (bin/lab cloud up)")
    for made in cloud.users_object_storage():
        log(f"emulated Object Storage: {made}")


def cloud_ca() -> None:
    """The user's own CA, which the Yandex pillar names (pgcluster:tls:ca): made once here, as
    the README has a user without one make it."""
    from .yandex import cloud

    for made in cloud.users_ca():
        log(f"the organisation's CA: {made}")


def cloud_serve() -> None:
    from .yandex import cloud

    cloud.serve()


def cloud_up() -> None:
    """The emulated cloud in the background, and the salt-master for the Yandex site."""
    from .yandex import cloud

    preflight()
    if any(not h.is_cloud for h in hosts.all_hosts()):
        raise LabError("the lab's hosts are up (bin/lab status): one lab at a time; "
                       "`make lab-down` first")
    build_caches()
    with machine_lock(settings.STATE / "build.lock"):
        image.build_cloud_image()
        image.build_salt_wheelhouse()
        object_storage.ensure_venv()
    if cloud_pid() is None:
        settings.CLOUD_STATE.mkdir(mode=0o700, parents=True, exist_ok=True)
        settings.RUN.mkdir(parents=True, exist_ok=True)
        (settings.CLOUD_STATE / "ready").unlink(missing_ok=True)
        with open(settings.CLOUD_STATE / "cloud.log", "ab") as out:
            # The Salt environment: the cloud needs its cryptography and PyYAML.
            proc = subprocess.Popen([settings.VENV / "bin/python", settings.REPO / "bin/lab", "cloud",
                                     "serve"],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True, close_fds=True)
        settings.CLOUD_PIDFILE.write_text(f"{proc.pid}\n")
        try:
            cloud.wait_ready(proc.pid)
        except LabError:
            stop_cloud()
            raise
    address = cloud.master_address()
    master.start(interface=address, site="yandex", providers=cloud.providers_dir())
    log(f"emulated Yandex Cloud up: API {settings.CLOUD_API_URL}, salt-master on {address}")


def stop_cloud() -> None:
    """End the emulated cloud and remove its VMs and networks (whatever salt-cloud left)."""
    pid = cloud_pid()
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        try:
            wait_for(lambda: not pid_alive(pid), 60, "the emulated cloud to stop")
        except LabError:
            log("the emulated cloud did not stop in 60 s (a VM still booting): ending it")
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not pid_alive(pid), 10, "the emulated cloud to end")
    settings.CLOUD_PIDFILE.unlink(missing_ok=True)
    object_storage.stop(object_storage.INTERNET)  # the emulation stops it, unless it was killed
    for h in hosts.all_hosts():
        if h.is_cloud:
            log(f"removing the emulated cloud's VM {h.name}")
            h.destroy()
    vpc.teardown()
    shutil.rmtree(settings.CLOUD_STATE, ignore_errors=True)


def cloud_down() -> None:
    """Everything the emulation made, as `bin/lab down` removes it (the lab's hosts cannot be
    up beside it)."""
    cmd_down(argparse.Namespace())


def cloud_status() -> int:
    """The emulation and its VMs; exit status 3 when it is not running (as systemctl's)."""
    pid = cloud_pid()
    print(f"emulated Yandex Cloud: {'running, API ' + settings.CLOUD_API_URL if pid else 'stopped'}")
    if pid is None:
        return 3
    print_status()
    return 0


def status_rows() -> list[dict]:
    rows = []
    for h in hosts.all_hosts():
        memory = h.memory_bytes() if h.nspawn_pid() else None
        rows.append({
            "name": h.name,
            "kind": h.kind,
            "address": h.address,
            "state": h.state(),
            "pid": h.nspawn_pid(),
            "memory_mib": round(memory / 2**20) if memory is not None else None,
        })
    return rows


def print_status() -> None:
    rows = status_rows()
    if not rows:
        print("the lab has no hosts (bin/lab up creates them)")
        return
    print(f"{'HOST':<16}{'ADDRESS':<14}{'STATE':<13}{'MEMORY':>8}")
    for r in rows:
        memory = f"{r['memory_mib']} MiB" if r["memory_mib"] is not None else "-"
        print(f"{r['name']:<16}{r['address']:<14}{r['state']:<13}{memory:>8}")
    pid = master.running_pid()
    serving = master.serving().split()
    where = f"running on {serving[0]} for the {serving[1]} site" if pid and serving else "stopped"
    print(f"salt-master: {where}")


def cmd_status(args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(status_rows(), indent=2))
    else:
        print_status()


def build_caches() -> None:
    with machine_lock(settings.STATE / "build.lock"):
        image.build_image()
        image.build_apt_repo()
        image.build_wheelhouse()


def cmd_create(args: argparse.Namespace) -> None:
    preflight()
    build_caches()
    disks: dict[str, int] = {}
    for spec in args.disk:
        name, _, size = spec.partition(":")
        if not size.isdigit() or name in disks:
            raise LabError(f"--disk {spec}: NAME:GIB, each name once (e.g. --disk pgdata:8)")
        disks[name] = int(size)
    hosts.Host(args.name, args.address, disks=disks).create(
        seed=Path(args.seed) if args.seed else None)


def cmd_exec(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise LabError("nothing to run: bin/lab exec HOST -- CMD...")
    return hosts.load(args.host).exec(command).returncode


def _verb(method: str):
    def handler(args: argparse.Namespace) -> None:
        require_root()
        getattr(hosts.load(args.host), method)()
    return handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bin/lab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("up", help="create the lab (idempotent)").set_defaults(func=cmd_up)
    sub.add_parser("down", help="remove everything the lab made, the hosts' disks (the "
                   "cluster's data) included; the caches stay").set_defaults(func=cmd_down)
    p = sub.add_parser("status", help="list the hosts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("exec", help="run a command in a host")
    p.add_argument("host")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_exec)
    for verb in ("start", "stop", "crash", "partition", "heal", "destroy"):
        p = sub.add_parser(verb, help=f"{verb} a host")
        p.add_argument("host")
        p.set_defaults(func=_verb(verb))
    p = sub.add_parser("create", help="create a host (the salt-cloud driver calls this)")
    p.add_argument("name")
    p.add_argument("address")
    p.add_argument("--seed", help="a folder whose tree is copied into the host before it boots")
    p.add_argument("--disk", action="append", default=[], metavar="NAME:GIB",
                   help="a data disk, seen in the host as /dev/disk/by-id/virtio-NAME (repeatable)")
    p.set_defaults(func=cmd_create)
    p = sub.add_parser("cloud", help="the emulated Yandex Cloud")
    p.add_argument("action", choices=("up", "down", "status", "use", "storage", "ca", "serve"))
    p.set_defaults(func=cmd_cloud)
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (LabError, OSError) as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
