"""The environment `up` should give each node, from what preflight MEASURED rather than what the topology says.

The rules (which variable, from which NIC) are netenv's; preflight only substitutes the measured
facts: the interface the kernel routes to the head on, the source address it uses, and the RDMA
device behind that interface.
"""

from __future__ import annotations

from nemodeploy.preflight import hardware
from nemodeploy.preflight.context import Context
from nemodeploy.topology import netenv
from nemodeploy.topology.schema import NIC, Node, Topology


def measured_node(ctx: Context, node: Node) -> Node:
    """The node as measured: its socket NIC is the routed interface (first), its address the route's source."""
    facts = ctx.facts[node.name]
    route = facts.get("route")
    if not route:
        return node
    listed = ctx.socket_nic(node)
    hca_of = {dev: p.device for p in hardware.rdma_ports(facts["rdma"]) if p.state == "ACTIVE" for dev in p.netdevs}
    socket = NIC(
        name=route["dev"],
        mtu=listed.mtu if listed else 1500,  # no variable depends on it; the mtu check judges the real one
        speed_gbps=listed.speed_gbps if listed else 100,
        rdma=listed.rdma if listed else bool(hca_of),
        hca=hca_of.get(route["dev"]) or (listed.hca if listed else None),
    )
    rails = [nic for nic in node.nics if nic.name != route["dev"]]
    return node.model_copy(update={"address": route["src"], "nics": [socket, *rails]})


def measured_topology(ctx: Context) -> Topology:
    """The topology with every node as measured: what `up` starts Ray and the engine from (SSH still uses the
    topology's addresses)."""
    return ctx.topology.model_copy(update={"nodes": [measured_node(ctx, node) for node in ctx.nodes]})


def emitted_env(ctx: Context) -> dict[str, dict[str, str]]:
    """node name -> NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME, NCCL_IB_HCA / NCCL_IB_DISABLE, VLLM_HOST_IP."""
    return {node.name: netenv.node_env(measured_node(ctx, node)) for node in ctx.nodes}
