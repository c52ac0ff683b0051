"""vLLM on the Ray cluster `nemodeploy up` brought up: start in order, stream start-up, wait for /health, stop.

`start_vllm` runs after the Ray bring-up. Every node's argv and environment are built and
validated first (nothing starts on a refusal); then each node that will run vLLM is checked
over SSH (the vllm command and its version, the model directory); under the ray launcher the
head waits until Ray reports every node of the plan alive with its GPUs. Then `vllm serve`
starts detached in its own session, the head first (the mp launcher's headless ranks after
it), its log is followed and its phases (weights, compile, KV cache, CUDA graphs, API server)
reported, and /health is polled with a timeout sized from the weights each node reads and
the read rate. A process that exits, or a timeout, stops what was started and is reported
with the node and the log's last lines. `stop_vllm` ends every recorded vLLM session.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nemodeploy.backends.vllm import launch_nodes, serve_argv, serve_env
from nemodeploy.backends.vllm_table import flag_table
from nemodeploy.cluster import ray_bringup, secrets, state as cluster_state
from nemodeploy.cluster.errors import ClusterError
from nemodeploy.cluster.ray_bringup import CLUSTER_ENV
from nemodeploy.cluster.ssh import Shell, Target, connect, quote
from nemodeploy.net import http_ok
from nemodeploy.plan.types import Plan, human_bytes
from nemodeploy.topology.schema import Topology

VLLM_COMMAND_ENV = "NEMODEPLOY_VLLM"  # the vllm command on the nodes, when it is not `vllm` on the PATH
KIND = "vllm"

# what vLLM 0.33 logs as it starts, and the phase each line announces
PHASES = (
    (re.compile(r"Loading (weights|safetensors|model)|Model loading took|download", re.I), "loading weights"),
    (re.compile(r"torch\.compile|Compiling|compiled", re.I), "compiling"),
    (re.compile(r"KV cache|Mamba (cache|state)", re.I), "sizing the KV cache"),
    (re.compile(r"CUDA ?graph", re.I), "capturing CUDA graphs"),
    (re.compile(r"Starting vLLM API server|Application startup complete", re.I), "starting the API server"),
)
_NOTEWORTHY = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")


@dataclass(frozen=True)
class VllmSettings:
    """How vLLM is started; `command` is what runs `serve` on each node."""

    command: tuple[str, ...] = field(default_factory=lambda: tuple(shlex.split(os.environ.get(VLLM_COMMAND_ENV, "vllm"))))
    hub_read_rate_bytes_s: float = 200e6  # a model given by hub id is downloaded: assume 200 MB/s
    fixed_start_s: float = 600.0  # compile, KV sizing, CUDA graphs, API server: minutes on a large model
    timeout_s: float | None = None  # overrides the sized timeout
    poll_s: float = 1.0
    stop_grace_s: float = 30.0
    tail_lines: int = 8


@dataclass
class _Node:
    rank: int
    name: str
    target: Target
    folder: str
    argv: list[str] | None  # None: a Ray worker node, where vLLM runs only as Ray actors the head places
    env: dict[str, str]
    shell: Shell | None = None
    offset: int = 0
    phase: str = "starting"


def launch_folder(temp_dir: str) -> str:
    """vLLM's folder on a node (vllm.pid, vllm.log), next to the node's Ray temp dir."""
    return f"{posixpath.dirname(temp_dir)}/vllm"


def _targets(state: cluster_state.ClusterState) -> dict[str, tuple[Target, str]]:
    return {n.name: (Target(n.name, n.address, n.ssh_user, n.ssh_port, n.ssh_key, i), launch_folder(n.temp_dir))
            for i, n in enumerate(state.nodes)}


def _launch_plan(topology: Topology, plan: Plan, state: cluster_state.ClusterState, launcher: str,
                 settings: VllmSettings) -> list[_Node]:
    """Every node of the plan, head first; those that run vllm serve with their validated argv and environment."""
    targets = _targets(state)
    nodes = launch_nodes(topology, plan)
    missing = [n.name for n in nodes if n.name not in targets]
    if missing:
        raise ClusterError(f"node {missing[0]} of the plan was not brought up by `nemodeploy up`", missing[0])
    out = []
    for rank, node in enumerate(nodes):
        target, folder = targets[node.name]
        if launcher == "ray" and rank > 0:
            out.append(_Node(rank, node.name, target, folder, None, {}))
            continue
        argv = serve_argv(topology, plan, node_rank=rank, launcher=launcher)
        env = {**CLUSTER_ENV, **serve_env(topology, plan, node_rank=rank, launcher=launcher)}
        if launcher == "ray":
            env["RAY_ADDRESS"] = state.gcs_address  # vLLM's ray.init joins this cluster, not a new one
        out.append(_Node(rank, node.name, target, folder, [*settings.command, *argv[1:]], env))
    return out


def _check_node(shell: Shell, topology: Topology, settings: VllmSettings) -> None:
    """vLLM of the table's version, and the model directory: on every node, Ray workers load weights too."""
    command = quote(*settings.command)
    result = shell.run(f"{command} --version", timeout=120)
    if result.rc != 0:
        raise ClusterError(f"`{command} --version` failed ({result.tail(1) or 'not found'}): install vLLM "
                           f"{flag_table().vllm_version} there, on the PATH of a non-interactive SSH session, or "
                           f"set {VLLM_COMMAND_ENV}", shell.target.name)
    version = result.out.strip().splitlines()[-1].strip() if result.out.strip() else "?"
    wanted = flag_table().vllm_version
    if version != wanted:
        raise ClusterError(f"has vLLM {version}; nemodeploy's flags are checked against vLLM {wanted}: install "
                           f"vllm=={wanted}", shell.target.name)
    model = topology.model.path
    if model and shell.run(f"test -f {quote(model + '/config.json')}", timeout=30).rc != 0:
        raise ClusterError(f"the model directory {model} (with config.json) is missing; copy the checkpoint to the "
                           "same path on every node", shell.target.name)


