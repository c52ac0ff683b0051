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
@click.option("--skip-preflight", is_flag=True,
              help="Cluster: start without measuring the network first (Ray and the engine then use the topology's addresses and NICs).")
def up(topology: str, detach: bool, host: str, port: int | None, api_key: str | None, accept_new_host_keys: bool,
       known_hosts: str | None, skip_preflight: bool) -> None:
    """Plan TOPOLOGY and bring it up: locally, or as a Ray cluster over SSH.

    On a cluster, the network part of `nemodeploy preflight` runs first: a failed check stops `up`
    before anything starts, and Ray and the engine run on each node's measured route to the head.
    """
    loaded, compiled = compile_or_exit(topology)
    if not compiled.fits:
        fail(f"nemodeploy: {loaded.name}: {compiled.reason}; run `nemodeploy plan {topology}` for the nearest plans that fit",
             EXIT_INFEASIBLE)
    if is_local(loaded) and compiled.engine != "vllm":  # vLLM always runs on a Ray cluster, even of one node
        from nemodeploy.backends.embedded import up_local
        from nemodeploy.backends.engine_config import LaunchError, model_dir
        from nemodeploy.cli.serve import serve_or_exit

        def start() -> None:
            try:
                up_local(loaded, compiled, host=host, port=port or loaded.engine.port, api_key=api_key, detach=detach)
            except LaunchError as err:
                fail(f"nemodeploy: {loaded.name}: {err}", EXIT_BAD_INPUT)

        try:
            directory = model_dir(loaded)
        except LaunchError as err:
            fail(f"nemodeploy: {loaded.name}: {err}", EXIT_BAD_INPUT)
        serve_or_exit(directory, start)  # a checkpoint at fault: one line naming the file or module
        return
    from nemodeploy.cli.cluster import up_cluster_command

    measured = None
    # One node on loopback has no network to measure; nodes with count > 1 are refused by the bring-up itself.
    if not skip_preflight and not is_local(loaded) and all(node.count == 1 for node in loaded.nodes):
        from nemodeploy.cli.preflight import network_before_up

        measured = network_before_up(loaded, known_hosts, accept_new_host_keys)
    up_cluster_command(loaded, compiled, accept_new_host_keys=accept_new_host_keys, known_hosts=known_hosts,
                       port=port, api_key=api_key, measured=measured)


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
