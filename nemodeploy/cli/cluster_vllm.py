"""The vLLM half of `up` on a cluster: start vLLM on the Ray cluster, its start-up shown per node."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from nemodeploy.cluster import secrets
from nemodeploy.cluster.progress import NodeSteps


def start_vllm_engine(topology, plan, console: Console, engine, port: int | None, api_key: str | None):
    """(health URL, key, generated): vLLM started (after stopping an unhealthy one), its start-up shown per node.

    The same contract as the embedded engine's starter in `up`: VllmError (a LaunchError) for a
    refused combination, ClusterError for a failed start; the API key is the given, kept or a new one.
    """
    from nemodeploy.backends.vllm import launch_nodes
    from nemodeploy.backends.vllm_launch import start_vllm, stop_vllm

    if port:
        topology = topology.model_copy(update={"engine": topology.engine.model_copy(update={"port": port})})
    if engine is not None:  # unhealthy (a healthy one is left alone), or the embedded engine of an earlier topology
        from nemodeploy.backends.cluster_engine import stop_engine

        console.print(f"{engine.kind} engine unhealthy ({engine.detail}); replacing it with vLLM")
        if engine.kind == "vllm":
            stop_vllm(topology.name)
        else:
            stop_engine(topology.name)
    key, generated = secrets.engine_api_key(topology.name, api_key)
    with NodeSteps(console, [n.name for n in launch_nodes(topology, plan)]) as steps:
        def on_line(node: str, line: str) -> None:
            console.print(f"[dim]{escape(node)}: {escape(line.rstrip())}[/]")

        health_url = start_vllm(topology, plan, api_key=key, on_phase=steps.step, on_line=on_line)
    return health_url, key, generated

