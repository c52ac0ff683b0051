"""An Ansible inventory for ansible/prepare.yml and ansible/preflight.yml, from a topology.

Per node: how to log in (the topology's ssh section) and what prepare.yml sets (the socket NIC and
its MTU, /dev/shm size, RDMA tools). For all nodes: the Python packages pinned to ONE version each,
the versions installed on this machine (the controller), so every node ends up the same.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from nemodeploy import __version__
from nemodeploy.preflight.context import Thresholds
from nemodeploy.topology import netenv
from nemodeploy.topology.schema import Topology

GROUP = "nemodeploy"


def pinned_packages(topology: Topology) -> list[str]:
    """pip requirements for the nodes: nemodeploy and, when installed here, Ray and vLLM at this machine's versions."""
    wanted = ["ray[default]"] + (["vllm"] if topology.engine.kind == "vllm" else [])
    pins = [f"nemodeploy=={__version__}"]
    for requirement in wanted:
        name = requirement.split("[")[0]
        try:
            pins.append(f"{requirement}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(requirement)  # not installed here: the nodes resolve one version, the same for all
    return pins


def inventory(
    topology: Topology, topology_path: str, venv: str | None = None, known_hosts: str | None = None, python: str | None = None
) -> dict:
    shm_per_accelerator = Thresholds().shm_bytes_per_accelerator
    hosts = {}
    for node in topology.nodes:
        nic = netenv.socket_nic(node)
        host = {
            "ansible_host": node.address,
            "ansible_user": node.ssh.user,
            "ansible_port": node.ssh.port,
            "nemodeploy_shm_size": f"{max(16, 2 * node.accelerators.count * shm_per_accelerator >> 30)}g",
            "nemodeploy_rdma": any(n.rdma for n in node.nics),
        }
        if node.ssh.key:
            host["ansible_ssh_private_key_file"] = node.ssh.key
        if nic is not None:
            host.update(nemodeploy_nic=nic.name, nemodeploy_mtu=nic.mtu)
        hosts[node.name] = host
    group_vars = {
        "nemodeploy_topology": str(Path(topology_path).resolve()),
        "nemodeploy_pip_packages": pinned_packages(topology),
    }
    if venv:
        group_vars["nemodeploy_venv"] = venv
    if python:
        group_vars["ansible_python_interpreter"] = python
    if known_hosts:
        group_vars["ansible_ssh_common_args"] = f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes"
    return {GROUP: {"hosts": hosts, "vars": group_vars}}
