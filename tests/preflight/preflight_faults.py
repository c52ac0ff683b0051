"""Faults injected into ONE test host, each real and undone when its `with` block ends.

An interface MTU, an nftables rule, a remount of /dev/shm, a netem qdisc, and a package's metadata
changed or hidden inside that host's mount namespace (the hosts share this machine's Python
environment, so a bind mount is how one host gets a different version or loses a package).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from nemodeploy.cluster import testhosts

JUMBO = 9000  # the MTU of every test link, and of the topology


def problems(report) -> set[tuple[str, str]]:
    return {(r.node, r.name) for r in report.results if r.problem}


def host(bed, name):
    return next(h for h in bed.hosts if h.name == name)


def sh(h, *argv: str) -> subprocess.CompletedProcess:
    done = testhosts.run_in_host(h, list(argv), timeout=30)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done


@contextlib.contextmanager
def mtu(bed, h, value: int):
    """Both ends of the host's link at another MTU: what a host left at 1500 looks like."""
    for args in (["ip", "link", "set", h.bridge_port, "mtu", str(value)],
                 ["ip", "-n", h.netns, "link", "set", "eth0", "mtu", str(value)]):
        subprocess.run(args, check=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "-n", h.netns, "link", "set", "eth0", "mtu", str(JUMBO)], check=True)
        subprocess.run(["ip", "link", "set", h.bridge_port, "mtu", str(JUMBO)], check=True)


@contextlib.contextmanager
def nft_drop(h, port: int):
    for rule in (["add", "table", "inet", "ndfault"],
                 ["add", "chain", "inet", "ndfault", "input", "{ type filter hook input priority 0; policy accept; }"],
                 ["add", "rule", "inet", "ndfault", "input", "tcp", "dport", str(port), "drop"]):
        subprocess.run(["ip", "netns", "exec", h.netns, "nft", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "netns", "exec", h.netns, "nft", "delete", "table", "inet", "ndfault"], check=True)


@contextlib.contextmanager
def shm_size(h, size: str):
    before = sh(h, "findmnt", "-no", "SIZE", "/dev/shm").stdout.split()[-1]  # the topmost mount: the host's own
    sh(h, "mount", "-o", f"remount,size={size}", "/dev/shm")
    try:
        yield
    finally:
        sh(h, "mount", "-o", f"remount,size={before}", "/dev/shm")


@contextlib.contextmanager
def netem_delay(h, ms: int):
    done = testhosts.run_in_host(h, ["tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", f"{ms}ms"])
    if done.returncode != 0:
        pytest.skip(f"this kernel cannot add a netem qdisc (sch_netem): {done.stderr.strip()}")
    try:
        yield
    finally:
        sh(h, "tc", "qdisc", "del", "dev", "eth0", "root")


def _dist_info(package: str) -> Path:
    return Path(str(metadata.distribution(package)._path))  # the .dist-info directory this environment uses


@contextlib.contextmanager
def other_version(bed, h, package: str, version: str):
    """The host sees `package` at `version`: its METADATA replaced inside that host's mount namespace only."""
    original = _dist_info(package) / "METADATA"
    changed = Path(bed.workdir) / f"METADATA-{package}-{h.name}"
    changed.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {version}", original.read_text(), count=1))
    sh(h, "mount", "--bind", str(changed), str(original))
    try:
        yield
    finally:
        sh(h, "umount", str(original))
        changed.unlink()


@contextlib.contextmanager
def without_package(h, package: str):
    """The host has no `package`: an empty directory over its .dist-info, inside that host only."""
    info = _dist_info(package)
    sh(h, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(info))
    try:
        yield
    finally:
        sh(h, "umount", str(info))


def have_tools(*names: str) -> str | None:
    missing = [n for n in names if shutil.which(n) is None]
    return f"needs {', '.join(missing)} (apt: nftables, iproute2)" if missing else None
