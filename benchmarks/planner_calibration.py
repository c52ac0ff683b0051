"""The planner against public measurements: plan / measured for every anchor, and the mean error.

Each entry of benchmarks/calibration/anchors.yaml is one published figure (throughput, weights,
memory, or that a deployment serves at all) with the deployment modelled as a topology. This
compiles each, reads the figure the plan gives for the same thing and prints the ratio. Target:
every throughput and size ratio within 0.75-1.33, geometric-mean error under 20%, every `serves`
row serving.

    python benchmarks/planner_calibration.py [--json] [--write-topologies DIR]

`--write-topologies DIR` also writes each anchor's topology as DIR/<id>.yaml, for `nemodeploy plan`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from nemodeploy.plan.compiler import compile_plan
from nemodeploy.plan.types import Plan
from nemodeploy.topology.schema import Topology

ANCHORS = Path(__file__).with_name("calibration") / "anchors.yaml"
BAND = (0.75, 1.33)
MAX_MEAN_ERROR = 0.20
GiB = 2**30

METRICS = {
    "per_user": lambda p: p.estimate.decode_tokens_per_s_per_sequence,
    "decode_total": lambda p: p.estimate.decode_tokens_per_s_total,
    "generated_total": lambda p: p.estimate.generated_tokens_per_s_total,
    "generated_per_gpu": lambda p: p.estimate.generated_tokens_per_s_total / p.parallel.world_size,
    "weights_per_gpu_gib": lambda p: p.memory.weights / GiB,
    "checkpoint_gb": lambda p: p.model.weight_bytes / 1e9,
    "capacity_gib": lambda p: p.memory.capacity / GiB,
    "serves": lambda p: p.verdict != "infeasible",
}


def topology(anchor: dict) -> Topology:
    """The anchor's deployment as a topology: `hardware` expands to one node entry per node."""
    hw = anchor["hardware"]
    accelerators = {"kind": hw["kind"], "count": hw["per_node"]}
    nodes = [{"name": f"n{i}", "address": f"192.0.2.{i + 1}", "accelerators": accelerators} for i in range(hw["nodes"])]
    fields = {k: anchor[k] for k in ("model", "engine", "serving") if k in anchor}
    return Topology.model_validate({"name": anchor["id"], "nodes": nodes,
                                    "interconnect": {"inter_node": hw.get("inter_node")}, **fields})


@dataclass(frozen=True)
class Row:
    id: str
    metric: str
    measured: float | bool
    planned: float | bool | None
    source: str
    plan: Plan

    @property
    def ratio(self) -> float | None:
        if self.metric == "serves" or not self.planned:
            return None
        return self.planned / self.measured

    @property
    def ok(self) -> bool:
        if self.metric == "serves":
            return self.planned is True
        return self.ratio is not None and BAND[0] <= self.ratio <= BAND[1]


def load_anchors(path: Path = ANCHORS) -> list[dict]:
    return yaml.safe_load(path.read_text())


def evaluate(anchors: list[dict]) -> list[Row]:
    rows = []
    for anchor in anchors:
        plan = compile_plan(topology(anchor), with_alternatives=False)
        try:
            planned = METRICS[anchor["metric"]](plan)
        except AttributeError:  # the plan has no estimate or memory: it does not serve
            planned = None
        rows.append(Row(anchor["id"], anchor["metric"], anchor["measured"], planned, anchor["source"], plan))
    return rows


def mean_error(rows: list[Row]) -> float:
    """Geometric-mean error: exp(mean |ln(plan / measured)|) - 1 over the rows with a ratio."""
    logs = [abs(math.log(r.ratio)) for r in rows if r.ratio]
    return math.exp(sum(logs) / len(logs)) - 1 if logs else 0.0


def band(rows: list[Row]) -> tuple[float, float]:
    """measured / plan over the throughput rows: the error bar a plan's estimate carries."""
    inverse = [1 / r.ratio for r in rows if r.ratio and r.metric not in ("weights_per_gpu_gib", "checkpoint_gb",
                                                                         "capacity_gib")]
    return (min(inverse), max(inverse)) if inverse else (1.0, 1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--write-topologies", type=Path, metavar="DIR")
    args = parser.parse_args()
    anchors = load_anchors()
    if args.write_topologies:
        args.write_topologies.mkdir(parents=True, exist_ok=True)
        for anchor in anchors:
            data = topology(anchor).model_dump(mode="json", exclude_defaults=True)
            (args.write_topologies / f"{anchor['id']}.yaml").write_text(
                f"# {anchor['case']}\n# measured {anchor['measured']} ({anchor['metric']}): {anchor['source']}\n"
                + yaml.safe_dump(data, sort_keys=False))
    rows = evaluate(anchors)
    error, (low, high) = mean_error(rows), band(rows)
    if args.json:
        print(json.dumps({"rows": [{"id": r.id, "metric": r.metric, "measured": r.measured, "plan": r.planned,
                                    "ratio": r.ratio, "ok": r.ok, "source": r.source} for r in rows],
                          "mean_error": error, "measured_over_plan": [low, high]}, indent=2))
    else:
        print(f"{'anchor':32} {'metric':20} {'plan':>9} {'measured':>9} {'plan/meas':>9}")
        for r in rows:
            shown = (f"{r.planned:9.2f}" if isinstance(r.planned, float) else f"{str(r.planned):>9}")
            ratio = f"{r.ratio:9.2f}" if r.ratio else f"{'':9}"
            print(f"{r.id:32} {r.metric:20} {shown} {str(r.measured):>9} {ratio} {'' if r.ok else '  <- outside'}")
        print(f"\ngeometric-mean error {error:.1%} over {sum(1 for r in rows if r.ratio)} ratios; "
              f"measured / plan {low:.2f}-{high:.2f} on throughput; "
              f"{sum(not r.ok for r in rows)} row(s) outside {BAND[0]}-{BAND[1]} or not serving")
    return 0 if all(r.ok for r in rows) and error < MAX_MEAN_ERROR else 1


if __name__ == "__main__":
    sys.exit(main())
