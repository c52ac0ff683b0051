"""The plan as a `vllm serve` launch (vLLM 0.33): each node's argv and environment.

`serve_args` turns the topology and its plan into the head's options: the plan's layout
(tensor / pipeline / data / expert parallel), its cache sizing (max-model-len, max-num-seqs,
max-num-batched-tokens, the memory share), the KV and Mamba-state dtypes, the MoE and Mamba
kernels for the GPU and precision, MTP, the Nemotron 3 parsers, prefix caching where it is
safe; then engine.extra_args on top. The validator (vllm_rules) judges the result before
anything starts. Across nodes:

- launcher `ray` (default): the nodes form a Ray cluster first; only the head runs
  `vllm serve`, with `--distributed-executor-backend ray` (and `--data-parallel-backend ray`
  for replicas); the other nodes run nothing but Ray.
- launcher `mp`: every node runs `vllm serve`, ranks > 0 with `--headless`: whole replicas per
  node as `--data-parallel-size-local` with `--data-parallel-start-rank`, or one replica
  spanning nodes as `--nnodes` / `--node-rank` / `--master-addr`.
"""

from __future__ import annotations

import json

from nemodeploy.backends import vllm_kernels as kernels
from nemodeploy.backends.vllm_rules import Args, Facts, VllmError, validate
from nemodeploy.backends.vllm_table import flag_table
from nemodeploy.models.specs import resolve_model
from nemodeploy.plan.types import Plan
from nemodeploy.topology.catalog import ACCELERATORS
from nemodeploy.topology.netenv import node_env
from nemodeploy.topology.schema import Node, Topology

__all__ = ["VllmError", "launch_nodes", "serve_args", "serve_argv", "serve_env"]

REASONING_PARSER = "nemotron_v3"  # built into vLLM 0.33 for Nemotron 3
TOOL_CALL_PARSER = "qwen3_coder"  # the XML tool-call format Nemotron 3's chat template emits
DP_RPC_PORT = 13345  # head's data-parallel RPC port (mp launcher)
MASTER_PORT = 29501  # head's torch.distributed port for one replica across nodes (mp launcher)
_KV_DTYPE = {"bf16": "auto", "fp32": "auto", "fp8": "fp8"}  # auto: the model's own dtype


def _plan_parts(topology: Topology, plan: Plan):
    if plan.parallel is None or plan.cache is None or plan.memory is None or not plan.fits:
        raise VllmError(f"{topology.name}: no plan to launch: {plan.reason}")
    return plan.parallel, plan.cache, plan.memory


def launch_nodes(topology: Topology, plan: Plan) -> list[Node]:
    """The nodes the plan places ranks on, in rank order; node rank 0 is the head.

    A topology node with `count` > 1 stands for nodes `name-0`, `name-1`, ... (as the plan names them).
    """
    by_name: dict[str, Node] = {}
    for node in topology.nodes:
        if node.count == 1:
            by_name[node.name] = node
        else:
            by_name.update({f"{node.name}-{i}": node.model_copy(update={"name": f"{node.name}-{i}", "count": 1})
                            for i in range(node.count)})
    names = list(dict.fromkeys(rank.node for rank in sorted(plan.ranks, key=lambda r: r.rank)))
    return [by_name[name] for name in names]


def _native_context(topology: Topology) -> int:
    return resolve_model(topology.model.id, topology.model.path).config.max_position_embeddings


def _model_arg(topology: Topology) -> str:
    return topology.model.path or topology.model.id or ""


def _option(key: str) -> str:
    return key if key.startswith("-") else "--" + key.replace("_", "-")


