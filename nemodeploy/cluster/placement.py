"""A placement group that puts rank i of a plan on the node the plan chose for it.

Each bundle asks for a sliver of the `node:<ip>` resource that only that node has,
so Ray cannot move a rank elsewhere; the strategy only decides what happens to
bundles on one node (PACK) or forbids two on one node (STRICT_SPREAD). Call it in
a driver connected to the cluster (`ray.init(address=..., _node_ip_address=...)`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nemodeploy.cluster.errors import ClusterError

# Any amount > 0 pins; node:<ip> has capacity 1, so a small one lets many ranks share a node.
_PIN = 0.001


def rank_bundles(rank_addresses: Sequence[str], per_rank: Mapping[str, float]) -> list[dict[str, float]]:
    return [{**per_rank, f"node:{address}": _PIN} for address in rank_addresses]


def rank_placement_group(
    rank_addresses: Sequence[str],
    per_rank: Mapping[str, float] | None = None,
    strategy: str | None = None,
    timeout_s: float = 60.0,
):
    """A ready placement group with bundle i on rank_addresses[i].

    `per_rank` is what each rank needs (default one CPU; {"GPU": 1} for a GPU rank). The
    strategy defaults to STRICT_SPREAD when every rank has its own node, PACK otherwise.
    """
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    if not rank_addresses:
        raise ClusterError("a placement group needs at least one rank")
    strategy = strategy or ("STRICT_SPREAD" if len(set(rank_addresses)) == len(rank_addresses) else "PACK")
    known = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    missing = sorted(set(rank_addresses) - known)
    if missing:
        raise ClusterError(f"ranks are planned on {', '.join(missing)}, which no alive Ray node has; check `nemodeploy status`")
    group = placement_group(rank_bundles(rank_addresses, per_rank or {"CPU": 1}), strategy=strategy)
    try:
        ray.get(group.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        raise ClusterError(
            f"the cluster cannot hold {len(rank_addresses)} ranks of {dict(per_rank or {'CPU': 1})} "
            f"({strategy}) within {timeout_s:.0f} s; check each node's free resources with `nemodeploy status`"
        ) from None
    return group


def rank_strategy(group, rank: int):
    """The scheduling strategy that runs a task or actor in rank's bundle: `.options(scheduling_strategy=...)`."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=rank)
