"""Faults injected into ONE test host, each real and undone when its `with` block ends.

An interface MTU, an nftables rule, a remount of /dev/shm, a netem qdisc (or, where the kernel has no
netem, its stand-in: a userspace delay forwarder), and a package's metadata changed or hidden inside
that host's mount namespace (the hosts share this machine's Python
environment, so a bind mount is how one host gets a different version or loses a package).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
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


FORWARDER = Path(__file__).with_name("delay_forwarder.py")


@contextlib.contextmanager
def userspace_delay(bed, h, ms: int):
    """STAND-IN for `netem delay` where the kernel has none: every packet the host sends to its peers goes
    through a TUN device and delay_forwarder.py, which holds it `ms` before sending it on out of eth0.
    Traffic to this machine (the bridge: SSH) is left alone, and so is the route `ip route get` reports."""
    tun, mark, table = "nddelay0", "2", "100"
    forwarder = subprocess.Popen(["nsenter", f"--net=/run/netns/{h.netns}", "--", sys.executable, str(FORWARDER), tun, str(ms)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    steer = (f"add table ip nddelay\nadd chain ip nddelay out {{ type route hook output priority mangle ; }}\n"
             f"add rule ip nddelay out meta mark != 1 ip daddr {bed.subnet} ip daddr != {bed.bridge_ip} meta mark set {mark}\n")
    try:
        assert forwarder.stdout.readline().strip() == "ready", forwarder.stderr.read()
        sh(h, "ip", "link", "set", tun, "mtu", str(h.mtu), "up")
        sh(h, "ip", "route", "add", bed.subnet, "dev", tun, "table", table)
        sh(h, "ip", "rule", "add", "fwmark", mark, "table", table, "priority", table)
        done = testhosts.run_in_host(h, ["nft", "-f", "-"], input=steer)
        assert done.returncode == 0, done.stderr
        yield
    finally:
        testhosts.run_in_host(h, ["nft", "delete", "table", "ip", "nddelay"])
        testhosts.run_in_host(h, ["ip", "rule", "del", "fwmark", mark, "table", table])
        forwarder.kill()  # its TUN device, and the table's route through it, go with it
        forwarder.wait()
        forwarder.stdout.close()
        forwarder.stderr.close()


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
