"""The three things built once and cached: the Debian image, the apt repository, the wheelhouse.

Each lands in a folder named after a hash of its recipe and is only renamed into place once
complete, so an interrupted build is never mistaken for a finished one.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

from . import settings
from .system import LabError, log, run, umount_tree


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def debian_sources() -> list[tuple[str, str]]:
    """(URI, suite) pairs for Debian from the machine's own apt configuration.

    debootstrap and the apt repository reach Debian exactly as this machine's apt does.
    """
    found = _deb822_sources() + _one_line_sources()
    if not any(suite == settings.SUITE for _, suite in found):
        raise LabError(
            f"no Debian '{settings.SUITE}' source in /etc/apt: the lab takes its mirror from "
            "the machine's apt configuration"
        )
    return found


def _deb822_sources() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for stanza in Path(path).read_text().split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.lstrip().startswith("#"):
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    if suite.startswith(settings.SUITE):
                        found.append((uri, suite))
    return found


def _one_line_sources() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    lists = [Path("/etc/apt/sources.list"), *map(Path, glob.glob("/etc/apt/sources.list.d/*.list"))]
    for path in lists:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            m = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
            if m and m.group(2).startswith(settings.SUITE):
                found.append((m.group(1), m.group(2)))
    return found


def _mirror() -> str:
    return next(uri for uri, suite in debian_sources() if suite == settings.SUITE)


def image_dir() -> Path:
    return settings.CACHE / f"image-{_digest(settings.SUITE, settings.IMAGE_PACKAGES, _mirror())}"


def build_image() -> Path:
    target = image_dir()
    if (target / "etc/os-release").exists():
        return target
    settings.CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="image-build-", dir=settings.CACHE))
    log(f"building the Debian {settings.SUITE} image with debootstrap (about a minute, once)")
    started = time.monotonic()
    try:
        run("debootstrap", "--variant=minbase", f"--include={','.join(settings.IMAGE_PACKAGES)}",
            settings.SUITE, work, _mirror(), quiet=True)
    except LabError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise LabError(f"building the image failed; check that {_mirror()} is reachable. {exc}") from exc
    # Each host gets its own machine id (lab.md pitfall 2); none may inherit one.
    (work / "etc/machine-id").write_text("")
    for stale in ("var/lib/dbus/machine-id",):
        (work / stale).unlink(missing_ok=True)
    work.rename(target)
    log(f"image ready in {time.monotonic() - started:.0f}s: {target}")
    return target


def _sources_for_chroot() -> str:
    lines = []
    for uri, suite in debian_sources():
        lines.append(f"deb {uri} {suite} main")
    return "\n".join(dict.fromkeys(lines)) + "\n"


def _apt_in_chroot(root: Path, *install: str) -> None:
    """`apt-get update` and `apt-get install -y -q INSTALL...` in a chroot of the image, from
    the machine's Debian sources (proc mounted; the caller unmounts the tree)."""
    run("mount", "-t", "proc", "proc", root / "proc")
    (root / "etc/apt/sources.list").write_text(_sources_for_chroot())
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    run("chroot", root, "apt-get", "update", "-q", env=env, quiet=True)
    run("chroot", root, "apt-get", "install", "-y", "-q", *install, env=env, quiet=True)


def apt_repo_dir() -> Path:
    return settings.CACHE / f"apt-{_digest(image_dir().name, settings.APT_PACKAGES, _sources_for_chroot())}"


def build_apt_repo() -> Path:
    """Download the packages with every dependency a bare host lacks, and index them."""
    target = apt_repo_dir()
    if (target / "Packages").exists():
        return target
    image = build_image()
    log("building the lab's apt repository (downloads the packages once)")
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="apt-build-", dir=settings.CACHE))
    upper, workdir, root = scratch / "upper", scratch / "work", scratch / "root"
    for d in (upper, workdir, root):
        d.mkdir()
    try:
        run("mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={image},upperdir={upper},workdir={workdir}", root)
        _apt_in_chroot(root, "--download-only", "--no-install-recommends", *settings.APT_PACKAGES)
        debs = sorted((root / "var/cache/apt/archives").glob("*.deb"))
        if not debs:
            raise LabError("apt downloaded no packages")
        out = scratch / "repo"
        out.mkdir()
        for deb in debs:
            shutil.copy2(deb, out / deb.name)
        index = run("dpkg-scanpackages", "--multiversion", ".", cwd=out, capture=True).stdout
        (out / "Packages").write_text(index)
        umount_tree(root)
        out.rename(target)
    except LabError as exc:
        raise LabError(f"building the apt repository failed: {exc}") from exc
    finally:
        umount_tree(root)
        shutil.rmtree(scratch, ignore_errors=True)
    log(f"apt repository ready in {time.monotonic() - started:.0f}s: {len(debs)} packages")
    return target


def wheelhouse_dir() -> Path:
    return settings.CACHE / f"wheels-{_digest(settings.WHEELS)}"


