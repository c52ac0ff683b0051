"""The `ray start` command lines, from the topology alone (no hosts needed)."""

from __future__ import annotations

import shlex

import pytest

pytest.importorskip("paramiko", reason="the cluster extra is not installed (pip install -e .[cluster])")

from nemodeploy.cluster.errors import ClusterError  # noqa: E402
from nemodeploy.cluster.lifecycle import up_cluster  # noqa: E402
from nemodeploy.cluster.ray_bringup import RaySettings, start_command  # noqa: E402
from nemodeploy.topology.loader import loads  # noqa: E402

TOPOLOGY = loads(
    """
name: two
nodes:
  - name: gpu0
    address: 10.213.9.1
    accelerators: {kind: h100-sxm, count: 8}
    nics: [{name: ens1, rdma: true}]
  - name: cpu1
    address: 10.213.9.2
    accelerators: {kind: cpu, count: 4}
    nics: [{name: eth0}]
model: {id: nemotron-h-tiny}
"""
)


def _argv(node_index: int, head: str | None) -> list[str]:
    return shlex.split(start_command(TOPOLOGY.nodes[node_index], RaySettings(object_store_memory=10**9), head))


def test_head_command_has_its_address_port_gpus_and_fast_health_checks():
    argv = _argv(0, None)
    assert argv[0] == "env" and "NCCL_SOCKET_IFNAME=ens1" in argv and "GLOO_SOCKET_IFNAME=ens1" in argv
    assert not any(a.startswith("NCCL_IB_DISABLE") for a in argv)  # the NIC has RDMA
    assert "RAY_health_check_period_ms=1000" in argv
    ray = argv[argv.index("ray") :]
    for flag in ["--head", "--port=6379", "--node-ip-address=10.213.9.1", "--num-gpus=8",
                 "--temp-dir=/tmp/ndray/gpu0", "--include-dashboard=false", "--object-store-memory=1000000000"]:
        assert flag in ray


def test_worker_command_joins_the_head_without_head_settings():
    argv = _argv(1, "10.213.9.1:6379")
    assert "NCCL_IB_DISABLE=1" in argv and not any(a.startswith("RAY_health") for a in argv)
    ray = argv[argv.index("ray") :]
    assert "--address=10.213.9.1:6379" in ray and "--num-cpus=4" in ray and "--num-gpus=0" in ray
    assert "--head" not in ray


def test_nodes_described_with_a_count_cannot_be_brought_up():
    counted = loads(
        "name: n\nnodes: [{name: a, address: 10.213.9.1, count: 2, accelerators: {kind: cpu}}]\nmodel: {id: nemotron-h-tiny}\n"
    )
    with pytest.raises(ClusterError, match=r"nodes\[0\] \(a\) has count 2; .*one by one"):
        up_cluster(counted)
