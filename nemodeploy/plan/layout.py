"""Parallel layouts: which (tp, pp, dp, ep) a model and a cluster admit, and where each rank sits.

Rules, as serving engines apply them:
- tp divides the query heads and the Mamba heads; KV heads and Mamba groups are
  either divided by tp or replicated (tp a multiple of them).
- tp stays inside a node when a node has that many GPUs: tensor-parallel
  all-reduces run once per layer and belong on NVLink, not on the network.
- ep partitions the routed experts over the tp group (ep = tp) or over every
  GPU of the deployment (ep = tp x dp, data-parallel attention with expert
  parallel MoE); it must divide the expert count.
- Ranks are numbered tp fastest, then pp, then dp, and fill nodes in order, so a
  tp group never straddles nodes when it fits in one.
"""

from __future__ import annotations

from dataclasses import dataclass

from nemodeploy.models.config import ATTENTION, MAMBA, MLP, MOE, NemotronHConfig
from nemodeploy.plan.types import Rank, Stage
from nemodeploy.topology.schema import Topology


class LayoutError(ValueError):
    """Parallel sizes the model or the cluster cannot take; the message says which rule."""


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    ep: int

    @property
    def replica_size(self) -> int:
        return self.tp * self.pp


def _divides_or_replicates(count: int, tp: int) -> bool:
    return count % tp == 0 or tp % count == 0


def check(config: NemotronHConfig, layout: Layout, world: int, gpus_per_node: int, partial: bool = False) -> None:
    """Raise LayoutError naming the first rule the layout breaks.

    `partial` lets a layout the user fixed completely use fewer GPUs than the topology has
    (the first ranks in placement order); searched layouts always use every GPU.
    """
    tp, pp, dp, ep = layout.tp, layout.pp, layout.dp, layout.ep
    if min(tp, pp, dp, ep) < 1:
        raise LayoutError("parallel sizes must be at least 1")
    used = tp * pp * dp
    if used > world or (used < world and not partial):
        raise LayoutError(f"tp x pp x dp = {tp}x{pp}x{dp} = {used}, but the topology has {world} GPUs")
    if config.count(ATTENTION) and config.num_attention_heads % tp:
        raise LayoutError(f"tp_size {tp} does not divide the {config.num_attention_heads} attention heads")
    if config.count(ATTENTION) and not _divides_or_replicates(config.num_key_value_heads, tp):
        raise LayoutError(
            f"tp_size {tp} neither divides nor is a multiple of the {config.num_key_value_heads} KV heads"
        )
    if config.count(MAMBA):
        if config.mamba_num_heads % tp:
            raise LayoutError(f"tp_size {tp} does not divide the {config.mamba_num_heads} Mamba heads")
        if not _divides_or_replicates(config.n_groups, tp):
            raise LayoutError(f"tp_size {tp} neither divides nor is a multiple of the {config.n_groups} Mamba groups")
    if pp > config.num_layers:
        raise LayoutError(f"pp_size {pp} exceeds the model's {config.num_layers} layers")
    if config.n_routed_experts:
        if ep not in (1, tp, tp * dp):
            raise LayoutError(f"ep_size {ep} must be 1, tp_size ({tp}) or tp_size x dp_size ({tp * dp})")
        if config.n_routed_experts % ep:
            raise LayoutError(f"ep_size {ep} does not divide the {config.n_routed_experts} routed experts")
        if ep == 1 and config.moe_intermediate_size % tp:
            raise LayoutError(f"tp_size {tp} does not divide the expert width {config.moe_intermediate_size}")
    elif ep != 1:
        raise LayoutError(f"ep_size {ep} given, but the model has no routed experts")
    if tp > gpus_per_node and gpus_per_node > 1 and tp % gpus_per_node:
        raise LayoutError(f"tp_size {tp} spans nodes unevenly ({gpus_per_node} GPUs per node)")


