"""The embedded engine on a Ray cluster that `nemodeploy up` brought up: start, stop, health.

`start_engine` logs in to the head over SSH and starts, detached, a Ray driver there
(`python -m nemodeploy.backends.cluster_engine serve --spec FILE`): it joins the cluster
as a driver of the head node, places one RayExecutor rank on each node the plan chose
(tp / ep ranks, pipeline stages), one RayExecutor per data-parallel replica, each on a
placement group of its own ranks' nodes, and serves the OpenAI API on the head's address
in front of all replicas (engine/replicas.py). The spec file (EngineConfig, ranks,
Ray address) and the driver's pid and log sit in one folder on the head. The engine's
health URL goes into the cluster state, so `status` shows it; `stop_engine` (before
`down`) ends the driver, and with it the ranks it owns.

The server binds the head's (non-loopback) address, so it always requires an API key:
`start_engine` writes it to a 0600 file on the head (nemodeploy.cluster.secrets) and
the driver reads it from there; it is never on a command line. A driver that exits
during start-up is a one-line ClusterError with its last log line and the log's path.

/health here also asks every rank: a rank that died while the engine was idle takes its
replica out, named in the JSON body (replica, rank, node); with no replica left it is 503.
"""

from __future__ import annotations

import json
import posixpath
import time
from pathlib import Path

from nemodeploy.backends.engine_config import LaunchError, engine_config
from nemodeploy.cluster import secrets, state as cluster_state
from nemodeploy.cluster.errors import ClusterError
from nemodeploy.cluster.ray_bringup import CLUSTER_ENV, ray_python
from nemodeploy.cluster.ssh import Shell, Target, connect, sh
from nemodeploy.net import http_ok
from nemodeploy.topology.netenv import node_env

MODULE = "nemodeploy.backends.cluster_engine"
HEALTH_TIMEOUT_S = 5.0
REPLICA_PROBE_INTERVAL_S = 2.0  # how soon a replica whose ranks died while idle stops getting requests
API_KEY_FILE_ENV = "NEMODEPLOY_API_KEY_FILE"

# Run in the engine's folder: the driver in the background, its pid recorded. "$@" is the driver's
# argv; nohup and the env/sh of ray_python all exec, so $! ends up being the driver itself.
_START = 'cd "$1" || exit 1; shift; rm -f engine.log; nohup "$@" > engine.log 2>&1 < /dev/null & echo $! > engine.pid'
_PID = 'pid=$(cat "$1"/engine.pid 2>/dev/null) && grep -qa "$2" /proc/"$pid"/cmdline 2>/dev/null && echo "$pid"'
_KILL = ('kill "$1"; i=0; while [ $i -lt "$2" ]; do kill -0 "$1" 2>/dev/null || exit 0; sleep 0.2; i=$((i + 1)); done; '
         'kill -9 "$1"')


def _head(state: cluster_state.ClusterState) -> tuple[cluster_state.NodeState, Target] | None:
    """The head as recorded, or None when a partial `down` already stopped it (only workers are left)."""
    found = next(((i, n) for i, n in enumerate(state.nodes) if n.head), None)
    if found is None:
        return None
    index, head = found
    return head, Target(head.name, head.address, head.ssh_user, head.ssh_port, head.ssh_key, index)


def engine_dir(head: cluster_state.NodeState) -> str:
    """The engine's folder on the head, next to the head's Ray temp dir."""
    return f"{posixpath.dirname(head.temp_dir)}/engine"


def launch_spec(topology, plan, gcs_address: str) -> dict:
    """What the driver on the head needs: the EngineConfig, the ranks' nodes and environments, the cluster."""
    parallel = plan.parallel
    if parallel is None or plan.cache is None:
        raise LaunchError(f"{topology.name}: {plan.reason}")
    nodes = {n.name: n for n in topology.nodes}
    ranks = sorted(plan.ranks, key=lambda r: r.rank)  # tp fastest, then pp, then dp: the executors' order
    return {
        "config": engine_config(topology, plan).to_dict(),
        "ray_address": gcs_address,
        "node_ip_address": topology.nodes[0].address,
        "tp_size": parallel.tp_size,
        "ep_size": parallel.ep_size,
        "pp_size": parallel.pp_size,
        "dp_size": parallel.dp_size,
        "stage_layers": [list(stage.layers) for stage in plan.stages],
        "rank_nodes": [r.address for r in ranks],
        "rank_names": [r.node for r in ranks],
        "rank_env": [node_env(nodes[r.node]) for r in ranks],
    }


def _check_model(shell: Shell, model: str) -> None:
    if shell.run(["test", "-f", f"{model}/config.json"], timeout=30).rc != 0:
        raise ClusterError(f"the model directory {model} (with config.json) is missing on this node; "
                           "copy the checkpoint to the same path on every node", shell.target.name)