def build_wheelhouse() -> Path:
    """Wheels for what the states pip-install in the hosts (same Python 3.11 as Debian 12)."""
    return _build_wheels(wheelhouse_dir(), "the lab's Python wheelhouse", *settings.WHEELS)


def _build_wheels(target: Path, what: str, *requirements: str | Path) -> Path:
    """`pip wheel` of the requirements into target, once (target/.complete marks it whole)."""
    if (target / ".complete").exists():
        return target
    log(f"building {what} (downloads once)")
    scratch = Path(tempfile.mkdtemp(prefix=f"{target.name}-build-", dir=settings.CACHE))
    try:
        # Debian's own python3 (what the hosts run), so the wheels match their interpreter;
        # `pip wheel` also builds the few projects that ship only a source archive.
        run(settings.VENV / "bin/python", "-m", "pip", "wheel", "-q", "--wheel-dir", scratch,
            *requirements, quiet=True)
        (scratch / ".complete").write_text("")
        scratch.rename(target)
    except LabError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise LabError(f"building {what} failed: {exc}") from exc
    log(f"{what} ready: {len(list(target.glob('*.whl')))} wheels")
    return target

# --- the emulated cloud's image and packages -------------------------------------------------

# cloud-init as a Yandex VM runs it, from the metadata service at 169.254.169.254 (EC2 format,
# which Yandex serves beside GCE's; GCE's datasource refuses to run where DMI says nothing, as
# in any container). The rest is what a container needs (lab.md, "cloud-init and sshd").
CLOUD_INIT_CONFIG = f"""\
# The lab's emulated Yandex Cloud (lab/image.py): read the metadata service in EC2 format.
datasource_list: [ Ec2, None ]
datasource:
  Ec2:
    strict_id: false
    metadata_urls: [ 'http://{settings.METADATA_ADDRESS}' ]
    timeout: 5
    max_wait: 60
# The lab gives the address (no DHCP in a container) and the hostname (systemd-nspawn).
network: {{config: disabled}}
preserve_hostname: true
# Minbase has no locales: C.UTF-8 is the one that needs none.
locale: C.UTF-8
"""


def cloud_image_dir() -> Path:
    return settings.CACHE / (
        "cloud-image-" + _digest(image_dir().name, settings.CLOUD_IMAGE_PACKAGES, CLOUD_INIT_CONFIG,
                                 settings.MIRROR_APT_URL, settings.MIRROR_PIP_INDEX))


def build_cloud_image() -> Path:
    """The lab image plus cloud-init, sshd and sudo, with no host keys and no cloud-init state:
    each VM makes its own on first boot. Its apt and pip reach "the internet" (the mirror)."""
    target = cloud_image_dir()
    if (target / "etc/cloud/cloud.cfg.d/99-pglab.cfg").exists():
        return target
    base = build_image()
    log("building the cloud image: the lab image plus " + ", ".join(settings.CLOUD_IMAGE_PACKAGES))
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="cloud-image-build-", dir=settings.CACHE))
    root = work / "root"
    try:
        run("cp", "-a", "--reflink=auto", base, root)
        _apt_in_chroot(root, "--no-install-recommends", *settings.CLOUD_IMAGE_PACKAGES)
        run("chroot", root, "apt-get", "clean", quiet=True)
        umount_tree(root / "proc")
        for pattern in ("etc/ssh/ssh_host_*", "var/lib/apt/lists/*_*", "var/log/cloud-init*"):
            for path in root.glob(pattern):
                path.unlink()
        shutil.rmtree(root / "var/lib/cloud", ignore_errors=True)
        (root / "etc/resolv.conf").write_text("")
        (root / "etc/machine-id").write_text("")
        # Package sources: the internet, as the emulation serves it (a flat repository, no DNS).
        (root / "etc/apt/sources.list").write_text(f"deb [trusted=yes] {settings.MIRROR_APT_URL} ./\n")
        (root / "etc/pip.conf").write_text(
            f"[global]\nindex-url = {settings.MIRROR_PIP_INDEX}\n"
            f"trusted-host = {settings.INTERNET_MIRROR}\n")
        (root / "etc/cloud/cloud.cfg.d/99-pglab.cfg").write_text(CLOUD_INIT_CONFIG)
        root.rename(target)
    except LabError as exc:
        raise LabError(f"building the cloud image failed: {exc}") from exc
    finally:
        umount_tree(work)
        shutil.rmtree(work, ignore_errors=True)
    log(f"cloud image ready in {time.monotonic() - started:.0f}s: {target}")
    return target


def salt_wheelhouse_dir() -> Path:
    constraints = (settings.REPO / "requirements.txt").read_text()
    return settings.CACHE / f"salt-wheels-{_digest(settings.SALT_VERSION, constraints)}"


def build_salt_wheelhouse() -> Path:
    """Salt and its dependencies for a VM's Python 3.11, at the versions of the master's."""
    return _build_wheels(salt_wheelhouse_dir(), f"the wheelhouse of salt=={settings.SALT_VERSION} for the "
                         "emulated cloud's VMs", "-c", settings.REPO / "requirements.txt",
                         f"salt=={settings.SALT_VERSION}")