def _wait_for_gpus(head: Shell, gcs: str, plan: Plan, timeout_s: float) -> None:
    """Ray's view must hold every node of the plan alive with the GPUs its ranks need before vllm serve."""
    need: dict[str, int] = {}
    for rank in plan.ranks:
        need[rank.address] = need.get(rank.address, 0) + 1
    gpu_kind = plan.accelerator != "cpu"
    deadline = time.monotonic() + timeout_s
    while True:
        table = ray_bringup.list_nodes(head, gcs) or []
        have = {n.ip: n.resources.get("GPU", 0.0) if gpu_kind else math.inf for n in table if n.alive}
        short = [(address, count) for address, count in need.items() if have.get(address, -1) < count]
        if not short:
            return
        if time.monotonic() > deadline:
            address, count = short[0]
            name = next(r.node for r in plan.ranks if r.address == address)
            seen = "is not alive in Ray" if address not in have else f"offers {have[address]:g} GPUs to Ray"
            raise ClusterError(f"{seen}; the plan places {count} ranks there: vllm serve was not started", name)
        time.sleep(1.0)


def read_rate_bytes_s(shell: Shell, topology: Topology, settings: VllmSettings) -> tuple[float, str]:
    """How fast the head reads the checkpoint: measured with dd on a local model, assumed for a hub download."""
    model = topology.model.path
    if model:
        probe = (f"f=$(ls {quote(model)}/*.safetensors 2>/dev/null | head -n 1); [ -n \"$f\" ] && "
                 "LC_ALL=C timeout 60 dd if=\"$f\" of=/dev/null bs=16M count=64 2>&1 | tail -n 1")
        match = re.search(r"^(\d+) bytes .* copied, ([\d.]+) s", shell.run(probe, timeout=90).out.strip())
        if match and float(match[2]) > 0 and int(match[1]) >= 2**20:
            return int(match[1]) / float(match[2]), "measured on the head"
    return settings.hub_read_rate_bytes_s, "assumed for a download"