def start_engine(topology, plan, api_key: str, port: int | None = None, timeout: float = 300.0) -> str:
    """Start the engine on the cluster `up` brought up for `topology`, requiring `api_key`; returns its
    health URL once it is 200."""
    if not api_key:
        raise ClusterError("the engine binds the head's network address: an API key is required")
    state = cluster_state.load(topology.name)
    head = _head(state) if state is not None else None
    if head is None:
        raise ClusterError(f"cluster {topology.name!r} is not up; run `nemodeploy up` first")
    spec = launch_spec(topology, plan, state.gcs_address)
    head, head_target = head
    port = port or topology.engine.port
    by_address = {n.ray_ip: (i, n) for i, n in enumerate(state.nodes)}  # ranks are placed by Ray's node IP
    for address in dict.fromkeys([head.ray_ip, *spec["rank_nodes"]]):
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
        shell.check(sh('mkdir -p -- "$1" && printf %s "$2" > "$1"/spec.json', folder, json.dumps(spec)),
                    what="writing the engine's launch spec")
        key_path = secrets.remote_path(secrets.API_KEY)
        shell.put_secret(key_path, api_key)
        driver = ray_python("-m", MODULE, "serve", "--spec", "spec.json", "--host", head.address, "--port", str(port),
                            env={**CLUSTER_ENV, API_KEY_FILE_ENV: key_path})
        shell.check(sh(_START, folder, *driver), what="starting the engine")
        deadline = time.monotonic() + timeout
        while not http_ok(health_url, HEALTH_TIMEOUT_S):
            if not _running_pid(shell, folder):
                _stop(shell, folder)
                raise ClusterError(f"the engine exited during start-up: {_last_error(shell, folder)} "
                                   f"(log: {head.address}:{folder}/engine.log)", head.name)
            if time.monotonic() > deadline:
                _stop(shell, folder)
                raise ClusterError(f"the engine did not answer {health_url} within {timeout:.0f} s; "
                                   f"see {folder}/engine.log", head.name)
            time.sleep(1.0)
    cluster_state.record_engine(topology.name, "embedded", health_url)
    return health_url


def _last_error(shell: Shell, folder: str) -> str:
    """The log's last line that looks like an error (a traceback ends with it), else its last line."""
    lines = [line.strip() for line in shell.run(["tail", "-n", "200", "--", f"{folder}/engine.log"], timeout=30)
             .out.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    last = (errors or lines or ["(empty log)"])[-1]
    return last if len(last) <= 300 else last[:297] + "..."


def _running_pid(shell: Shell, folder: str) -> str | None:
    """The driver's pid when it still runs our module (a recycled pid is not ours)."""
    return shell.run(sh(_PID, folder, MODULE), timeout=30).out.strip() or None


def _stop(shell: Shell, folder: str, grace_s: int = 20) -> bool:
    pid = _running_pid(shell, folder)
    if pid:
        shell.run(sh(_KILL, pid, str(grace_s * 5)), timeout=grace_s + 30)
    shell.run(["rm", "-f", "--", f"{folder}/engine.pid", secrets.remote_path(secrets.API_KEY)], timeout=30)
    return pid is not None


def stop_engine(topology_name: str) -> bool:
    """Stop the engine `start_engine` started (call before `down`); False if none was running."""
    state = cluster_state.load(topology_name)
    head = _head(state) if state is not None else None
    if head is None:
        return False
    head, target = head
    with connect(target, state.known_hosts) as shell:
        stopped = _stop(shell, engine_dir(head))
    if state.engine is not None:
        cluster_state.record_engine(topology_name, "embedded", None)
    return stopped


# -- the driver on the head ---------------------------------------------------


def _replicas(spec: dict, config):
    """One started AsyncEngine per data-parallel replica, each over a RayExecutor on its own ranks' nodes."""
    from nemodeploy.cluster.placement import rank_placement_group
    from nemodeploy.engine.async_engine import AsyncEngine
    from nemodeploy.engine.core import LLMEngine
    from nemodeploy.engine.ray_executor import RayExecutor, rank_resources

    size = len(spec["rank_nodes"]) // spec["dp_size"]
    engines = []
    try:
        for replica in range(spec["dp_size"]):
            own = slice(replica * size, (replica + 1) * size)
            group = rank_placement_group(spec["rank_nodes"][own], rank_resources(config), timeout_s=120.0)
            executor = RayExecutor(config, spec["tp_size"], spec["ep_size"], spec["pp_size"], placement_group=group,
                                   env=spec["rank_env"][own], stage_layers=spec["stage_layers"])
            try:
                engines.append(AsyncEngine(LLMEngine(config, executor=executor)).start())
            except BaseException:
                executor.shutdown()
                raise
    except BaseException:
        for engine in engines:
            engine.shutdown()
        raise
    return engines


def _app(spec: dict, api_key: str | None):
    """The server's app over the replicas; /health also asks every rank of every replica still serving."""
    import asyncio

    from fastapi.responses import JSONResponse

    from nemodeploy.engine.config import EngineConfig
    from nemodeploy.engine.replicas import ReplicaSet
    from nemodeploy.engine.server import Server, create_app

    config = EngineConfig.from_dict(spec["config"])
    replicas = ReplicaSet(_replicas(spec, config), probe_interval_s=REPLICA_PROBE_INTERVAL_S)
    tokenizer = replicas.engines[0].engine.tokenizer
    name = config.served_model_name or Path(config.model).name
    app = create_app(Server(replicas, tokenizer, name, config.max_model_len, api_key, config.default_thinking))
    names = dict(zip(spec["rank_nodes"], spec["rank_names"]))

    async def health():
        await asyncio.to_thread(replicas.probe, HEALTH_TIMEOUT_S)
        status, body = replicas.report(names)
        return JSONResponse({**body, "ranks": len(spec["rank_nodes"])} if status == 200 else body, status_code=status)

    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != "/health"]
    app.add_api_route("/health", health, methods=["GET"])
    return app, replicas


def serve(spec_path: str, host: str, port: int) -> None:
    """Run the server in the foreground as a Ray driver on the head, until SIGTERM."""
    import os

    import ray
    import uvicorn

    spec = json.loads(Path(spec_path).read_text())
    ray.init(address=spec["ray_address"], _node_ip_address=spec["node_ip_address"], namespace="nemodeploy",
             log_to_driver=False)
    try:
        app, replicas = _app(spec, Path(os.environ[API_KEY_FILE_ENV]).read_text().strip())
        try:
            uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
        finally:
            replicas.shutdown()
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
