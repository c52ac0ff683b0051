"""How long `nemodeploy plan` takes per profile, against the cost of loading a topology alone.

    python benchmarks/plan_speed.py [--repeat N]

Prints, per profile, the median wall time of compile_plan (layout search, budgets, estimates,
and for infeasible profiles the nearest-plan search) and of YAML loading + validation, which is
the floor any planner pays. Run in one process so imports are not counted.
"""

from __future__ import annotations

import argparse
import statistics
import time

from nemodeploy.models.specs import resolve_model
from nemodeploy.plan.compiler import compile_plan
from nemodeploy.plan.layout import candidates
from nemodeploy.topology.loader import load, profile_names


def median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{'profile':<16} {'verdict':<11} {'layouts':>7} {'load ms':>8} {'plan ms':>8} {'plan/load':>9}")
    for name in profile_names():
        topology = load(name)
        plan = compile_plan(topology)
        load_s = median_seconds(lambda: load(name), args.repeat)
        plan_s = median_seconds(lambda: compile_plan(topology), args.repeat)
        config = resolve_model(topology.model.id, topology.model.path).config
        searched = len(candidates(config, topology.accelerator_count, topology.nodes[0].accelerators.count,
                                  topology.engine.parallel.model_dump(), topology.engine.kind))
        print(f"{name:<16} {plan.verdict:<11} {searched:>7} {load_s * 1e3:>8.2f} {plan_s * 1e3:>8.2f} {plan_s / load_s:>8.1f}x")


if __name__ == "__main__":
    main()
