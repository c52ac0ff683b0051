"""Cluster commands: the multi-node halves of up / down / status, `logs`, and `testhosts` for developers.

Every ClusterError ends the command with its one-line message and exit code 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nemodeploy.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, fail, load_topology
from nemodeploy.cluster import secrets, state as cluster_state, testhosts as hosts
from nemodeploy.cluster.errors import ClusterError
from nemodeploy.cluster.lifecycle import cluster_status, down_cluster, fetch_logs, up_cluster
from nemodeploy.cluster.ssh import KNOWN_HOSTS_ENV
from nemodeploy.topology.schema import Topology

T = TypeVar("T")


def _or_exit(action: Callable[[], T]) -> T:
    try:
        return action()
    except ClusterError as err:
        click.echo(f"nemodeploy: {err}", err=True)
        raise SystemExit(EXIT_FAILED) from None


def up_cluster_command(
    topology: Topology,
    plan=None,
    accept_new_host_keys: bool = False,
    port: int | None = None,
    api_key: str | None = None,
    known_hosts: str | None = None,
    measured: Topology | None = None,
) -> None:
    """Bring up the Ray cluster, then the embedded engine on it; both steps leave what already runs alone.

    `measured` is the topology as `up`'s preflight measured it: Ray and the engine run on each
    node's measured address and interface (the plan is compiled from it), SSH uses the topology's.

    The engine always requires an API key (it binds the head's network address): the one given,
    else the one kept from an earlier `up`, else a new one, shown once. If the engine fails to
    start on a cluster this call brought up, Ray is stopped again: nothing is left running.
    """
    from nemodeploy.backends.engine_config import LaunchError

    console = Console(stderr=True)
    new_cluster = _or_exit(lambda: cluster_state.load(topology.name)) is None
    state = _or_exit(lambda: up_cluster(topology, accept_new_host_keys, known_hosts, console, measured=measured))
    console.print(f"Ray cluster [bold]{topology.name}[/] up: {len(state.nodes)} nodes, head at {state.gcs_address}")
    if plan is None:
        return
    engine = _or_exit(lambda: cluster_status(topology)).engine
    if engine is not None and engine.healthy:
        stored = secrets.read(topology.name, secrets.API_KEY)
        if api_key and engine.kind in ("embedded", "vllm") and not (stored and secrets.matches(api_key, stored)):
            fail(f"nemodeploy: {topology.name}: the engine already serves with another API key; "
                 f"`nemodeploy down {topology.name}` first to change it", EXIT_BAD_INPUT)
        console.print(f"engine already serving: {engine.health_url}")
        return
    if measured is not None and measured != topology:
        from nemodeploy.plan.compiler import compile_plan

        topology, plan = measured, compile_plan(measured)  # the same plan, its ranks on the measured addresses
    start = _start_embedded
    if plan.engine == "vllm":
        from nemodeploy.cli.cluster_vllm import start_vllm_engine as start
    try:
        health_url, key, generated = start(topology, plan, console, engine, port, api_key)
    except (ClusterError, LaunchError) as err:
        if new_cluster:
            try:
                down_cluster(topology)
                undone = "; Ray stopped again"
            except ClusterError as down_err:
                undone = f"; stopping Ray again failed too: {down_err}"
        else:
            undone = ""
        prefix = f"{topology.name}: " if isinstance(err, LaunchError) else ""
        fail(f"nemodeploy: {prefix}{err}{undone}", EXIT_BAD_INPUT if isinstance(err, LaunchError) else EXIT_FAILED)
    endpoint = health_url.removesuffix("/health")
    console.print(f"engine serving at [bold]{endpoint}/v1[/] (tp {plan.parallel.tp_size}, ep {plan.parallel.ep_size}); "
                  f"`nemodeploy down {topology.name}` stops it and the cluster")
    if generated:
        where = secrets.local_dir(topology.name) / secrets.API_KEY
        console.print(f"API key (generated, shown once; kept in {where}, mode 0600): "
                      "clients send 'Authorization: Bearer KEY'")
        click.echo(key)


def _start_embedded(topology, plan, console: Console, engine, port: int | None, api_key: str | None):
    """(health URL, key, generated): the engine started (after stopping an unhealthy one)."""
    from nemodeploy.backends.cluster_engine import start_engine, stop_engine

    if engine is not None:  # a rank died with its node: restart the engine over the nodes `up` brought back
        console.print(f"engine unhealthy ({engine.detail}); restarting it")
        stop_engine(topology.name)
    key, generated = secrets.engine_api_key(topology.name, api_key)
    return start_engine(topology, plan, api_key=key, port=port), key, generated


def down_cluster_command(topology: Topology | str) -> None:
    """Stop the engine (vLLM or embedded), then Ray on every node. A step that fails is named and the
    next steps run all the same; a later `down` finishes what this one could not."""
    from nemodeploy.backends.cluster_engine import stop_engine
    from nemodeploy.backends.vllm_launch import stop_vllm

    name = topology if isinstance(topology, str) else topology.name
    problems: list[str] = []

    def attempt(action: Callable[[], T], done: Callable[[T], str]) -> None:
        try:
            result = action()
        except ClusterError as err:
            problems.append(str(err))
            return
        if result:
            click.echo(done(result))

    attempt(lambda: stop_vllm(name), lambda nodes: f"vLLM on {name} stopped ({', '.join(nodes)})")
    attempt(lambda: stop_engine(name), lambda _: f"engine on {name} stopped")
    attempt(lambda: down_cluster(topology), lambda nodes: f"Ray stopped on {', '.join(nodes)}")
    if problems:
        fail(f"nemodeploy: {'; '.join(problems)}", EXIT_FAILED)


def status_cluster_command(topology: Topology, as_json: bool) -> None:
    status = _or_exit(lambda: cluster_status(topology))
    if as_json:
        click.echo(json.dumps(status.to_dict(), indent=2))
    else:
        table = Table(title=f"{status.topology} (Ray at {status.gcs_address}{'' if status.ray_running else ': not running'})")
        for column in ("node", "address", "state", "resources"):
            table.add_column(column)
        for node in status.nodes:
            color = "green" if node.state == "alive" else "red"
            resources = ", ".join(_resource(k, v) for k, v in sorted(node.resources.items()) if not k.startswith("node:"))
            detail = f" ({escape(node.detail)})" if node.detail else ""
            table.add_row(node.name, node.address, f"[{color}]{node.state}[/]{detail}", resources)
        Console().print(table)
        if status.engine:
            mark = "healthy" if status.engine.healthy else "UNHEALTHY"
            click.echo(f"engine {status.engine.kind}: {mark} ({status.engine.health_url}: {status.engine.detail})")
    if not status.all_alive or (status.engine is not None and not status.engine.healthy):
        raise SystemExit(EXIT_FAILED)


def _resource(name: str, amount: float) -> str:
    return f"{name}={amount / 2**30:.1f}GiB" if "memory" in name else f"{name}={amount:g}"


@click.command("logs")
@click.argument("topology")
@click.argument("node")
@click.option("--dest", type=click.Path(file_okay=False), default="nemodeploy-logs", show_default=True,
              help="Local folder; the logs go to DEST/NODE/.")
@click.option("--tail", "tail_lines", type=int, default=20, show_default=True, help="Lines of raylet.out to print (0: none).")
def logs(topology: str, node: str, dest: str, tail_lines: int) -> None:
    """Fetch NODE's Ray session logs from the cluster of TOPOLOGY."""
    loaded = load_topology(topology)
    folder = _or_exit(lambda: fetch_logs(loaded, node, dest))
    click.echo(f"{node}: Ray logs in {folder}", err=True)
    raylet = folder / "raylet.out"
    if tail_lines > 0 and raylet.is_file():
        click.echo("".join(raylet.read_text(errors="replace").splitlines(keepends=True)[-tail_lines:]), nl=False)


@click.group("testhosts")
def testhosts() -> None:
    """Test hosts: network namespaces with sshd on a bridge, for trying multi-node bring-up on one machine (root)."""


@testhosts.command("up")
@click.argument("count", type=click.IntRange(1, 100))
@click.option("--mtu", type=click.IntRange(576, 9216), default=1500, show_default=True, help="MTU of every link (both ends).")
@click.option("--subnet", default="10.213.1.0/24", show_default=True, help="Private subnet for the hosts and the bridge.")
@click.option("--name", default="ndh", show_default=True, help="Name of this set of hosts (prefix of its links and namespaces).")
@click.option("--cpu-per-host", type=click.FloatRange(0.05, min_open=False), default=None,
              help="Cores each host may use (a cgroup per host); default: no limit.")
@click.option("--private-home", is_flag=True, help="Give each host a copy-on-write view of root's home.")
def testhosts_up(count: int, mtu: int, subnet: str, name: str, cpu_per_host: float | None, private_home: bool) -> None:
    """Create COUNT hosts h1..hCOUNT and print a topology for them; they stay until `testhosts down`."""
    reason = hosts.unavailable_reason()
    if reason:
        fail(f"nemodeploy: {reason}", EXIT_BAD_INPUT)
    bed = _or_exit(lambda: hosts.create(count, mtu=mtu, subnet=subnet, name=name,
                                        cpu_per_host=cpu_per_host, private_home=private_home))
    topology = Path(bed.workdir) / "topology.yaml"
    topology.write_text(bed.topology_yaml())
    click.echo(bed.topology_yaml(), nl=False)
    click.echo(
        f"# {count} test hosts up on {subnet}; topology saved to {topology}\n"
        f"# their host keys: export {KNOWN_HOSTS_ENV}={bed.known_hosts_path}\n"
        f"# log in to one: ssh -i {bed.key_path} -o UserKnownHostsFile={bed.known_hosts_path} root@{bed.hosts[0].ip}\n"
        f"# remove them: nemodeploy testhosts down --name {name}",
        err=True,
    )


@testhosts.command("down")
@click.option("--name", default="ndh", show_default=True)
def testhosts_down(name: str) -> None:
    """Kill everything in the test hosts and remove their links, bridge, namespaces and files."""
    bed = hosts.load(name)
    if bed is None:
        fail(f"nemodeploy: no test hosts named {name!r} are recorded; nothing to do", EXIT_FAILED)
    hosts.destroy(bed)
    click.echo(f"test hosts {name!r} removed ({len(bed.hosts)} hosts)", err=True)
