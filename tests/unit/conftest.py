"""The cluster model's pure modules (_utils/), loaded from the repo as Salt's loader would find
them, and the inputs the model gets in a deployment: the components' defaults and the pillar."""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from types import ModuleType

import pytest
import salt.config
import salt.loader
import yaml

from tests.conftest import REPO


def load_module(path: str) -> ModuleType:
    """A Salt loader module of the repo (_modules/x.py, _utils/x.py...) as a plain module."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


model = load_module("_utils/pgcluster_model.py")
render = load_module("_utils/pgcluster_render.py")


# What the ext_pillar pgcluster_defaults gives: every component folder's defaults.yaml.
DEFAULTS_PILLAR = {path.parent.name: yaml.safe_load(path.read_text())
                   for path in sorted((REPO / "salt").glob("*/defaults.yaml"))}
DEFAULTS = model.merge_defaults(DEFAULTS_PILLAR)
# A member's share of the generated passwords, as the ext_pillar gives it.
CREDENTIALS = {n: f"secret-{n}" for n in load_module("_pillar/pgcluster_credentials.py").NAMES}
CLUSTER_PILLAR = yaml.safe_load((REPO / "pillar" / "cluster.sls").read_text())["pgcluster"]


def build(pillar: dict | None = None) -> dict:
    """The model of pillar/cluster.sls with `pillar` over it (as a later pillar file would)."""
    base = copy.deepcopy(CLUSTER_PILLAR)
    for key, value in (pillar or {}).items():
        base[key] = value
    return model.build(base, DEFAULTS)


@functools.cache
def salt_utils():
    """The repo's _utils as Salt's loader gives them to a minion's modules (__utils__)."""
    opts = salt.config.minion_config(None)
    opts["utils_dirs"] = [str(REPO / "_utils")]
    return salt.loader.utils(opts)


@pytest.fixture
def cfg() -> dict:
    return build()


class LoaderContext(dict):
    """``__context__`` as Salt's loader gives it to a module: usable in the thread that runs
    the function, and not in a thread it starts (there the loader's context is unset, and
    Salt raises this AttributeError)."""

    def _check(self):
        if threading.current_thread() is not threading.main_thread():
            raise AttributeError("'NoneType' object has no attribute 'get'")

    def get(self, *args):
        self._check()
        return super().get(*args)

    def __getitem__(self, key):
        self._check()
        return super().__getitem__(key)

    def __setitem__(self, key, value):
        self._check()
        super().__setitem__(key, value)

    def __contains__(self, key):
        self._check()
        return super().__contains__(key)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_etcd(data_dir: Path, name: str = "e1", address: str = "127.0.0.1",
               ports: tuple[int, int] | None = None, initial_cluster: str | None = None,
               ) -> tuple[subprocess.Popen, int, int]:
    """One etcd member (Debian's etcd-server) on loopback in plain text: (its process, client
    port, peer port), once it says it is healthy. By default a new cluster's only member; with
    ``initial_cluster``, a member added to a running one. The caller ends it."""
    client, peer = ports or (free_port(), free_port())
    url = f"http://{address}:{client}"
    process = subprocess.Popen(
        ["etcd", "--name", name, "--data-dir", str(data_dir),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", f"http://{address}:{peer}",
         "--initial-advertise-peer-urls", f"http://{address}:{peer}",
         "--initial-cluster", initial_cluster or f"{name}=http://{address}:{peer}",
         "--initial-cluster-state", "existing" if initial_cluster else "new"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as answer:
                if json.load(answer).get("health") == "true":
                    return process, client, peer
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.terminate()
            raise AssertionError("etcd did not come up")
        time.sleep(0.1)
