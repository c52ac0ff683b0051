"""Which network a node's collective communication uses, as environment variables.

NCCL, Gloo and vLLM each pick an interface on their own when not told, and on a
multi-homed node they often pick the wrong one (docker0, a management port, a
link-local address): the job then hangs at the first all-reduce. The topology
lists a node's NICs; the first one listed carries the node's `address` and the
socket traffic (bootstrap, Gloo, NCCL's socket transport); the RDMA NICs with a
named HCA are the rails NCCL's IB transport uses.

Plain functions over topology Nodes: the Ray bring-up, the embedded engine's
ranks, the vLLM launcher and the Kubernetes renderers all take their per-node
environment from here so that every process of a node agrees on its network.
"""

from __future__ import annotations

from nemodeploy.topology.schema import NIC, Node


def socket_nic(node: Node) -> NIC | None:
    """The NIC for socket traffic: the first one the topology lists, None when it lists none."""
    return node.nics[0] if node.nics else None


def ib_hcas(node: Node) -> list[str]:
    """The HCA names (e.g. mlx5_0) of the node's RDMA NICs, in topology order, without repeats."""
    return list(dict.fromkeys(nic.hca for nic in node.nics if nic.rdma and nic.hca))


def socket_env(node: Node) -> dict[str, str]:
    """NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME: both on the socket NIC; empty without NICs."""
    nic = socket_nic(node)
    if nic is None:
        return {}
    return {"NCCL_SOCKET_IFNAME": nic.name, "GLOO_SOCKET_IFNAME": nic.name}


def ib_env(node: Node) -> dict[str, str]:
    """NCCL's IB transport: the named HCAs (all rails), or off when the node lists NICs and none has RDMA.

    A node that lists no NICs says nothing about its fabric, so NCCL keeps its own detection.
    An RDMA NIC without an `hca` leaves NCCL_IB_HCA unset: NCCL then uses every HCA it finds.
    """
    if not node.nics:
        return {}
    if not any(nic.rdma for nic in node.nics):
        return {"NCCL_IB_DISABLE": "1"}
    hcas = ib_hcas(node)
    return {"NCCL_IB_HCA": ",".join(hcas)} if hcas else {}


def host_ip_env(node: Node) -> dict[str, str]:
    """VLLM_HOST_IP: the address vLLM advertises to its peers (read by vLLM only; harmless elsewhere).

    vLLM otherwise guesses it from the default route, which on a multi-homed node is
    not the address the other nodes reach it on.
    """
    return {"VLLM_HOST_IP": node.address}


def node_env(node: Node) -> dict[str, str]:
    """Everything above for one node: the environment of its Ray raylet and of every rank on it."""
    return {**socket_env(node), **ib_env(node), **host_ip_env(node)}
