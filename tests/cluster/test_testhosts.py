"""The test hosts themselves: isolated hostnames and process tables, MTU, CPU shares, private homes, teardown."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from nemodeploy.cluster import ssh, testhosts

pytestmark = pytest.mark.netns


def test_hosts_are_isolated_and_reachable(testbed):
    h1, h2, _ = testbed.hosts
    assert testhosts.run_in_host(h1, ["hostname"]).stdout.strip() == "h1"
    assert testhosts.run_in_host(h2, ["hostname"]).stdout.strip() == "h2"
    # Own process table: PID 1 is the host's init, and sshd of h2 is not visible from h1.
    ps = testhosts.run_in_host(h1, ["ps", "-eo", "pid=,args="]).stdout
    assert ps.split()[0] == "1" and "h2/sshd_config" not in ps
    assert testhosts.run_in_host(h1, ["ping", "-c1", "-W2", h2.ip]).returncode == 0


def test_mtu_is_set_on_both_ends_and_teardown_is_complete(cluster_cache):
    with testhosts.test_hosts(2, mtu=[9000, 1500], name="ndm", subnet="10.213.2.0/24") as bed:
        h1, h2 = bed.hosts
        inside = testhosts.run_in_host(h1, ["cat", "/sys/class/net/eth0/mtu"]).stdout.strip()
        outside = open(f"/sys/class/net/{h1.bridge_port}/mtu").read().strip()
        assert inside == outside == "9000"
        # Jumbo frames get through only where every port of the path has the MTU.
        jumbo = ["ping", "-c1", "-W1", "-M", "do", "-s", "8972"]
        assert testhosts.run_in_host(h1, [*jumbo, bed.bridge_ip]).returncode == 0
        assert testhosts.run_in_host(h1, [*jumbo, h2.ip]).returncode != 0
        netns = [h.netns for h in bed.hosts]
    listed = testhosts._ip("netns", "list").stdout
    assert not any(ns in listed for ns in netns)
    assert testhosts._ip("link", "show", "ndmbr", check=False).returncode != 0
    assert testhosts.load("ndm") is None


def test_a_cpu_share_caps_each_host_and_goes_with_the_bed(cluster_cache):
    """A host given a tenth of a core gets about that, through SSH sessions started after it was made."""
    with testhosts.test_hosts(1, name="ndcpu", subnet="10.213.4.0/24", cpu_per_host=0.1) as bed:
        (h1,) = bed.hosts
        spin = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 1: pass\nprint(time.process_time())"
        with ssh.connect(ssh.Target("h1", h1.ip, key=h1.key_path), bed.known_hosts_path) as shell:
            cpu_s = float(shell.check([sys.executable, "-c", spin]).out)
        assert cpu_s < 0.3  # a whole core would give about 1.0
        folder = Path(bed.cpu_cgroup)
        assert folder.is_dir()
    assert not folder.exists()


def test_a_private_home_keeps_what_a_host_writes_there(cluster_cache):
    with testhosts.test_hosts(2, name="ndhome", subnet="10.213.5.0/24", private_home=True) as bed:
        h1, h2 = bed.hosts
        marker = f"nemodeploy-private-home-{os.getpid()}"
        with ssh.connect(ssh.Target("h1", h1.ip, key=h1.key_path), bed.known_hosts_path) as one, \
                ssh.connect(ssh.Target("h2", h2.ip, key=h2.key_path), bed.known_hosts_path) as two:
            one.check(f"echo written-on-h1 > ~/{marker}")
            assert one.check(f"cat ~/{marker}").out == "written-on-h1\n"
            assert two.run(f"test -e ~/{marker}").rc == 1
            assert not (Path.home() / marker).exists()
            # The machine's home is still seen through it (the hosts' Python may live there).
            assert one.check(["test", "-x", os.path.realpath(sys.executable)]).rc == 0
