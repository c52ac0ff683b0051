"""`plan`, `topologies`, `schema`: the compiler's commands (base dependencies only)."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console

from nemodeploy.cli.common import EXIT_INFEASIBLE, compile_or_exit


@click.command()
@click.argument("topology")
@click.option("--json", "as_json", is_flag=True, help="Print the whole plan as JSON (docs/plan-json.md).")
def plan(topology: str, as_json: bool) -> None:
    """Compile TOPOLOGY (a profile name or a YAML file) into a serving plan."""
    from nemodeploy.plan.render import render

    _, compiled = compile_or_exit(topology)
    if as_json:
        click.echo(json.dumps(compiled.model_dump(mode="json"), indent=2))
    else:
        render(compiled, Console())
    if not compiled.fits:
        sys.exit(EXIT_INFEASIBLE)


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
