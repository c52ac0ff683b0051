"""What `up` asks of preflight before it starts anything: the network as measured, or why not to start.

Only the network part runs (checks.network.FOR_UP: route, MTU, RDMA, ports, latency), from a
probe that measures nothing else and without a bandwidth sample, so it costs about one SSH
command per node. A failed error check, or a node that cannot be measured, blocks `up`;
warnings (a route other than the topology's, a slow link) are shown and `up` goes on, on the
measured network.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from nemodeploy.preflight.result import CheckResult
from nemodeploy.preflight.runner import Options, Progress, run_preflight
from nemodeploy.topology.schema import Topology


@dataclass(frozen=True)
class Gate:
    measured: Topology | None  # every node with the address and NICs its route to the head uses
    blocking: list[CheckResult]  # failed error checks, in node order
    warnings: list[CheckResult]
    seconds: float


def network_gate(topology: Topology, options: Options = Options(), progress: Progress = lambda node, what: None) -> Gate:
    report = run_preflight(topology, None, replace(options, network_only=True, bandwidth_seconds=0), progress=progress)
    return Gate(
        measured=report.measured,
        blocking=[r for r in report.results if r.status == "fail"],
        warnings=[r for r in report.results if r.status == "warn"],
        seconds=report.seconds,
    )
