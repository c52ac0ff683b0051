"""The `nemodeploy` command.

Exit codes: 0 success; 1 the plan does not fit (or a command failed at run
time); 2 bad input (topology file, arguments), always as one located line.
Engine and cluster commands load lazily so that `plan`, `schema` and
`topologies` never import torch or ray.
"""

from __future__ import annotations

import importlib
import json
import sys

import click
from rich.console import Console

from nemodeploy import __version__

EXIT_INFEASIBLE = 1
EXIT_BAD_INPUT = 2

LAZY_COMMANDS = {
    "serve": ("nemodeploy.engine.cli", "serve", "Serve an HF-format NemotronH directory with the embedded engine."),
    "logs": ("nemodeploy.cluster.cli", "logs", "Fetch a node's logs from a running cluster."),
    "testhosts": ("nemodeploy.cluster.cli", "testhosts", "Test hosts in network namespaces (developers)."),
}


class LazyGroup(click.Group):
    """Commands whose modules import torch or ray are loaded only when invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module, attr, _ = LAZY_COMMANDS[name]
            try:
                return getattr(importlib.import_module(module), attr)
            except ImportError as err:
                return _missing_extra(name, err)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.commands[name].get_short_help_str(limit=90)) for name in super().list_commands(ctx)]
        rows += [(name, help_text) for name, (_, _, help_text) in LAZY_COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


def _missing_extra(name: str, err: ImportError) -> click.Command:
    @click.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def unavailable() -> None:
        fail(f"nemodeploy: `nemodeploy {name}` needs the engine/cluster extras ({err.name} is not installed): "
             "pip install 'nemodeploy[engine,cluster]'", EXIT_BAD_INPUT)

    return unavailable


def fail(message: str, code: int) -> None:
    """One line on stderr and the exit code; never a traceback."""
    click.echo(message, err=True)
    sys.exit(code)


def load_topology(name_or_path: str):
    from nemodeploy.topology.loader import TopologyError, load

    try:
        return load(name_or_path)
    except TopologyError as err:
        fail(str(err), EXIT_BAD_INPUT)


def compile_or_exit(name_or_path: str):
    """(topology, plan) or a located one-line error and exit 2."""
    from nemodeploy.plan.compiler import PlanInputError, compile_plan
    from nemodeploy.topology.loader import error_at, resolve

    topology = load_topology(name_or_path)
    try:
        return topology, compile_plan(topology)
    except PlanInputError as err:
        fail(str(error_at(str(resolve(name_or_path)), err.field, str(err))), EXIT_BAD_INPUT)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nemodeploy")
def main() -> None:
    """Plan, bring up and serve Nemotron 3 on real clusters."""


@main.command()
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


@main.command()
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


@main.command()
def schema() -> None:
    """Print the topology JSON Schema (for editor completion of topology YAML)."""
    from nemodeploy.topology.schema import Topology

    click.echo(json.dumps(Topology.model_json_schema(), indent=2))


def _is_local(topology) -> bool:
    return topology.node_count == 1 and topology.nodes[0].address in ("127.0.0.1", "localhost", "::1")


@main.command()
@click.argument("topology")
@click.option("--detach", is_flag=True, help="Run in the background; stop with `nemodeploy down`.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the API binds (local deployments).")
@click.option("--port", type=int, default=None, help="API port (default: the topology's engine.port).")
@click.option("--api-key", default=None, envvar="NEMODEPLOY_API_KEY", help="Require this Bearer token.")
@click.option("--accept-new-host-keys", is_flag=True, help="Trust SSH host keys not yet in known_hosts.")
@click.option("--known-hosts", type=click.Path(dir_okay=False), default=None, envvar="NEMODEPLOY_KNOWN_HOSTS",
              help="known_hosts file for the nodes' SSH host keys (default ~/.ssh/known_hosts).")
def up(topology: str, detach: bool, host: str, port: int | None, api_key: str | None, accept_new_host_keys: bool,
       known_hosts: str | None) -> None:
    """Plan TOPOLOGY and bring it up: locally, or as a Ray cluster over SSH."""
    loaded, compiled = compile_or_exit(topology)
    if not compiled.fits:
        fail(f"nemodeploy: {loaded.name}: {compiled.reason}; run `nemodeploy plan {topology}` for the nearest plans that fit",
             EXIT_INFEASIBLE)
    if compiled.engine == "vllm":
        fail(f"nemodeploy: {loaded.name}: engine.kind vllm: the vLLM launcher is not built yet "
             f"(`nemodeploy plan {topology} --json` gives its sizes); set engine.kind: embedded to serve with "
             "nemodeploy's own engine", EXIT_BAD_INPUT)
    if _is_local(loaded):
        from nemodeploy.backends.embedded import up_local
        from nemodeploy.backends.engine_config import LaunchError

        try:
            up_local(loaded, compiled, host=host, port=port or loaded.engine.port, api_key=api_key, detach=detach)
        except LaunchError as err:
            fail(f"nemodeploy: {loaded.name}: {err}", EXIT_BAD_INPUT)
        return
    from nemodeploy.cluster.cli import up_cluster_command

    up_cluster_command(loaded, compiled, accept_new_host_keys=accept_new_host_keys, known_hosts=known_hosts,
                       port=port, api_key=api_key)


@main.command()
@click.argument("topology", required=False)
def down(topology: str | None) -> None:
    """Stop what `up` started (the local deployment when no TOPOLOGY is given)."""
    if topology is None or topology == "local":
        from nemodeploy.backends.embedded import down_local

        down_local()
        return
    from nemodeploy.cluster.cli import down_cluster_command

    down_cluster_command(load_topology(topology))


@main.command()
@click.argument("topology", required=False)
@click.option("--json", "as_json", is_flag=True)
def status(topology: str | None, as_json: bool) -> None:
    """Show what is running: nodes, resources and the engine's health."""
    if topology is None or topology == "local":
        from nemodeploy.backends.embedded import local_status_command

        local_status_command(as_json)
        return
    from nemodeploy.cluster.cli import status_cluster_command

    status_cluster_command(load_topology(topology), as_json)


if __name__ == "__main__":
    main()
