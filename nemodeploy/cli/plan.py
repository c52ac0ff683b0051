"""`plan`, `topologies`, `schema`: the compiler's commands (base dependencies only)."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console

from nemodeploy.cli.common import EXIT_BAD_INPUT, EXIT_INFEASIBLE, compile_or_exit, fail


@click.command()
@click.argument("topology")
@click.option("--json", "as_json", is_flag=True, help="Print the whole plan as JSON (docs/plan-json.md).")
@click.option("--cost", "with_cost", is_flag=True,
              help="Add $/Mtok, break-even against API prices and the rank among the profiles (data/prices.yaml).")
@click.option("--utilization", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="With --cost: share of the hour the deployment serves at the planned load.")
def plan(topology: str, as_json: bool, with_cost: bool, utilization: float) -> None:
    """Compile TOPOLOGY (a profile name or a YAML file) into a serving plan."""
    from nemodeploy.plan.render import render

    loaded, compiled = compile_or_exit(topology)
    if with_cost:
        compiled = compiled.model_copy(update={"cost": _cost(loaded, compiled, utilization)})
    if as_json:
        click.echo(json.dumps(compiled.model_dump(mode="json"), indent=2))
    else:
        render(compiled, Console())
    if not compiled.fits:
        sys.exit(EXIT_INFEASIBLE)


def _cost(loaded, compiled, utilization: float):
    """The plan's cost, ranked among the built-in profiles; one line and exit 2 when it cannot be priced."""
    from nemodeploy.plan.compiler import compile_plan
    from nemodeploy.plan.cost import NoPrice, cost
    from nemodeploy.topology.loader import PROFILE_DIR, load, profile_names

    others = {}
    for name in profile_names():
        if name != compiled.topology:
            profile = load(str(PROFILE_DIR / f"{name}.yaml"))
            others[name] = (compile_plan(profile, with_alternatives=False), profile.serving.input_tokens,
                            profile.serving.output_tokens)
    try:
        return cost(compiled, input_tokens=loaded.serving.input_tokens, output_tokens=loaded.serving.output_tokens,
                    utilization=utilization, alternatives=others)
    except NoPrice as err:
        fail(f"{compiled.topology}: --cost: {err}", EXIT_BAD_INPUT)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One object per profile.")
def topologies(as_json: bool) -> None:
    """List the built-in topology profiles with a one-line verdict each."""
    from rich.table import Table

    from nemodeploy.plan.compiler import compile_plan
    from nemodeploy.plan.render import VERDICT_STYLE
    from nemodeploy.topology.loader import PROFILE_DIR, load, profile_names

    rows = []
    for name in profile_names():
        topology = load(str(PROFILE_DIR / f"{name}.yaml"))
        compiled = compile_plan(topology, with_alternatives=False)
        rows.append({"name": name, "description": topology.description, "verdict": compiled.verdict,
                     "reason": compiled.reason})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(show_header=True, header_style="bold")
    for column in ("profile", "verdict", "why"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], f"[{VERDICT_STYLE[row['verdict']]}]{row['verdict']}", row["reason"])
    Console().print(table)


@click.command()
def schema() -> None:
    """Print the topology JSON Schema (for editor completion of topology YAML)."""
    from nemodeploy.topology.schema import Topology

    click.echo(json.dumps(Topology.model_json_schema(), indent=2))
