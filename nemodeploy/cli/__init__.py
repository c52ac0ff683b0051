"""The `nemodeploy` command: one module per command group, each imported only when it runs.

The library never imports this package; it imports the library. See `common` for exit codes.
"""

from __future__ import annotations

import click

from nemodeploy import __version__
from nemodeploy.cli.lazy import LazyGroup

COMMANDS = {
    "plan": ("nemodeploy.cli.plan", "plan", "Compile a topology into a serving plan (layout, memory, estimate, verdict)."),
    "topologies": ("nemodeploy.cli.plan", "topologies", "List the built-in topology profiles with a one-line verdict each."),
    "schema": ("nemodeploy.cli.plan", "schema", "Print the topology JSON Schema (for editor completion)."),
    "render": ("nemodeploy.cli.render", "render", "Write what a launch would run, without running it."),
    "preflight": ("nemodeploy.cli.preflight", "preflight", "Check every node (accelerators, memory, limits, versions, network) before `up`."),
    "up": ("nemodeploy.cli.deploy", "up", "Plan a topology and bring it up: locally, or as a Ray cluster over SSH."),
    "down": ("nemodeploy.cli.deploy", "down", "Stop what `up` started."),
    "status": ("nemodeploy.cli.deploy", "status", "Show what is running: nodes, resources and the engine's health."),
    "serve": ("nemodeploy.cli.serve", "serve", "Serve an HF-format NemotronH directory with the embedded engine."),
    "logs": ("nemodeploy.cli.cluster", "logs", "Fetch a node's logs from a running cluster."),
    "testhosts": ("nemodeploy.cli.cluster", "testhosts", "Test hosts in network namespaces (developers)."),
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nemodeploy")
def main() -> None:
    """Plan, bring up and serve Nemotron 3 on real clusters."""
