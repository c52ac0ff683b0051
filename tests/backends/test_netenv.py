"""The per-node communication environment: which NIC NCCL, Gloo and vLLM use, from the topology."""

from __future__ import annotations

import shlex

from nemodeploy.cluster.ray_bringup import RaySettings, start_command
from nemodeploy.topology.netenv import ib_env, node_env, socket_env
from nemodeploy.topology.schema import NIC, Accelerators, Node


def node(*nics: NIC, address: str = "10.213.41.7") -> Node:
    return Node(name="n", address=address, accelerators=Accelerators(kind="h100-sxm", count=8), nics=list(nics))


def test_socket_traffic_goes_over_the_first_listed_nic():
    env = socket_env(node(NIC(name="bond0"), NIC(name="ib0", rdma=True, hca="mlx5_0")))
    assert env == {"NCCL_SOCKET_IFNAME": "bond0", "GLOO_SOCKET_IFNAME": "bond0"}


def test_ib_uses_every_named_rdma_rail_once():
    rails = [NIC(name=f"ib{i}", rdma=True, hca=f"mlx5_{i}") for i in range(4)]
    env = ib_env(node(NIC(name="eth0"), *rails, NIC(name="ib0b", rdma=True, hca="mlx5_0")))
    assert env == {"NCCL_IB_HCA": "mlx5_0,mlx5_1,mlx5_2,mlx5_3"}


def test_ib_is_off_when_no_nic_has_rdma_and_left_to_nccl_when_nothing_is_known():
    assert ib_env(node(NIC(name="eth0"), NIC(name="eth1"))) == {"NCCL_IB_DISABLE": "1"}
    assert ib_env(node()) == {}
    assert ib_env(node(NIC(name="roce0", rdma=True))) == {}  # RDMA without a named HCA: NCCL finds them


def test_node_env_adds_the_address_vllm_advertises():
    env = node_env(node(NIC(name="enp1s0f0np0", rdma=True, hca="rocep1s0f0"), address="10.213.41.9"))
    assert env == {"NCCL_SOCKET_IFNAME": "enp1s0f0np0", "GLOO_SOCKET_IFNAME": "enp1s0f0np0",
                   "NCCL_IB_HCA": "rocep1s0f0", "VLLM_HOST_IP": "10.213.41.9"}
    assert node_env(node()) == {"VLLM_HOST_IP": "10.213.41.7"}


def test_ray_start_carries_the_node_env():
    argv = shlex.split(start_command(node(NIC(name="ens5")), RaySettings(), None))
    env = argv[1:argv.index("ray")]
    assert {"NCCL_SOCKET_IFNAME=ens5", "GLOO_SOCKET_IFNAME=ens5", "NCCL_IB_DISABLE=1",
            "VLLM_HOST_IP=10.213.41.7"} <= set(env)
