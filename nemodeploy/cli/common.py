"""What every command shares: exit codes, one-line failures, loading a topology and its plan.

Exit codes: 0 success; 1 the plan does not fit (or a command failed at run time); 2 bad input
(topology file, arguments), always as one located line.
"""

from __future__ import annotations

import sys

import click

EXIT_FAILED = 1
EXIT_INFEASIBLE = 1
EXIT_BAD_INPUT = 2


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


def is_local(topology) -> bool:
    return topology.node_count == 1 and topology.nodes[0].address in ("127.0.0.1", "localhost", "::1")
