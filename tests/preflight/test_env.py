"""The environment preflight hands to `up` comes from what was measured, through netenv's rules."""

from __future__ import annotations

from nemodeploy.preflight.checks.network import route
from nemodeploy.preflight.context import Context
from nemodeploy.preflight.env import emitted_env, measured_topology
from nemodeploy.topology.loader import loads

TOPOLOGY = """
name: t
nodes:
  - name: n0
    address: 10.0.0.1
    accelerators: {kind: h100-sxm, count: 8}
    nics: [{name: ens1, mtu: 4092, rdma: true, hca: mlx5_9}]
model: {id: nemotron-h-tiny}
"""


def _facts(dev: str, src: str, rdma: list) -> dict:
    return {"route": {"dev": dev, "src": src}, "links": {dev: 4092}, "rdma": rdma, "missing_commands": []}


def test_env_follows_the_routed_interface_and_the_rdma_device_behind_it():
    # The probe's reading of /sys/class/infiniband, written as plain data: mlx5_0's netdev is ib0.
    rdma = [{"name": "mlx5_0", "netdevs": ["ib0"], "ports": [{"port": 1, "state": "4: ACTIVE", "link_layer": "InfiniBand",
                                                             "rate": "400 Gb/sec (4X NDR)", "gids": {}}]}]
    ctx = Context(loads(TOPOLOGY), None, facts={"n0": _facts("ib0", "10.0.0.7", rdma)})
    assert emitted_env(ctx) == {"n0": {"NCCL_SOCKET_IFNAME": "ib0", "GLOO_SOCKET_IFNAME": "ib0",
                                       "NCCL_IB_HCA": "mlx5_0,mlx5_9", "VLLM_HOST_IP": "10.0.0.7"}}
    # ...and the route check warns that the topology disagrees (up uses the measured route), and how to match it
    [result] = route(ctx)
    assert (result.status, result.severity) == ("warn", "warning")
    assert result.measured == "via ib0 from 10.0.0.7" and "`up` uses ib0 10.0.0.7" in result.remedy
    assert measured_topology(ctx).nodes[0].address == "10.0.0.7"


def test_route_cannot_be_read_without_iproute2():
    ctx = Context(loads(TOPOLOGY), None, facts={"n0": {**_facts("ens1", "10.0.0.1", []), "route": None, "missing_commands": ["ip"]}})
    [result] = route(ctx)
    assert result.status == "fail" and "iproute2" in result.remedy
