"""The lab's salt-master: the repo's etc/salt config plus the paths of this clone.

The static configuration is committed in etc/salt; bin/lab only writes the small files that hold
this clone's absolute paths and the bridge address (``bin/master paths``), which git ignores.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
from pathlib import Path

from . import settings
from .system import LabError, descendants, log, pid_alive, pid_cmdline, run, wait_for

CONFIG_DIR = settings.REPO / "etc/salt"
PORTS = (4505, 4506)


def pidfile() -> Path:
    return settings.MASTER_ROOT / "var/run/salt-master.pid"


def write_paths(interface: str = settings.GATEWAY, site: str = "lab",
                providers: Path | None = None) -> None:
    """This clone's paths, and the address to listen on, through bin/master: the lab's bridge,
    or (the emulated cloud) the master's address in its subnet, the Yandex site and the
    emulation's providers."""
    extra = ["--providers", str(providers)] if providers else []
    run(sys.executable, settings.REPO / "bin/master", "paths", "--root", settings.MASTER_ROOT,
        "--interface", interface, "--site", site, *extra)


def serving() -> str:
    """What the running master was started for: its address and site."""
    try:
        return (settings.MASTER_ROOT / "serving").read_text()
    except OSError:
        return ""


def running_pid() -> int | None:
    try:
        pid = int(pidfile().read_text())
    except (OSError, ValueError):
        return None
    cmdline = " ".join(pid_cmdline(pid))
    if pid_alive(pid) and "salt-master" in cmdline:
        return pid
    return None


def _port_taken(port: int, interface: str = settings.GATEWAY) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((interface, port))
        except OSError:
            return True
    return False


def start(interface: str = settings.GATEWAY, site: str = "lab", providers: Path | None = None) -> int:
    write_paths(interface, site, providers)
    pid = running_pid()
    wanted = f"{interface} {site}\n"
    if pid is not None and serving() == wanted:
        return pid
    if pid is not None:
        log(f"restarting the salt-master for {site} on {interface}")
        stop()
    clear_orphans()
    pidfile().unlink(missing_ok=True)
    for port in PORTS:
        if _port_taken(port, interface):
            raise LabError(
                f"port {port} on {interface} is already taken by another process "
                f"(`ss -ltnp 'sport = :{port}'` shows which): stop it and run again"
            )
    log("starting the salt-master")
    run(settings.VENV / "bin/salt-master", "-c", CONFIG_DIR, "-d", "--log-level=warning")
    wait_for(running_pid, 30, "the salt-master to write its PID")
    wait_for(lambda: all(_port_taken(p, interface) for p in PORTS), 60, "the salt-master to listen")
    (settings.MASTER_ROOT / "serving").write_text(wanted)
    return running_pid()  # type: ignore[return-value]


def our_processes() -> list[int]:
    """Every salt-master process started from this clone's config, including orphans of a
    master that was killed: the lab started them, so the lab may end them."""
    mine = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        # setproctitle rewrites the command line into one string: match on the text.
        cmdline = " ".join(pid_cmdline(int(proc.name)))
        if "salt-master" in cmdline and f"-c {CONFIG_DIR} " in cmdline + " ":
            mine.append(int(proc.name))
    return mine


def stop() -> None:
    pid = running_pid()
    family = set(our_processes())
    if pid is not None:
        family.update([pid, *descendants(pid)])
        os.kill(pid, signal.SIGTERM)
        try:
            wait_for(lambda: not any(pid_alive(p) for p in family), 30, "the salt-master to stop")
        except LabError:
            pass
    for p in family:
        if pid_alive(p):
            os.kill(p, signal.SIGKILL)
    shutil.rmtree(settings.MASTER_ROOT, ignore_errors=True)


def clear_orphans() -> None:
    """A master whose main process died leaves workers holding the ports: end them."""
    if running_pid() is None and our_processes():
        log("ending the processes of a salt-master that was killed")
        for p in our_processes():
            os.kill(p, signal.SIGKILL)
        wait_for(lambda: not our_processes(), 10, "the old salt-master's processes to end")
