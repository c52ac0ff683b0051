"""`nemodeploy render vllm <topology>`: each node's vLLM launch, native and `docker run` (base dependencies only)."""

from __future__ import annotations

import json

import click

from nemodeploy.cli.common import EXIT_BAD_INPUT, EXIT_INFEASIBLE, compile_or_exit, fail


@click.command("vllm")
@click.argument("topology")
@click.option("--launcher", type=click.Choice(["ray", "mp"]), default=None,
              help="Override engine.launcher: across nodes on Ray (ray) or one vllm serve per node (mp).")
@click.option("--json", "as_json", is_flag=True, help="One object per node: env, argv, commands, docker.")
def vllm(topology: str, launcher: str | None, as_json: bool) -> None:
    """Print what would run on each node of TOPOLOGY to serve it with vLLM 0.33, head first."""
    from nemodeploy.backends.vllm import VllmError
    from nemodeploy.backends.vllm_render import render, render_text

    loaded, plan = compile_or_exit(topology)
    if loaded.engine.kind != "vllm":
        fail(f"{loaded.name}: engine.kind is {loaded.engine.kind}; set engine.kind: vllm to launch it with vLLM",
             EXIT_BAD_INPUT)
    if not plan.fits:
        fail(f"{loaded.name}: nothing to launch: {plan.reason}", EXIT_INFEASIBLE)
    try:
        rendered = render(loaded, plan, launcher)
    except VllmError as err:
        fail(f"{loaded.name}: refused: {err}", EXIT_BAD_INPUT)
    click.echo(json.dumps(rendered, indent=2) if as_json else render_text(rendered))
