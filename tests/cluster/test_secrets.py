"""Where the cluster's secrets live on this machine: 0600 files in 0700 folders, made once and kept."""

from __future__ import annotations

import stat

import pytest

from nemodeploy.backends.embedded import local_api_key
from nemodeploy.cluster import secrets


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEMODEPLOY_CACHE", str(tmp_path))
    return tmp_path


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_ray_token_is_made_once_per_cluster_private_and_forgotten_by_down():
    token = secrets.ray_token("c1")
    assert len(token) >= 32 and secrets.ray_token("c1") == token and secrets.ray_token("c2") != token
    path = secrets.local_dir("c1") / secrets.RAY_TOKEN
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    secrets.forget_ray_token("c1")
    assert secrets.ray_token("c1") != token


def test_the_api_key_is_given_kept_or_generated_once():
    key, generated = secrets.engine_api_key("c", None)
    assert generated and len(key) >= 32
    assert secrets.engine_api_key("c", None) == (key, False)  # kept across `up`
    assert secrets.engine_api_key("c", "mine") == ("mine", False)
    assert secrets.engine_api_key("c", None) == ("mine", False)  # the given key replaces the kept one
    assert _mode(secrets.local_dir("c") / secrets.API_KEY) == 0o600
    assert secrets.matches("mine", "mine") and not secrets.matches("mine", "mind")


def test_a_private_file_never_exists_with_wider_permissions(cache):
    loose = cache / "loose"
    loose.mkdir(mode=0o755)
    path = secrets.write_private(loose / "s", "v1")
    assert path.read_text() == "v1" and _mode(path) == 0o600 and _mode(loose) == 0o700
    (loose / ".s.tmp").symlink_to(cache / "elsewhere")  # a planted link is replaced, never followed
    secrets.write_private(path, "v2")
    assert path.read_text() == "v2" and not (cache / "elsewhere").exists()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_a_loopback_server_needs_no_key(host):
    assert local_api_key("m", host, None) == (None, None)
    assert local_api_key("m", host, "given") == ("given", None)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "node1.example"])
def test_a_server_on_a_network_address_requires_a_key_generated_once(host):
    key, shown = local_api_key("m", host, None)
    assert key and shown is not None and _mode(shown) == 0o600
    assert local_api_key("m", host, None) == (key, None)  # generated (and shown) once, then kept
    assert local_api_key("m", host, "given") == ("given", None)
