"""The test hosts themselves: isolated hostnames and process tables, MTU, teardown."""

from __future__ import annotations

import pytest

from nemodeploy.cluster import testhosts

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
