"""The embedded engine on a Ray cluster that `nemodeploy up` brought up: start, stop, health.

`start_engine` logs in to the head over SSH and starts, detached, a Ray driver there
(`python -m nemodeploy.backends.cluster_engine serve --spec FILE`): it joins the cluster
as a driver of the head node, places one RayExecutor rank on each node the plan chose,
and serves the OpenAI API on the head's address. The spec file (EngineConfig, ranks,
Ray address) and the driver's pid and log sit in one folder on the head. The engine's
health URL goes into the cluster state, so `status` shows it; `stop_engine` (before
`down`) ends the driver, and with it the ranks it owns.

/health here also asks every rank: a rank that died while the engine was idle turns it
to 503 with a JSON body that names the rank and its node.
"""

from __future__ import annotations

import json
import posixpath
import time
import urllib.error
import urllib.request
from pathlib import Path

from nemodeploy.backends.engine_config import LaunchError, engine_config
from nemodeploy.cluster import state as cluster_state
from nemodeploy.cluster.errors import ClusterError
from nemodeploy.cluster.ray_bringup import CLUSTER_ENV, env_assignments, node_env
from nemodeploy.cluster.ssh import Shell, Target, connect, quote

MODULE = "nemodeploy.backends.cluster_engine"
# the interpreter of the node's `ray` script: the one that has ray (and nemodeploy) installed
_FIND_PYTHON = "PY=$(sed -n '1s/^#!//p' \"$(command -v ray)\")"
HEALTH_TIMEOUT_S = 5.0


def _head(state: cluster_state.ClusterState) -> tuple[cluster_state.NodeState, Target]:
    index, head = next((i, n) for i, n in enumerate(state.nodes) if n.head)
    return head, Target(head.name, head.address, head.ssh_user, head.ssh_port, head.ssh_key, index)


def engine_dir(head: cluster_state.NodeState) -> str:
    """The engine's folder on the head, next to the head's Ray temp dir."""
    return f"{posixpath.dirname(head.temp_dir)}/engine"


def launch_spec(topology, plan, gcs_address: str) -> dict:
    """What the driver on the head needs: the EngineConfig, the ranks' nodes and environments, the cluster."""
    parallel = plan.parallel
    if parallel is None or plan.cache is None:
        raise LaunchError(f"{topology.name}: {plan.reason}")
    if parallel.pp_size > 1:
        from nemodeploy.engine.ray_executor import NO_PIPELINE

        raise LaunchError(NO_PIPELINE)
    if parallel.dp_size > 1:
        raise LaunchError("data-parallel replicas are not implemented in the embedded engine; "
                          "set engine.parallel.dp_size to 1 or use the vllm engine")
    nodes = {n.name: n for n in topology.nodes}
    ranks = sorted(plan.ranks, key=lambda r: r.rank)
    return {
        "config": engine_config(topology, plan).to_dict(),
        "ray_address": gcs_address,
        "node_ip_address": topology.nodes[0].address,
        "tp_size": parallel.tp_size,
        "ep_size": parallel.ep_size,
        "rank_nodes": [r.address for r in ranks],
        "rank_names": [r.node for r in ranks],
        "rank_env": [node_env(nodes[r.node]) for r in ranks],
    }


def _check_model(shell: Shell, model: str) -> None:
    if shell.run(f"test -f {quote(model + '/config.json')}", timeout=30).rc != 0:
        raise ClusterError(f"the model directory {model} (with config.json) is missing on this node; "
                           "copy the checkpoint to the same path on every node", shell.target.name)


def start_engine(topology, plan, port: int | None = None, api_key: str | None = None,
                 timeout: float = 300.0) -> str:
    """Start the engine on the cluster `up` brought up for `topology`; returns its health URL once it is 200."""
    state = cluster_state.load(topology.name)
    if state is None:
        raise ClusterError(f"cluster {topology.name!r} is not up; run `nemodeploy up` first")
    spec = launch_spec(topology, plan, state.gcs_address)
    head, head_target = _head(state)
    port = port or topology.engine.port
    by_address = {n.address: (i, n) for i, n in enumerate(state.nodes)}
    for address in dict.fromkeys([head.address, *spec["rank_nodes"]]):
        i, node = by_address[address]
        target = Target(node.name, node.address, node.ssh_user, node.ssh_port, node.ssh_key, i)
        with connect(target, state.known_hosts) as shell:
            _check_model(shell, spec["config"]["model"])

    folder = engine_dir(head)
    health_url = f"http://{head.address}:{port}/health"
    with connect(head_target, state.known_hosts) as shell:
        if _running_pid(shell, folder):
            raise ClusterError(f"an engine already runs on the head (see {folder}); `nemodeploy down` stops it",
                               head.name)
        shell.check(f"mkdir -p {folder} && printf %s {quote(json.dumps(spec))} > {folder}/spec.json",
                    what="writing the engine's launch spec")
        env = env_assignments({**CLUSTER_ENV, **({"NEMODEPLOY_API_KEY": api_key} if api_key else {})})
        # a simple command in the background (not a list, which would run in a subshell): $! is the driver itself
        shell.check(f"{_FIND_PYTHON}; cd {folder} || exit 1; {env}nohup \"$PY\" -m {MODULE} serve --spec spec.json "
                    f"--host {head.address} --port {port} > engine.log 2>&1 < /dev/null & echo $! > engine.pid",
                    what="starting the engine")
        deadline = time.monotonic() + timeout
        while not _healthy(health_url):
            if not _running_pid(shell, folder):
                log = shell.run(f"tail -n 15 {folder}/engine.log", timeout=30).out.strip()
                raise ClusterError(f"the engine exited during start-up; {folder}/engine.log ends:\n{log}", head.name)
            if time.monotonic() > deadline:
                _stop(shell, folder)
                raise ClusterError(f"the engine did not answer {health_url} within {timeout:.0f} s; "
                                   f"see {folder}/engine.log", head.name)
            time.sleep(1.0)
    cluster_state.record_engine(topology.name, "embedded", health_url)
    return health_url


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _running_pid(shell: Shell, folder: str) -> str | None:
    """The driver's pid when it still runs our module (a recycled pid is not ours)."""
    out = shell.run(f"pid=$(cat {folder}/engine.pid 2>/dev/null) && grep -qa {MODULE} /proc/$pid/cmdline "
                    "2>/dev/null && echo $pid", timeout=30).out.strip()
    return out or None