def _merge_extra(args: Args, extra: dict) -> None:
    """engine.extra_args over the generated options: `{flag: value}`; true adds a switch, false turns one off
    (its --disable- / --no- form), null removes a generated option."""
    table = flag_table()
    for key, value in extra.items():
        option = _option(key)
        flag = table.lookup(option)
        if flag is not None and "." not in option:  # `--speculative-config.method` adds to the JSON option
            for other in [o for o in args if table.lookup(o) == flag]:
                del args[other]
        if value is None:
            continue
        if flag is not None and flag.takes_value and "." not in option:
            option = flag.name  # `-pp 2` or `--pipeline_parallel_size` as the rules read it
        if value is False:
            off = [o for o in (flag.options if flag else ()) if o.startswith(("--no-", "--disable-"))]
            if off:
                args[off[0]] = None
        elif value is True:
            args[option] = None
        else:
            args[option] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _replicas_per_node(topology: Topology, plan: Plan) -> int:
    """Whole replicas (tp x pp GPUs) each node holds; 0 when one replica spans nodes."""
    per_node = launch_nodes(topology, plan)[0].accelerators.count
    replica = plan.parallel.tp_size * plan.parallel.pp_size
    return per_node // replica if replica <= per_node and per_node % replica == 0 else 0


def _spans_nodes_on_ray(topology: Topology, plan: Plan, launcher: str) -> bool:
    """Ray places replicas that span nodes only with VLLM_RAY_DP_PACK_STRATEGY=span."""
    return (launcher == "ray" and plan.parallel.dp_size > 1 and len(launch_nodes(topology, plan)) > 1
            and not _replicas_per_node(topology, plan))


def _parallel_args(topology: Topology, plan: Plan, launcher: str) -> Args:
    parallel = plan.parallel
    args: Args = {"--tensor-parallel-size": str(parallel.tp_size)}
    if parallel.pp_size > 1:
        args["--pipeline-parallel-size"] = str(parallel.pp_size)
    if parallel.dp_size > 1:
        args["--data-parallel-size"] = str(parallel.dp_size)
    if parallel.ep_size > 1:
        args["--enable-expert-parallel"] = None
    if len(launch_nodes(topology, plan)) == 1 or launcher != "ray":
        return args
    local = _replicas_per_node(topology, plan)
    if not local:  # a replica spans nodes: its ranks are Ray actors
        args["--distributed-executor-backend"] = "ray"
    if parallel.dp_size > 1:
        # Ray places the replicas; vLLM puts --data-parallel-size-local of them on the head (default: all)
        args.update({"--data-parallel-backend": "ray", "--data-parallel-size-local": str(local or 1)})
    return args


def serve_args(topology: Topology, plan: Plan, *, launcher: str | None = None) -> Args:
    """The head's options after `vllm serve MODEL`, extra_args merged, not yet validated."""
    _, cache, memory = _plan_parts(topology, plan)
    launcher = launcher or topology.engine.launcher
    arch = ACCELERATORS[plan.accelerator].arch
    args: Args = {
        "--served-model-name": topology.model.id or plan.model.name,
        "--host": "0.0.0.0",
        "--port": str(topology.engine.port),
        **_parallel_args(topology, plan, launcher),
        "--max-model-len": str(cache.max_model_len),
        "--max-num-seqs": str(cache.max_num_seqs),
        "--max-num-batched-tokens": str(cache.max_num_batched_tokens),
        "--gpu-memory-utilization": f"{memory.utilization:.2f}",  # the share the plan budgeted
        "--kv-cache-dtype": _KV_DTYPE.get(plan.precision.kv_cache_dtype, "auto"),
    }
    if plan.model.mamba_state_bytes_per_sequence:
        ssm = plan.precision.mamba_ssm_dtype
        args["--mamba-ssm-cache-dtype"] = ssm if flag_table().accepts("mamba_cache_dtype", ssm) else "auto"
        args["--mamba-backend"] = kernels.default_mamba_backend(arch)
    if plan.model.routed_expert_bytes:
        args["--moe-backend"] = kernels.default_moe_backend(arch, plan.precision.weights)
    if cache.speculative_tokens:
        args["--speculative-config"] = json.dumps({"method": "mtp", "num_speculative_tokens": cache.speculative_tokens})
    # the plan's serving.prefix_caching: by default on where it is safe (not MTP on a hybrid model, vllm 39809);
    # asked for there anyway, the rules refuse the launch
    args["--enable-prefix-caching" if cache.prefix_caching else "--disable-prefix-caching"] = None
    args.update({"--reasoning-parser": REASONING_PARSER, "--enable-auto-tool-choice": None,
                 "--tool-call-parser": TOOL_CALL_PARSER})
    _merge_extra(args, topology.engine.extra_args)
    return args


