"""Every check, in the order results are shown: the node's own, then across nodes, then the network.

A check is a plain function: node checks take (context, node) and return one result; fleet and
network checks take the context and return one result per node.
"""

from __future__ import annotations

from nemodeploy.preflight.checks import fleet, network, node
from nemodeploy.preflight.context import Context
from nemodeploy.preflight.result import CheckResult


def run_checks(ctx: Context, network_only: bool = False) -> list[CheckResult]:
    """All checks; with `network_only`, those `up` runs first (network.FOR_UP), from a probe that measured only those."""
    if network_only:
        return [result for check in network.FOR_UP for result in check(ctx)]
    results = [check(ctx, n) for n in ctx.nodes for check in node.CHECKS]
    for check in [*fleet.CHECKS, *network.CHECKS]:
        results += check(ctx)
    return results