def _stop(shell: Shell, folder: str, grace_s: int = 20) -> bool:
    pid = _running_pid(shell, folder)
    if pid:
        shell.run(f"kill {pid}; for i in $(seq {grace_s * 5}); do kill -0 {pid} 2>/dev/null || exit 0; sleep 0.2; "
                  f"done; kill -9 {pid}", timeout=grace_s + 30)
    shell.run(f"rm -f {folder}/engine.pid", timeout=30)
    return pid is not None


def stop_engine(topology_name: str) -> bool:
    """Stop the engine `start_engine` started (call before `down`); False if none was running."""
    state = cluster_state.load(topology_name)
    if state is None:
        return False
    head, target = _head(state)
    with connect(target, state.known_hosts) as shell:
        stopped = _stop(shell, engine_dir(head))
    if state.engine is not None:
        cluster_state.record_engine(topology_name, "embedded", None)
    return stopped


# -- the driver on the head ---------------------------------------------------


def _app(spec: dict, api_key: str | None):
    """The server's app over an LLMEngine whose executor is a RayExecutor; /health also checks every rank."""
    import asyncio

    from fastapi.responses import JSONResponse

    from nemodeploy.engine.async_engine import AsyncEngine
    from nemodeploy.engine.config import EngineConfig
    from nemodeploy.engine.core import LLMEngine
    from nemodeploy.cluster.placement import rank_placement_group
    from nemodeploy.engine.ray_executor import EngineWorkerError, RayExecutor, rank_resources
    from nemodeploy.engine.server import Server, create_app

    config = EngineConfig.from_dict(spec["config"])
    group = rank_placement_group(spec["rank_nodes"], rank_resources(config), timeout_s=120.0)
    executor = RayExecutor(config, spec["tp_size"], spec["ep_size"], placement_group=group, env=spec["rank_env"])
    try:
        engine = LLMEngine(config, executor=executor)
    except BaseException:
        executor.shutdown()
        raise
    async_engine = AsyncEngine(engine).start()
    name = config.served_model_name or Path(config.model).name
    app = create_app(Server(async_engine, engine.tokenizer, name, config.max_model_len, api_key,
                            config.default_thinking))
    names = dict(zip(spec["rank_nodes"], spec["rank_names"]))

    async def health():
        if async_engine.error is not None:
            return JSONResponse({"status": "failed", "error": str(async_engine.error)}, status_code=503)
        if not async_engine.alive:
            return JSONResponse({"status": "failed", "error": "the engine loop is not running"}, status_code=503)
        try:
            await asyncio.to_thread(executor.check_ranks, HEALTH_TIMEOUT_S)
        except EngineWorkerError as err:
            return JSONResponse({"status": "failed", "error": str(err), "rank": err.rank,
                                 "node": names.get(err.node, err.node), "address": err.node}, status_code=503)
        return JSONResponse({"status": "ok", "ranks": len(spec["rank_nodes"])})

    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != "/health"]
    app.add_api_route("/health", health, methods=["GET"])
    return app, async_engine


def serve(spec_path: str, host: str, port: int) -> None:
    """Run the server in the foreground as a Ray driver on the head, until SIGTERM."""
    import os

    import ray
    import uvicorn

    spec = json.loads(Path(spec_path).read_text())
    ray.init(address=spec["ray_address"], _node_ip_address=spec["node_ip_address"], namespace="nemodeploy",
             log_to_driver=False)
    try:
        app, async_engine = _app(spec, os.environ.get("NEMODEPLOY_API_KEY"))
        try:
            uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
        finally:
            async_engine.shutdown()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_args = commands.add_parser("serve", help="serve the engine as a Ray driver (started by start_engine)")
    serve_args.add_argument("--spec", required=True, help="launch spec JSON written by start_engine")
    serve_args.add_argument("--host", required=True)
    serve_args.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve(args.spec, args.host, args.port)