def _node_args(topology: Topology, plan: Plan, node_rank: int, head_address: str | None) -> Args:
    """What node `node_rank` adds to the head's options under the mp launcher."""
    parallel = plan.parallel
    nodes = launch_nodes(topology, plan)
    if len(nodes) == 1:
        return {}
    head = head_address or nodes[0].address
    local = _replicas_per_node(topology, plan)
    if local:
        args: Args = {"--data-parallel-size-local": str(local), "--data-parallel-address": head,
                      "--data-parallel-rpc-port": str(DP_RPC_PORT)}
        if node_rank:
            args.update({"--data-parallel-start-rank": str(node_rank * local), "--headless": None})
        return args
    if parallel.dp_size > 1:
        raise VllmError(f"{topology.name}: the mp launcher runs whole replicas per node or one replica across "
                        f"nodes, not {parallel.dp_size} replicas of {parallel.tp_size * parallel.pp_size} GPUs over "
                        f"{nodes[0].accelerators.count}-GPU nodes; what works: engine.launcher: ray")
    args = {"--nnodes": str(len(nodes)), "--node-rank": str(node_rank), "--master-addr": head,
            "--master-port": str(MASTER_PORT)}
    if node_rank:
        args["--headless"] = None
    return args


def _facts(topology: Topology, plan: Plan, env: dict[str, str]) -> Facts:
    return Facts(
        arch=ACCELERATORS[plan.accelerator].arch,
        precision=plan.precision.weights,
        hybrid=plan.model.mamba_state_bytes_per_sequence > 0,
        native_context=_native_context(topology),
        mamba_slots=plan.cache.num_mamba_slots,
        nnodes=len(launch_nodes(topology, plan)),
        replicas_per_node=_replicas_per_node(topology, plan),
        env=env,
    )


def _flatten(args: Args) -> list[str]:
    return [part for option, value in args.items() for part in ((option,) if value is None else (option, value))]


def serve_argv(topology: Topology, plan: Plan, *, node_rank: int = 0, head_address: str | None = None,
               launcher: str | None = None) -> list[str]:
    """`vllm serve ...` for node `node_rank` (0: the head), validated; VllmError when refused.

    With the ray launcher only the head runs vllm serve. With mp, `head_address` is what ranks
    reach the head on (any string, e.g. "$(LWS_LEADER_ADDRESS)"); the head node's address by default.
    """
    launcher = launcher or topology.engine.launcher
    args = serve_args(topology, plan, launcher=launcher)
    nodes = launch_nodes(topology, plan)
    if not 0 <= node_rank < len(nodes):
        raise VllmError(f"{topology.name}: node rank {node_rank} is not one of the plan's {len(nodes)} nodes")
    if launcher == "ray" and node_rank:
        raise VllmError(f"{topology.name}: with the ray launcher only the head runs vllm serve; "
                        f"node rank {node_rank} ({nodes[node_rank].name}) only joins the Ray cluster")
    if launcher == "mp":
        args.update(_node_args(topology, plan, node_rank, head_address))
    tail = _flatten(args)
    validate(args, tail, _facts(topology, plan, serve_env(topology, plan, node_rank=0, launcher=launcher)))
    return ["vllm", "serve", _model_arg(topology), *tail]


def serve_env(topology: Topology, plan: Plan, *, node_rank: int = 0, launcher: str | None = None) -> dict[str, str]:
    """Environment of node `node_rank`'s vLLM processes: its network (netenv) plus vLLM's own switches."""
    _, cache, _ = _plan_parts(topology, plan)
    launcher = launcher or topology.engine.launcher
    nodes = launch_nodes(topology, plan)
    if not 0 <= node_rank < len(nodes):
        raise VllmError(f"{topology.name}: node rank {node_rank} is not one of the plan's {len(nodes)} nodes")
    env = node_env(nodes[node_rank])
    if topology.serving.allow_long_context and cache.max_model_len > _native_context(topology):
        env["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
    if node_rank == 0 and _spans_nodes_on_ray(topology, plan, launcher):
        env["VLLM_RAY_DP_PACK_STRATEGY"] = "span"
    return env
