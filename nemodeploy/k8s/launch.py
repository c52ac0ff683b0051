"""What each pod runs: the launch backends' commands, wrapped in the container's shell script.

vLLM's argv and environment come from nemodeploy/backends/vllm.py (validated there); the
embedded engine's from the plan's cache sizing as `nemodeploy serve` flags. Here they only
get wrapped for the runtime:

- KubeRay: the RayCluster carries `ray.io/overwrite-container-cmd`, so KubeRay leaves the
  container command to us and hands its generated `ray start ... --block` in
  $KUBERAY_GEN_RAY_START_CMD. Workers just run it; the head runs it in the background,
  waits until Ray sees every GPU of the plan (every worker joined), then execs the server.
- LeaderWorkerSet: every pod runs `vllm serve` with the Ray-free multi-node launcher, the
  leader as node rank 0 and each worker as the rank LWS gives it ($LWS_WORKER_INDEX);
  ranks reach the leader at $(LWS_LEADER_ADDRESS), which the kubelet substitutes.
"""

from __future__ import annotations

import shlex

from nemodeploy.backends.engine_config import LaunchError, engine_dtype, kv_cache_dtype
from nemodeploy.backends.vllm import VllmError, launch_nodes, serve_argv, serve_env
from nemodeploy.k8s.pods import RenderError
from nemodeploy.plan.types import Plan
from nemodeploy.topology.netenv import node_env
from nemodeploy.topology.schema import Topology

LWS_LEADER = "$(LWS_LEADER_ADDRESS)"
ULIMIT = "ulimit -n 65536"


def _vllm(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except VllmError as err:
        raise RenderError(str(err)) from None


def server_argv(topology: Topology, plan: Plan, *, node_rank: int = 0, launcher: str,
                model_path: str | None = None) -> list[str]:
    """The serving process of node `node_rank` (vLLM, or the embedded engine on one node).

    `topology` names the model by id; `model_path`, a directory in the pods, replaces it as
    what the engine loads.
    """
    if topology.engine.kind == "vllm":
        head = LWS_LEADER if launcher == "mp" else None
        argv = _vllm(serve_argv, topology, plan, node_rank=node_rank, head_address=head, launcher=launcher)
        return [*argv[:2], model_path, *argv[3:]] if model_path else argv  # vllm serve MODEL ...
    if len(launch_nodes(topology, plan)) > 1:
        raise RenderError(f"{topology.name}: the embedded engine spans nodes only through `nemodeploy up` over SSH; "
                          "on Kubernetes use engine.kind: vllm, or a plan on one node")
    return embedded_argv(topology, plan, model_path)


def node_environment(topology: Topology, plan: Plan, node_rank: int) -> dict[str, str]:
    """Node `node_rank`'s environment, inherited by everything its pod starts (Ray's workers included)."""
    if topology.engine.kind == "vllm":
        return _vllm(serve_env, topology, plan, node_rank=node_rank)
    return node_env(launch_nodes(topology, plan)[node_rank])


def embedded_argv(topology: Topology, plan: Plan, model_path: str | None) -> list[str]:
    """`nemodeploy serve` with the plan's cache sizing (what EngineConfig gets from `up`)."""
    if not model_path:
        raise RenderError(f"{topology.name}: the embedded engine serves a checkpoint directory: "
                          "set model.path (inside modelVolume.mountPath), or use engine.kind: vllm")
    cache = plan.cache
    try:
        dtype = engine_dtype(plan)
        kv = kv_cache_dtype(plan, dtype)
    except LaunchError as err:
        raise RenderError(f"{topology.name}: {err}") from None
    flags = {
        "--model": model_path, "--host": "0.0.0.0", "--port": topology.engine.port, "--dtype": dtype,
        "--device": "cpu" if plan.accelerator == "cpu" else "cuda", "--block-size": cache.block_size,
        "--num-kv-blocks": cache.num_kv_blocks, "--num-mamba-slots": cache.num_mamba_slots,
        "--max-num-seqs": cache.max_num_seqs, "--max-num-batched-tokens": cache.max_num_batched_tokens,
        "--max-model-len": cache.max_model_len, "--speculative-tokens": cache.speculative_tokens,
        "--kv-cache-dtype": kv, "--prefix-caching": cache.prefix_caching,
        "--mamba-checkpoint-interval": cache.mamba_checkpoint_interval,
        "--num-mamba-checkpoints": cache.num_mamba_checkpoints,
        "--served-model-name": topology.model.id,
    }
    return ["nemodeploy", "serve", *(part for flag, value in flags.items() for part in (flag, str(value)))]


def _exec(argv: list[str]) -> str:
    return "exec " + shlex.join(argv)


def ray_head_script(argv: list[str], gpus: int) -> str:
    wait = (f"import ray, sys; ray.init(address='auto', logging_level=40); "
            f"sys.exit(ray.cluster_resources().get('GPU', 0) < {gpus})")
    return "\n".join([
        ULIMIT,
        "${KUBERAY_GEN_RAY_START_CMD} &",
        f"until python3 -c {shlex.quote(wait)}; do echo waiting for {gpus} GPUs in the Ray cluster; sleep 5; done",
        _exec(argv),
    ])


def ray_worker_script() -> str:
    return f"{ULIMIT}\nexec ${{KUBERAY_GEN_RAY_START_CMD}}"


def lws_worker_script(argvs: dict[int, list[str]]) -> str:
    """One template for every worker: the branch for this pod's $LWS_WORKER_INDEX."""
    branches = [f"  {rank}) {_exec(argv)} ;;" for rank, argv in sorted(argvs.items())]
    return "\n".join(['case "$LWS_WORKER_INDEX" in', *branches,
                      '  *) echo "no node rank $LWS_WORKER_INDEX in this plan" >&2; exit 1 ;;', "esac"])


def plain_script(argv: list[str]) -> str:
    return _exec(argv)


def rendezvous_port(argv: list[str]) -> int | None:
    """The leader port that mp-launched ranks connect to first (where it listens before they join)."""
    for option in ("--master-port", "--data-parallel-rpc-port"):
        if option in argv:
            return int(argv[argv.index(option) + 1])
    return None