def start_timeout_s(plan: Plan, read_rate: float, settings: VllmSettings) -> tuple[float, int]:
    """Seconds to wait for /health, and the weight bytes the busiest node reads."""
    parallel = plan.parallel
    per_rank = plan.model.weight_bytes / (parallel.tp_size * parallel.pp_size)
    per_node: dict[str, int] = {}
    for rank in plan.ranks:
        per_node[rank.node] = per_node.get(rank.node, 0) + 1
    node_bytes = int(per_rank * max(per_node.values()))
    return settings.timeout_s or settings.fixed_start_s + 1.5 * node_bytes / read_rate, node_bytes


def _start_command(node: _Node, key_file: str | None) -> str:
    """Detached in its own session (setsid), so that stopping it reaches every process vLLM forks.

    The API key goes from its 0600 file into vLLM's environment (VLLM_API_KEY), never into an argv.
    """
    env = " ".join(shlex.quote(f"{k}={v}") for k, v in node.env.items())
    key = f'VLLM_API_KEY="$(cat {quote(key_file)})" ' if key_file else ""
    # a simple command in the background (a list would run in a subshell): $! is vLLM itself
    return (f"mkdir -p {quote(node.folder)} && cd {quote(node.folder)} || exit 1; rm -f vllm.log; "
            f"{key}env {env} setsid nohup {quote(*node.argv)} > vllm.log 2>&1 < /dev/null & echo $! > vllm.pid; "
            "echo $!")


def _alive_pid(shell: Shell, folder: str) -> str | None:
    """The recorded vllm pid while it still runs a `serve` (a recycled pid is not ours)."""
    out = shell.run(f"pid=$(cat {quote(folder)}/vllm.pid 2>/dev/null) && tr '\\0' ' ' < /proc/$pid/cmdline "
                    "2>/dev/null | grep -q ' serve ' && echo $pid", timeout=30).out.strip()
    return out or None


def _stop_node(shell: Shell, folder: str, grace_s: float) -> bool:
    """TERM to vLLM's whole session, KILL after the grace period; True if one was running."""
    pid = _alive_pid(shell, folder)
    if pid:
        steps = int(grace_s * 5)
        shell.run(f"kill -TERM -- -{pid} 2>/dev/null || kill -TERM {pid}; for i in $(seq {steps}); do "
                  f"kill -0 -- -{pid} 2>/dev/null || exit 0; sleep 0.2; done; kill -KILL -- -{pid}",
                  timeout=grace_s + 30)
    shell.run(f"rm -f {quote(folder)}/vllm.pid", timeout=30)
    return pid is not None


def _new_lines(node: _Node) -> list[str]:
    result = node.shell.run(f"tail -c +{node.offset + 1} {quote(node.folder)}/vllm.log 2>/dev/null", timeout=30)
    text = result.out
    end = text.rfind("\n") + 1  # a partial last line waits for the next read
    node.offset += len(text[:end].encode())
    return text[:end].splitlines()


def _tail(node: _Node, lines: int) -> str:
    out = node.shell.run(f"tail -n {lines} {quote(node.folder)}/vllm.log 2>/dev/null", timeout=30).out
    return " | ".join(line.strip() for line in out.splitlines() if line.strip()) or "(empty log)"


Report = Callable[[str, str], None]  # (node, text)


