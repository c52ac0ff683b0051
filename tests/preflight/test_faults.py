"""Preflight against four real hosts over SSH: a healthy set passes, and each injected fault flips
exactly the check it should, on the host it was injected into, with a remedy."""

from __future__ import annotations

import os
import sys

import pytest
from preflight_faults import (
    have_tools,
    host,
    mtu,
    netem_delay,
    nft_drop,
    other_version,
    problems,
    shm_size,
    userspace_delay,
    without_package,
)

from nemodeploy.preflight.result import exit_code
from nemodeploy.preflight.runner import Options, run_preflight

pytestmark = pytest.mark.netns


def only_flip(preflight, baseline, node: str, name: str):
    """Run preflight under the fault: exactly (node, name) must differ from the healthy run; its result."""
    report = preflight()
    now = problems(report)
    assert not (baseline - now), f"checks that failed on the healthy set no longer do: {baseline - now}"
    assert now - baseline == {(node, name)}
    return next(r for r in report.results if r.node == node and r.name == name)


def test_healthy_set_passes(preflight, bed):
    report = preflight()
    assert [r for r in report.results if r.status == "fail"] == []
    assert {r.node for r in report.results} == {h.name for h in bed.hosts}
    for h in bed.hosts:  # the environment `up` will use comes from the measured route
        assert report.env[h.name] == {"NCCL_SOCKET_IFNAME": "eth0", "GLOO_SOCKET_IFNAME": "eth0",
                                      "NCCL_IB_DISABLE": "1", "VLLM_HOST_IP": h.ip}
    for name in ("mtu", "ports", "latency", "route", "versions", "packages", "shm", "memory", "clock"):
        assert all(r.status == "ok" for r in report.results if r.name == name), name


def test_mtu_1500_on_one_host_under_a_9000_topology(preflight, baseline, bed):
    with mtu(bed, host(bed, "h2"), 1500):
        r = only_flip(preflight, baseline, "h2", "mtu")
    assert r.status == "fail" and "1500" in r.measured and "mtu 9000" in r.remedy


@pytest.mark.skipif(bool(have_tools("nft")), reason=str(have_tools("nft")))
def test_ray_port_blocked_with_nftables(preflight, baseline, bed):
    with nft_drop(host(bed, "h1"), 6379):  # the head's GCS port
        r = only_flip(preflight, baseline, "h1", "ports")
    assert "ray-gcs 6379 unreachable from 3/3 peers" in r.measured and "nft" in r.remedy


def test_small_dev_shm(preflight, baseline, bed):
    with shm_size(host(bed, "h3"), "64m"):
        r = only_flip(preflight, baseline, "h3", "shm")
    assert "64 MiB" in r.measured and "remount" in r.remedy


def test_version_mismatch_between_nodes(preflight, baseline, bed):
    with other_version(bed, host(bed, "h2"), "ray", "2.59.1"):
        r = only_flip(preflight, baseline, "h2", "versions")
    assert "ray 2.59.1" in r.measured and "'ray==" in r.remedy


def test_missing_package(preflight, baseline, bed):
    with without_package(host(bed, "h3"), "transformers"):
        r = only_flip(preflight, baseline, "h3", "packages")
    assert r.measured == "missing: transformers" and "transformers==" in r.remedy


def test_netem_delay_on_one_link(preflight, baseline, bed):
    with netem_delay(host(bed, "h3"), 100):
        r = only_flip(preflight, baseline, "h3", "latency")
    assert float(r.measured.split()[1]) >= 100 and "tc qdisc" in r.remedy


@pytest.mark.skipif(bool(have_tools("nft", "nsenter")), reason=str(have_tools("nft", "nsenter")))
@pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="needs /dev/net/tun (the tun module) for the TUN device")
def test_100ms_delay_on_one_host_through_a_userspace_forwarder(preflight, baseline, bed):
    """The same fault without netem: a STAND-IN (TUN device + userspace forwarder) delays the host's packets."""
    with userspace_delay(bed, host(bed, "h3"), 100):
        r = only_flip(preflight, baseline, "h3", "latency")
    assert float(r.measured.split()[1]) >= 100 and "tc qdisc" in r.remedy


def test_unreachable_node_is_a_failed_reach_check_and_the_others_are_still_checked(bed, topology):
    wrong_port = topology.nodes[3].model_copy(update={"ssh": topology.nodes[3].ssh.model_copy(update={"port": 2222})})
    broken = topology.model_copy(update={"nodes": [*topology.nodes[:3], wrong_port]})
    report = run_preflight(broken, None, Options(python=sys.executable, known_hosts=bed.known_hosts_path, bandwidth_seconds=0.1))
    [reach] = [r for r in report.results if r.name == "reach"]
    assert (reach.node, reach.status) == ("h4", "fail") and "refused" in reach.measured and "nodes[3].ssh.port" in reach.measured
    assert {r.node for r in report.results if r.name == "ports"} == {"h1", "h2", "h3"}
    assert exit_code(report.results) == 1