def candidates(config: NemotronHConfig, world: int, gpus_per_node: int, fixed: dict[str, int | None],
               engine: str) -> list[Layout]:
    """Every valid layout using all GPUs that `engine` can run, honouring the sizes the user fixed.

    vLLM runs any (tp, pp, dp) and ep = tp x dp (data-parallel attention with expert-parallel
    MoE). The embedded engine runs any (tp, pp, dp) too, but its dp replicas are independent
    engines: ep is 1 or tp, never across replicas.
    """
    embedded = engine == "embedded"
    out: list[Layout] = []
    sizes = (fixed.get("tp_size"), fixed.get("pp_size"), fixed.get("dp_size"))
    if all(sizes) and sizes[0] * sizes[1] * sizes[2] < world:
        tp, pp, dp = sizes
        layout = Layout(tp, pp, dp, fixed.get("ep_size") or tp)
        if embedded and layout.ep not in (1, tp):
            return []
        try:
            check(config, layout, world, gpus_per_node, partial=True)
        except LayoutError:
            return []
        return [layout]
    divisors = [d for d in range(1, world + 1) if world % d == 0]
    for tp in divisors:
        if fixed.get("tp_size") not in (None, tp):
            continue
        # tp across nodes only where nodes hold a single GPU (DGX Spark) or the user asked
        if tp > gpus_per_node and gpus_per_node > 1 and fixed.get("tp_size") is None:
            continue
        for pp in divisors:
            if (world // tp) % pp or fixed.get("pp_size") not in (None, pp):
                continue
            dp = world // (tp * pp)
            if fixed.get("dp_size") not in (None, dp):
                continue
            ep_options = {1, tp} if embedded else {1, tp, tp * dp}
            if not config.n_routed_experts:
                ep_options = {1}
            for ep in sorted(ep_options):
                if fixed.get("ep_size") not in (None, ep):
                    continue
                layout = Layout(tp, pp, dp, ep)
                try:
                    check(config, layout, world, gpus_per_node)
                except LayoutError:
                    continue
                out.append(layout)
    return out


def split_stages(config: NemotronHConfig, pp: int, with_mtp: bool) -> list[Stage]:
    """Contiguous, even split of the layers (the first stages take the remainder), as vLLM does."""
    n = config.num_layers
    base, extra = divmod(n, pp)
    stages, start = [], 0
    for rank in range(pp):
        end = start + base + (1 if rank < extra else 0)
        kinds = config.layer_types[start:end]
        stages.append(
            Stage(
                pp_rank=rank,
                layers=(start, end),
                mamba_layers=kinds.count(MAMBA),
                attention_layers=kinds.count(ATTENTION),
                moe_layers=kinds.count(MOE),
                mlp_layers=kinds.count(MLP),
                holds_embedding=rank == 0,
                holds_lm_head=rank == pp - 1,
                holds_mtp=with_mtp and rank == pp - 1,
            )
        )
        start = end
    return stages


def place_ranks(topology: Topology, layout: Layout) -> list[Rank]:
    """Assign ranks to (node, device), tp fastest, filling nodes in the order the topology lists them."""
    slots: list[tuple[str, str, int]] = []
    for node in topology.nodes:
        for copy in range(node.count):
            name = node.name if node.count == 1 else f"{node.name}-{copy}"
            slots += [(name, node.address, device) for device in range(node.accelerators.count)]
    ranks = []
    for rank, (node, address, device) in enumerate(slots[: layout.replica_size * layout.dp]):
        tp_rank = rank % layout.tp
        pp_rank = (rank // layout.tp) % layout.pp
        dp_rank = rank // layout.replica_size
        ep_rank = (dp_rank * layout.tp + tp_rank) % layout.ep if layout.ep > 1 else 0
        ranks.append(Rank(rank=rank, node=node, address=address, device=device, tp_rank=tp_rank,
                          pp_rank=pp_rank, dp_rank=dp_rank, ep_rank=ep_rank))
    return ranks
