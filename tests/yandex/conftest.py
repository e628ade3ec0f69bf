"""Fixtures for the Yandex Cloud driver: the fake API, credentials made here, and a salt-cloud
configuration that points the repo's driver, profiles and map at the fake."""

from __future__ import annotations

import json
import socket
import threading

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from lab.yandex.fake_api import FOLDER, FakeYandex
from tests.conftest import REPO, VENV_BIN, run

# The network a user's provider config describes (cloud.providers.d/yandex.conf.example).
EXAMPLE = yaml.safe_load((REPO / "cloud.providers.d" / "yandex.conf.example").read_text())
NETWORK = EXAMPLE["yandex"]["network"]
SERVICE_ACCOUNT = "ajefake0service00001"
KEY_ID = "ajefake0key000000001"


@pytest.fixture
def fake():
    api = FakeYandex().start()
    yield api
    api.stop()


def write_key_file(path, key_id=KEY_ID, account=SERVICE_ACCOUNT):
    """A service account key as `yc iam key create` writes it; returns the private key."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    public = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    path.write_text(json.dumps({
        "id": key_id, "service_account_id": account, "created_at": "2026-11-26T00:00:00Z",
        "key_algorithm": "RSA_2048", "public_key": public,
        "private_key": "PLEASE DO NOT REMOVE THIS LINE! Yandex.Cloud SA Key ID <" + key_id + ">\n" + pem,
    }))
    path.chmod(0o600)
    return private_key


@pytest.fixture
def key_file(tmp_path, fake):
    """A service account key whose public half the fake knows."""
    path = tmp_path / "sa-key.json"
    private_key = write_key_file(path)
    fake.add_key(KEY_ID, SERVICE_ACCOUNT, private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.fixture
def ssh_key(tmp_path):
    """An ed25519 key pair for the SSH user the VMs get (key file, key file + .pub)."""
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "id_ed25519"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    (tmp_path / "id_ed25519.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b" salt-cloud\n")
    return path


def provider_config(fake, key_file, ssh_key, **overrides):
    """What a user's cloud.providers.d/yandex.conf holds, pointed at the fake, with fast polling."""
    return {
        "driver": "yandex",
        "folder_id": FOLDER,
        "service_account_key_file": str(key_file),
        "iam_url": fake.url, "compute_url": fake.url, "vpc_url": fake.url, "operation_url": fake.url,
        "ssh_username": "debian",
        "ssh_keyfile": str(ssh_key),
        "api_retry_delay": 0.05,
        "operation_poll_interval": 0.05,
        "wait_for_ip_interval": 0.1,
        "deploy": False,
        "minion": {"master": "127.0.0.1"},
        "network": NETWORK,
        **overrides,
    }


class SaltCloud:
    """The real salt-cloud command with its own config dir: the repo's driver, profiles and
    maps, and a provider that points at the fake."""

    def __init__(self, root, provider):
        self.root = root
        self.config = root / "etc"
        (self.config / "cloud.providers.d").mkdir(parents=True)
        (self.config / "master").write_text(json.dumps({
            "root_dir": str(root), "cloud_dirs": [str(REPO / "_clouds")],
            "log_file": str(root / "master.log"),
        }))
        (self.config / "cloud").write_text(json.dumps({
            "profiles_config": str(REPO / "cloud.profiles"),
            "log_file": str(root / "cloud.log"), "log_level_logfile": "debug",
        }))
        self.set_provider(provider)

    def set_provider(self, provider):
        (self.config / "cloud.providers.d" / "yandex.conf").write_text(json.dumps({"yandex": provider}))

    def __call__(self, *args, timeout=300):
        return run(VENV_BIN / "salt-cloud", "-c", self.config, "-y", "--no-color", *args,
                   check=False, timeout=timeout)

    def json(self, *args):
        result = self(*args, "--out=json")
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout)

    @property
    def log(self):
        path = self.root / "cloud.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def bare_salt_cloud(tmp_path, fake, key_file, ssh_key):
    """salt-cloud with the example's provider, in a folder with nothing made yet."""
    return SaltCloud(tmp_path / "salt", provider_config(fake, key_file, ssh_key))


@pytest.fixture
def salt_cloud(bare_salt_cloud):
    """... after `salt-cloud -f ensure_network yandex`, as the README has a user start."""
    result = bare_salt_cloud("-f", "ensure_network", "yandex")
    assert result.returncode == 0, result.stdout + result.stderr
    return bare_salt_cloud


@pytest.fixture
def banner_only_ssh():
    """A port that speaks the SSH banner and hangs up: a VM whose SSH never lets us in."""
    server = socket.create_server(("127.0.77.1", 0))
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.sendall(b"SSH-2.0-Broken\r\n")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()
