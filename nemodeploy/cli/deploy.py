"""`up`, `down`, `status`: a local deployment on this machine, or a Ray cluster over SSH."""

from __future__ import annotations

import click

from nemodeploy.cli.common import EXIT_BAD_INPUT, EXIT_INFEASIBLE, compile_or_exit, fail, is_local, load_topology


@click.command()
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
    if is_local(loaded) and compiled.engine != "vllm":  # vLLM always runs on a Ray cluster, even of one node
        from nemodeploy.backends.embedded import LocalError, up_local
        from nemodeploy.backends.engine_config import LaunchError

        try:
            up_local(loaded, compiled, host=host, port=port or loaded.engine.port, api_key=api_key, detach=detach)
        except LaunchError as err:
            fail(f"nemodeploy: {loaded.name}: {err}", EXIT_BAD_INPUT)
        except LocalError as err:
            fail(f"nemodeploy: {err}", err.exit_code)
        return
    from nemodeploy.cli.cluster import up_cluster_command

    up_cluster_command(loaded, compiled, accept_new_host_keys=accept_new_host_keys, known_hosts=known_hosts,
                       port=port, api_key=api_key)


@click.command()
@click.argument("topology", required=False)
def down(topology: str | None) -> None:
    """Stop what `up` started (the local deployment when no TOPOLOGY is given)."""
    if topology is None or topology == "local":
        from nemodeploy.backends.embedded import down_local

        down_local()
        return
    from nemodeploy.cli.cluster import down_cluster_command

    down_cluster_command(load_topology(topology))


@click.command()
@click.argument("topology", required=False)
@click.option("--json", "as_json", is_flag=True)
def status(topology: str | None, as_json: bool) -> None:
    """Show what is running: nodes, resources and the engine's health."""
    if topology is None or topology == "local":
        from nemodeploy.backends.embedded import local_status_command

        local_status_command(as_json)
        return
    from nemodeploy.cli.cluster import status_cluster_command

    status_cluster_command(load_topology(topology), as_json)