def start_vllm(topology: Topology, plan: Plan, *, api_key: str | None = None, launcher: str | None = None,
               settings: VllmSettings | None = None, on_phase: Report | None = None,
               on_line: Report | None = None) -> str:
    """Start vLLM on the cluster `up` brought up; returns its /health URL once it answers 200.

    With `api_key`, the OpenAI API wants it as a Bearer token (the key reaches the head in a 0600 file).

    VllmError (before anything runs) when the validator refuses; ClusterError, with the node,
    when a check fails or vLLM does not come up (what this call started is stopped again).
    """
    settings = settings or VllmSettings()
    on_phase = on_phase or (lambda node, text: None)
    on_line = on_line or (lambda node, text: None)
    launcher = launcher or topology.engine.launcher
    state = cluster_state.load(topology.name)
    if state is None:
        raise ClusterError(f"cluster {topology.name!r} is not up; run `nemodeploy up` first")
    nodes = _launch_plan(topology, plan, state, launcher, settings)
    serving = [node for node in nodes if node.argv is not None]
    head = nodes[0]
    health_url = f"http://{head.target.address}:{topology.engine.port}/health"
    started: list[_Node] = []
    try:
        for node in nodes:
            node.shell = connect(node.target, state.known_hosts)
            on_phase(node.name, f"checking {settings.command[0]}")
            _check_node(node.shell, topology, settings)
        if launcher == "ray":
            on_phase(head.name, "waiting for every node's GPUs in Ray")
            _wait_for_gpus(head.shell, state.gcs_address, plan, 120.0)
        key_file = secrets.remote_path(secrets.API_KEY) if api_key else None
        if key_file:
            head.shell.put_secret(key_file, api_key)
        rate, how = read_rate_bytes_s(head.shell, topology, settings)
        timeout, node_bytes = start_timeout_s(plan, rate, settings)
        for node in serving:  # the head first: headless ranks connect to it
            on_phase(node.name, "vllm serve" + (" (headless)" if node.rank else ""))
            started.append(node)
            node.shell.check(_start_command(node, key_file if node is head else None), what="starting vllm serve")
            if node is head:
                cluster_state.record_engine(topology.name, KIND, health_url)
        on_phase(head.name, f"waiting for {health_url} (up to {timeout:.0f} s: {human_bytes(node_bytes)} per node "
                            f"at {human_bytes(rate)}/s, {how})")
        _wait_healthy(serving, health_url, time.monotonic() + timeout, timeout, settings, on_phase, on_line)
        for node in nodes:
            if node.argv is None:
                on_phase(node.name, "serving (Ray workers placed by the head)")
    except BaseException:
        for node in started:
            try:
                _stop_node(node.shell, node.folder, settings.stop_grace_s)
            except ClusterError:
                pass  # the error being raised is the one to report
        if started:
            cluster_state.record_engine(topology.name, KIND, None)
        raise
    finally:
        for node in nodes:
            if node.shell is not None:
                node.shell.close()
    return health_url


def _follow(node: _Node, on_phase: Report, on_line: Report) -> None:
    """Report the log lines written since the last call: phase changes, and the lines worth showing."""
    for line in _new_lines(node):
        phase = next((name for pattern, name in PHASES if pattern.search(line)), None)
        if phase and phase != node.phase:
            node.phase = phase
            on_phase(node.name, phase)
        if phase or _NOTEWORTHY.search(line):
            on_line(node.name, line)


def _wait_healthy(nodes: list[_Node], url: str, deadline: float, timeout: float, settings: VllmSettings,
                  on_phase: Report, on_line: Report) -> None:
    def check_alive() -> None:
        for node in nodes:
            _follow(node, on_phase, on_line)
            if not _alive_pid(node.shell, node.folder):
                raise ClusterError(f"vllm serve exited during start-up ({node.phase}); {node.folder}/vllm.log ends: "
                                   f"{_tail(node, settings.tail_lines)}", node.name)

    while True:
        check_alive()
        if http_ok(url):
            check_alive()  # every rank still up once the head answers, and what they logged meanwhile
            for node in nodes:
                on_phase(node.name, "serving" if node.rank == 0 else "serving (headless)")
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"vLLM did not answer {url} within {timeout:.0f} s ({nodes[0].phase}); "
                               f"{nodes[0].folder}/vllm.log ends: {_tail(nodes[0], settings.tail_lines)}", nodes[0].name)
        time.sleep(settings.poll_s)


def stop_vllm(topology_name: str, settings: VllmSettings | None = None) -> list[str]:
    """Stop the vLLM that `start_vllm` recorded for the cluster, on every node; the nodes where one ran."""
    settings = settings or VllmSettings()
    state = cluster_state.load(topology_name)
    if state is None or state.engine is None or state.engine.kind != KIND:
        return []
    stopped = []
    for target, folder in _targets(state).values():
        with connect(target, state.known_hosts) as shell:
            if _stop_node(shell, folder, settings.stop_grace_s):
                stopped.append(target.name)
    cluster_state.record_engine(topology_name, KIND, None)
    return stopped
