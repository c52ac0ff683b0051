"""Test hosts for the cluster tests: three network namespaces with sshd, made once per session.

Skipped (with the reason) where they cannot be made: not root, no `ip netns`, no sshd.
Ray state files go to a temporary NEMODEPLOY_CACHE, never the user's.
"""

from __future__ import annotations

import os
import threading

import pytest

pytest.importorskip("paramiko", reason="the cluster extra is not installed (pip install -e .[cluster])")
pytest.importorskip("ray", reason="the cluster extra is not installed (pip install -e .[cluster])")

from nemodeploy.cluster import testhosts  # noqa: E402
from nemodeploy.cluster.ray_bringup import RaySettings  # noqa: E402
from nemodeploy.topology.loader import loads  # noqa: E402

# Small on purpose: the machine running the tests is shared and three nodes would each claim 30% of it.
TEST_RAY = RaySettings(object_store_memory=80 * 2**20, memory=400 * 2**20, join_timeout_s=120)


@pytest.fixture(scope="session")
def cluster_cache(tmp_path_factory):
    old = os.environ.get("NEMODEPLOY_CACHE")
    os.environ["NEMODEPLOY_CACHE"] = str(tmp_path_factory.mktemp("nemodeploy-cache"))
    yield os.environ["NEMODEPLOY_CACHE"]
    if old is None:
        os.environ.pop("NEMODEPLOY_CACHE", None)
    else:
        os.environ["NEMODEPLOY_CACHE"] = old


@pytest.fixture(scope="session")
def testbed(cluster_cache):
    """Three hosts h1..h3 on 10.213.0.0/24 (bridge ndtbr), torn down at the end of the session.

    NEMODEPLOY_TESTBED and NEMODEPLOY_TESTBED_SUBNET give another name and subnet, so that two test
    runs on one machine do not take each other's bridge.
    """
    reason = testhosts.unavailable_reason()
    if reason:
        pytest.skip(reason)
    name = os.environ.get("NEMODEPLOY_TESTBED", testhosts.DEFAULT_BED)
    subnet = os.environ.get("NEMODEPLOY_TESTBED_SUBNET", testhosts.DEFAULT_SUBNET)
    with testhosts.test_hosts(3, name=name, subnet=subnet) as bed:
        yield bed


@pytest.fixture(scope="session")
def topology(testbed):
    return loads(testbed.topology_yaml("nd-test"))


@pytest.fixture(scope="session")
def ray_settings() -> RaySettings:
    return TEST_RAY


def _ray_processes(host: testhosts.TestHost) -> list[str]:
    out = testhosts.run_in_host(host, ["ps", "-eo", "args="]).stdout.splitlines()
    return [line for line in out if "ray" in line.lower() and not line.startswith("ps ")]


@pytest.fixture(scope="session")
def ray_processes():
    """ray_processes(host): command lines of Ray's processes inside one host."""
    return _ray_processes


_ARGV = 'for f in /proc/[0-9]*/cmdline; do tr "\\0" " " < "$f" 2>/dev/null; echo; done'


class ArgvScan:
    """Every command line seen in the hosts while the block runs, polled without pause, for
    "no secret is on any command line" checks; `lines` is empty if the poll saw nothing."""

    def __init__(self, hosts: list[testhosts.TestHost]):
        self.hosts, self.lines, self._stop = hosts, set(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for host in self.hosts:
                out = testhosts.run_in_host(host, ["sh", "-c", _ARGV], timeout=30).stdout
                self.lines.update(line for line in out.splitlines() if line.strip())

    def __enter__(self) -> "ArgvScan":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def holding(self, secret: str) -> list[str]:
        return [line for line in self.lines if secret in line]


@pytest.fixture(scope="session")
def argv_scan(testbed):
    """argv_scan(): an ArgvScan of every test host, to use as a context manager."""
    return lambda: ArgvScan(testbed.hosts)
