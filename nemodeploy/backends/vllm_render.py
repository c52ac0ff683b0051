"""What a vLLM launch runs on each node, written out: the native command and its `docker run` form.

`render` is what `nemodeploy render vllm` prints. Per node: its rank and role, its environment
(netenv + vLLM's), the `ray start` it runs first under the ray launcher, and `vllm serve` where
the node runs it; the docker form adds what vLLM needs in a container: host IPC and network,
a large /dev/shm, unlimited locked memory (RDMA registration), a 64 MiB stack, the model
mounted read-only (a Hugging Face id mounts the hub cache instead, which vLLM writes to).
"""

from __future__ import annotations

import shlex

from nemodeploy.backends.vllm import launch_nodes, serve_argv, serve_env
from nemodeploy.backends.vllm_table import flag_table
from nemodeploy.plan.types import Plan
from nemodeploy.topology.catalog import ACCELERATORS
from nemodeploy.topology.schema import Topology

RAY_PORT = 6379
IMAGES = {"nvidia": "vllm/vllm-openai", "amd": "rocm/vllm"}  # tagged v<the flag table's vLLM version>
SHM_SIZE = "16g"
CONTAINER = "nemodeploy-vllm"
_GPU_ACCESS = {
    "nvidia": ["--gpus", "all"],
    "amd": ["--device", "/dev/kfd", "--device", "/dev/dri", "--group-add", "video"],
}
HF_CACHE = "/root/.cache/huggingface"  # inside the image (it runs as root)


def ray_start_argv(address: str, head: str | None, *, block: bool = False) -> list[str]:
    """`ray start` for the head (head None) or a worker joining `head`; `block` keeps it in the foreground."""
    argv = ["ray", "start", f"--node-ip-address={address}", "--disable-usage-stats", *(["--block"] if block else [])]
    return argv + ([f"--address={head}:{RAY_PORT}"] if head else ["--head", f"--port={RAY_PORT}"])


def _shell(env: dict[str, str], argv: list[str]) -> str:
    return shlex.join([*(f"{k}={v}" for k, v in env.items()), *argv]) if env else shlex.join(argv)


def _docker(topology: Topology, vendor: str, user: str, env: dict[str, str], entry: list[str]) -> list[str]:
    model = topology.model.path
    home = "/root" if user == "root" else f"/home/{user}"
    mount = f"{model}:{model}:ro" if model else f"{home}/.cache/huggingface:{HF_CACHE}"
    argv = ["docker", "run", "-d", "--name", CONTAINER, *_GPU_ACCESS.get(vendor, []), "--ipc=host", "--network=host",
            f"--shm-size={SHM_SIZE}", "--ulimit", "memlock=-1", "--ulimit", "stack=67108864", "-v", mount]
    for key, value in env.items():
        argv += ["-e", f"{key}={value}"]
    image = f"{IMAGES.get(vendor, IMAGES['nvidia'])}:v{flag_table().vllm_version}"
    if entry[:2] == ["vllm", "serve"]:  # the image's entrypoint is `vllm serve`
        return [*argv, image, *entry[2:]]
    return [*argv, "--entrypoint", entry[0], image, *entry[1:]]


def render(topology: Topology, plan: Plan, launcher: str | None = None) -> dict:
    """Every node's launch, head first: plain data for `--json`; VllmError when the validator refuses."""
    launcher = launcher or topology.engine.launcher
    vendor = ACCELERATORS[plan.accelerator].vendor
    nodes = launch_nodes(topology, plan)
    head = nodes[0].address
    out = []
    for rank, node in enumerate(nodes):
        env = serve_env(topology, plan, node_rank=rank, launcher=launcher)
        entry: dict = {"node": node.name, "address": node.address, "node_rank": rank, "env": env}
        steps: list[list[str]] = []
        if launcher == "ray" and len(nodes) > 1:
            steps.append(ray_start_argv(node.address, head if rank else None))
        if launcher == "mp" or rank == 0:
            steps.append(serve_argv(topology, plan, node_rank=rank, launcher=launcher))
        entry["role"] = "head" if rank == 0 else ("headless" if launcher == "mp" else "ray worker")
        entry["commands"] = [_shell(env, argv) for argv in steps]
        entry["argv"] = steps
        # in a container the head's Ray runs in the background and vllm serve in the foreground
        if len(steps) == 2:
            container = ["bash", "-c", f"{shlex.join(steps[0])} && exec {shlex.join(steps[1])}"]
        elif steps[0][0] == "ray":
            container = [*steps[0], "--block"]
        else:
            container = steps[0]
        entry["docker"] = shlex.join(_docker(topology, vendor, node.ssh.user, env, container))
        out.append(entry)
    return {"topology": topology.name, "launcher": launcher, "vllm": flag_table().vllm_version, "nodes": out}


def render_text(rendered: dict) -> str:
    lines = [f"# {rendered['topology']}: vLLM {rendered['vllm']}, launcher {rendered['launcher']}, "
             f"{len(rendered['nodes'])} node(s); start them in this order"]
    for node in rendered["nodes"]:
        lines.append(f"\n## node {node['node_rank']} {node['node']} ({node['address']}): {node['role']}")
        if node["role"] == "head" and rendered["launcher"] == "ray" and len(rendered["nodes"]) > 1:
            lines.append("  # vllm serve once every node's ray start has joined")
        lines += [f"  {command}" for command in node["commands"]]
        lines.append("  # docker")
        lines.append(f"  {node['docker']}")
    return "\n".join(lines)
