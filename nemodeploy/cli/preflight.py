"""`nemodeploy preflight <topology>`: prove every node ready, or say exactly what to fix.

Runs with the base dependencies only (no torch, no ray); paramiko only for remote nodes.
Exit 0 when no error-severity check failed (warnings shown; --strict counts them too), 1 otherwise,
2 for a topology that cannot be read.
"""

from __future__ import annotations

import json

import click

from nemodeploy.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, fail, is_local, load_topology

STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def _plan_or_none(topology, err_console):
    """The plan when the topology compiles; preflight still checks the nodes when it does not."""
    from nemodeploy.plan.compiler import PlanInputError, compile_plan

    try:
        return compile_plan(topology)
    except PlanInputError as err:
        if err_console:
            err_console.print(f"[yellow]no plan ({err}); checks against the plan are skipped[/]")
        return None


def _render(report, console) -> None:
    from rich.table import Table

    for node in report.nodes:
        table = Table(title=f"[bold]{node}[/]", title_justify="left", expand=True)
        for column, style in (("check", "bold"), ("status", None), ("measured", None), ("expected", "dim"), ("remedy", "cyan")):
            table.add_column(column, style=style, overflow="fold")
        for r in (r for r in report.results if r.node == node):
            table.add_row(r.name, f"[{STYLE[r.status]}]{r.status}[/]", r.measured, r.expected, r.remedy)
        console.print(table)
        if report.env.get(node):
            console.print("  env for up: " + " ".join(f"{k}={v}" for k, v in report.env[node].items()))
    counts = {s: sum(r.status == s for r in report.results) for s in STYLE}
    console.print(", ".join(f"[{STYLE[s]}]{n} {s}[/]" for s, n in counts.items()) + f" in {report.seconds:.1f} s")


@click.command("preflight")
@click.argument("topology")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: checks (node, name, status, measured, expected, severity, remedy) and env.")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too.")
@click.option("--python", default="auto", show_default=True, help="Interpreter on the nodes; auto: the one of the node's `ray`, else python3.")
@click.option("--accept-new-host-keys", is_flag=True, help="Trust and remember unknown SSH host keys.")
@click.option("--node", "only", help="Check only this node of the topology, from the node itself (what ansible/preflight.yml runs).")
@click.option("--bandwidth-seconds", type=click.FloatRange(0.05, 10), default=0.5, show_default=True,
              help="How long each node's TCP bandwidth sample runs.")
def preflight(topology: str, as_json: bool, strict: bool, python: str, accept_new_host_keys: bool, only: str | None,
              bandwidth_seconds: float) -> None:
    """Check every node of a topology (accelerators, memory, limits, versions, network) in parallel."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from nemodeploy.preflight.result import exit_code
    from nemodeploy.preflight.runner import Options, run_preflight

    topo = load_topology(topology)
    if any(node.count != 1 for node in topo.nodes):
        fail(f"{topology}: nodes with count > 1 are for planning; list each node to check with its address", EXIT_BAD_INPUT)
    err_console = None if as_json else Console(stderr=True)
    plan = _plan_or_none(topo, err_console)
    local = is_local(topo)
    if only is not None:
        chosen = [node for node in topo.nodes if node.name == only]
        if not chosen:
            fail(f"{topology}: no node named {only!r}; nodes: {', '.join(n.name for n in topo.nodes)}", EXIT_BAD_INPUT)
        topo, local = topo.model_copy(update={"nodes": chosen}), True  # the plan stays the whole topology's
    options = Options(python=python, accept_new_host_keys=accept_new_host_keys, bandwidth_seconds=bandwidth_seconds)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=Console(stderr=True), transient=True,
                  disable=as_json) as progress:
        tasks = {node.name: progress.add_task(f"{node.name}: waiting") for node in topo.nodes}
        report = run_preflight(topo, plan, options, local=local,
                               progress=lambda node, what: progress.update(tasks[node], description=f"{node}: {what}"))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _render(report, Console())
    raise SystemExit(exit_code(report.results, strict))


def network_before_up(topology, known_hosts: str | None, accept_new_host_keys: bool):
    """`up`'s first step: the topology as its network was measured, or exit 1 with the first blocking check.

    One line per warning; a blocking result is one line naming the node, the check, what was
    measured and the remedy. Progress per node on stderr while it runs. Host keys are checked
    against `known_hosts`, else the file an earlier `up` of this cluster used, as the bring-up does.
    """
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from nemodeploy.cluster import state as cluster_state
    from nemodeploy.cluster.errors import ClusterError
    from nemodeploy.preflight.gate import network_gate
    from nemodeploy.preflight.runner import Options

    if known_hosts is None:
        try:
            recorded = cluster_state.load(topology.name)
        except ClusterError:
            recorded = None  # an unreadable state file: the bring-up reports it
        known_hosts = recorded.known_hosts if recorded else None
    console = Console(stderr=True)
    options = Options(known_hosts=known_hosts, accept_new_host_keys=accept_new_host_keys)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True) as progress:
        tasks = {node.name: progress.add_task(f"preflight {node.name}: waiting") for node in topology.nodes}
        gate = network_gate(topology, options,
                            progress=lambda node, what: progress.update(tasks[node], description=f"preflight {node}: {what}"))
    for r in gate.warnings:
        console.print(f"[yellow]preflight: {r.node}: {r.name}: {r.measured}[/]", highlight=False)
    if gate.blocking:
        r, more = gate.blocking[0], len(gate.blocking) - 1
        others = f" ({more} more: `nemodeploy preflight {topology.name}` lists all)" if more else ""
        fail(f"nemodeploy: preflight: {r.node}: {r.name}: {r.measured}; fix: {r.remedy}{others}; "
             "or `up --skip-preflight` to start without it", EXIT_FAILED)
    console.print(f"preflight: the network of {len(topology.nodes)} nodes checked in {gate.seconds:.1f} s", highlight=False)
    return gate.measured
