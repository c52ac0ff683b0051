"""Cluster lifecycle over SSH: up (idempotent), down (exactly what up started), status, logs.

The head is the topology's first node. `up` may be given the topology as preflight MEASURED it
(nemodeploy.preflight.env.measured_topology): each node's address and NICs as its route to the
head really uses them. Ray then starts there with that address (--node-ip-address) and its
NCCL/Gloo/vLLM environment (netenv), while SSH keeps the topology's addresses. Every check
(SSH login, host keys, Ray installed and of one version, ports free) runs on every node before
anything is started, so a failed check leaves nothing running; a failure after a start
stops what this call started. Ray runs with token authentication: `up` copies the
cluster's token (nemodeploy.cluster.secrets) to every node before it starts anything.

`down` stops what it can reach and keeps the rest on record, so the next `down`
finishes the job. `status` asks the GCS which nodes are alive and, from each node,
whether it reaches the head's GCS port (a one-way partition looks alive to the GCS).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from rich.console import Console

from nemodeploy.cluster import ray_bringup, secrets, state as cluster_state
from nemodeploy.cluster.errors import ClusterError
from nemodeploy.cluster.progress import NodeSteps
from nemodeploy.cluster.ray_bringup import RayNode, RaySettings
from nemodeploy.cluster.ssh import Shell, Target, connect
from nemodeploy.cluster.state import ClusterState, NodeState
from nemodeploy.topology.schema import Node, Topology

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class NodeStatus:
    name: str
    address: str
    # alive | dead (the GCS saw it die) | absent (never joined this cluster)
    # | cut-off (the GCS lists it alive, but it cannot reach the head's GCS port: see `detail`)
    state: str
    node_id: str = ""
    resources: dict[str, float] = field(default_factory=dict)
    detail: str = ""  # why it is cut off, or why it could not be asked (SSH)


@dataclass
class EngineStatus:
    kind: str
    health_url: str
    healthy: bool
    detail: str


@dataclass
class ClusterStatus:
    topology: str
    gcs_address: str
    ray_running: bool
    nodes: list[NodeStatus]
    engine: EngineStatus | None = None

    @property
    def all_alive(self) -> bool:
        return self.ray_running and all(n.state == "alive" for n in self.nodes)

    def to_dict(self) -> dict:
        return {**asdict(self), "all_alive": self.all_alive}


def _nodes(topology: Topology) -> list[Node]:
    for i, node in enumerate(topology.nodes):
        if node.count != 1:
            raise ClusterError(
                f"nodes[{i}] ({node.name}) has count {node.count}; to bring nodes up, list them one by one with their addresses"
            )
    return list(topology.nodes)


def _target(node: Node, index: int) -> Target:
    return Target(node.name, node.address, node.ssh.user, node.ssh.port, node.ssh.key, index)


def _parallel(items: Iterable[T], work: Callable[[T], R]) -> list[R]:
    """Run `work` on every item at once; all finish before the first error (in item order) is raised."""
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        futures = [pool.submit(work, item) for item in items]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]
    return [f.result() for f in futures]


def _connect_all(targets: list[Target], known_hosts: str | None, accept_new: bool) -> list[Shell]:
    def attempt(target: Target) -> Shell | ClusterError:
        try:
            return connect(target, known_hosts, accept_new)
        except ClusterError as err:
            return err

    results = _parallel(targets, attempt)
    failures = [r for r in results if isinstance(r, ClusterError)]
    if failures:
        for shell in results:
            if isinstance(shell, Shell):
                shell.close()
        raise failures[0]
    return results  # type: ignore[return-value]


def _close(shells: Iterable[Shell]) -> None:
    for shell in shells:
        shell.close()


def _gcs_address(topology: Topology, settings: RaySettings) -> str:
    return f"{topology.nodes[0].address}:{settings.port}"


def _wait_alive(head: Shell, gcs: str, nodes: list[Node], timeout: float, steps: NodeSteps) -> list[RayNode]:
    deadline = time.monotonic() + timeout
    while True:
        table = ray_bringup.list_nodes(head, gcs) or []
        alive = {n.ip for n in table if n.alive and n.resources}
        for node in nodes:
            if node.address in alive:
                steps.done(node.name, "alive")
        missing = [n for n in nodes if n.address not in alive]
        if not missing:
            return table
        if time.monotonic() > deadline:
            raise ClusterError(
                f"did not join the Ray cluster at {gcs} within {timeout:.0f} s; "
                f"see its Ray logs: nemodeploy logs <topology> {missing[0].name}",
                missing[0].name,
            )
        time.sleep(1.0)


def _stop_quietly(shells: Iterable[Shell], settings: RaySettings) -> None:
    def stop(shell: Shell) -> None:
        try:
            ray_bringup.stop(shell, settings)
        except ClusterError:
            pass  # rolling back after another error: that error is the one to report

    _parallel(shells, stop)


PROBE_TIMEOUT_S = 2.0


def _cut_off(shell: Shell, gcs: str) -> str | None:
    """Why this node cannot open a connection to the head's GCS port (`gcs` is host:port), or None."""
    host, port = gcs.rsplit(":", 1)
    failed = ray_bringup.unreachable_ports(shell, host, [int(port)], PROBE_TIMEOUT_S)
    if not failed:
        return None
    return f"cannot reach the head's Ray port {gcs} ({failed[int(port)]})"


def _require_reach(shell: Shell, gcs: str) -> None:
    why = _cut_off(shell, gcs)
    if why:
        raise ClusterError(f"{why}; open TCP from this node to the head's ports (firewall, routes)", shell.target.name)


def up_cluster(
    topology: Topology,
    accept_new_host_keys: bool = False,
    known_hosts: str | None = None,
    console: Console | None = None,
    settings: RaySettings | None = None,
    measured: Topology | None = None,
) -> ClusterState:
    """Bring up Ray on every node of the topology over SSH; nodes already alive are left alone.

    `measured`: the same nodes with the address and NICs Ray and the engine should use there.
    """
    settings = settings or RaySettings()
    nodes = _nodes(topology)
    ray_node = {n.name: n for n in (measured or topology).nodes}
    head_node, gcs = nodes[0], _gcs_address(topology, settings)
    previous = cluster_state.load(topology.name)
    known_hosts = known_hosts or (previous.known_hosts if previous else None)
    shells = _connect_all([_target(n, i) for i, n in enumerate(nodes)], known_hosts, accept_new_host_keys)
    by_name = dict(zip((n.name for n in nodes), shells))
    started: list[Shell] = []
    try:
        token = secrets.ray_token(topology.name)
        _parallel(shells, lambda shell: ray_bringup.put_token(shell, token))
        with NodeSteps(console, [n.name for n in nodes]) as steps:
            table = ray_bringup.list_nodes(by_name[head_node.name], gcs)
            alive = {n.ip for n in table or [] if n.alive}
            head_up = ray_node[head_node.name].address in alive
            to_start = [n for n in nodes if not head_up or ray_node[n.name].address not in alive]
            running = [n for n in nodes if n not in to_start and n is not head_node]
            _parallel(running, lambda n: _require_reach(by_name[n.name], gcs))
            for node in nodes:
                if node not in to_start:
                    steps.done(node.name, "already alive")
            if to_start:
                _start(topology, [ray_node[n.name] for n in to_start], by_name, previous, settings, steps, started)
                table = _wait_alive(by_name[head_node.name], gcs, [ray_node[n.name] for n in to_start],
                                    settings.join_timeout_s, steps)
    except BaseException:
        _stop_quietly(started, settings)
        raise
    finally:
        _close(shells)
    return _record(topology, nodes, ray_node, table or [], previous, known_hosts, settings,
                   {s.target.name for s in started})


def _start(
    topology: Topology,
    to_start: list[Node],
    by_name: dict[str, Shell],
    previous: ClusterState | None,
    settings: RaySettings,
    steps: NodeSteps,
    started: list[Shell],
) -> None:
    head_node = next((n for n in to_start if n.name == topology.nodes[0].name), topology.nodes[0])
    gcs = _gcs_address(topology, settings)
    recorded = {n.name for n in previous.nodes} if previous else set()

    def check(node: Node) -> str:
        shell = by_name[node.name]
        if node.name in recorded:  # dead, but what remains of what we started there must go first
            steps.step(node.name, "stopping what is left of Ray")
            ray_bringup.stop(shell, settings)
        steps.step(node.name, "checking Ray and ports")
        ports = {settings.port: "Ray GCS", topology.engine.port: "engine"} if node is head_node else {}
        return ray_bringup.preflight(shell, ports)

    versions = dict(zip((n.name for n in to_start), _parallel(to_start, check)))
    head_version = versions.get(head_node.name) or ray_bringup.preflight(by_name[head_node.name], {})
    for node in to_start:
        if versions[node.name] != head_version:
            raise ClusterError(
                f"has Ray {versions[node.name]} but the head has {head_version}; install the same version on every node",
                node.name,
            )

    def start(node: Node) -> None:
        shell = by_name[node.name]
        if node is not head_node:  # a worker cut from the GCS would only time out joining
            steps.step(node.name, "checking the way to the head")
            _require_reach(shell, gcs)
        steps.step(node.name, "ray start" + (" --head" if node is head_node else ""))
        started.append(shell)
        ray_bringup.start(shell, node, settings, None if node is head_node else gcs)
        steps.step(node.name, "joining")

    if head_node in to_start:
        start(head_node)
    _parallel([n for n in to_start if n is not head_node], start)


def _record(
    topology: Topology,
    nodes: list[Node],
    ray_node: dict[str, Node],
    table: list[RayNode],
    previous: ClusterState | None,
    known_hosts: str | None,
    settings: RaySettings,
    started_now: set[str],
) -> ClusterState:
    alive = {n.ip: n for n in table if n.alive}
    before = {n.name: n for n in previous.nodes} if previous else {}
    now = time.time()
    state = ClusterState(
        topology=topology.name,
        gcs_address=_gcs_address(topology, settings),
        known_hosts=known_hosts,
        engine=previous.engine if previous else None,
        nodes=[
            NodeState(
                name=n.name,
                address=n.address,
                ssh_user=n.ssh.user,
                ssh_port=n.ssh.port,
                ssh_key=n.ssh.key,
                temp_dir=ray_bringup.temp_dir(settings, n),
                head=i == 0,
                node_id=alive[ip].node_id if (ip := ray_node[n.name].address) in alive else "",
                started_at=now if n.name in started_now or n.name not in before else before[n.name].started_at,
                ip="" if ip == n.address else ip,
            )
            for i, n in enumerate(nodes)
        ],
    )
    cluster_state.save(state)
    return state


def _state_of(topology: Topology | str) -> ClusterState:
    name = topology if isinstance(topology, str) else topology.name
    found = cluster_state.load(name)
    if found is None:
        raise ClusterError(
            f"no cluster {name!r} was brought up from here (no {cluster_state.state_path(name)}); nothing to do"
        )
    return found


def _node_targets(current: ClusterState) -> list[Target]:
    return [Target(n.name, n.address, n.ssh_user, n.ssh_port, n.ssh_key, i) for i, n in enumerate(current.nodes)]


def down_cluster(
    topology: Topology | str, known_hosts: str | None = None, settings: RaySettings | None = None
) -> list[str]:
    """`ray stop` on every node that `up` recorded (workers first, then the head); returns their names.

    Nodes that cannot be reached stay on record and are named in the ClusterError; the
    others are stopped all the same, so `down` once they are back finishes the job.
    """
    settings = settings or RaySettings()
    current = _state_of(topology)
    known_hosts = known_hosts or current.known_hosts
    targets = _node_targets(current)

    def stop(target: Target) -> ClusterError | None:
        try:
            with connect(target, known_hosts) as shell:
                ray_bringup.stop(shell, settings)
                ray_bringup.remove_token(shell)
        except ClusterError as err:
            return err
        return None

    workers = [t for t, n in zip(targets, current.nodes) if not n.head]
    heads = [t for t, n in zip(targets, current.nodes) if n.head]
    results = dict(zip(workers, _parallel(workers, stop)))
    results.update(zip(heads, _parallel(heads, stop)))
    errors = {t.name: err for t, err in results.items() if err is not None}
    names = [t.name for t in targets]
    if errors:
        current.nodes = [n for n in current.nodes if n.name in errors]
        cluster_state.save(current)
        failed = [n for n in names if n in errors]
        done = [n for n in names if n not in errors]
        raise ClusterError(
            f"Ray stopped on {', '.join(done) or 'no node'}; could not stop {', '.join(failed)}: "
            f"{'; '.join(str(errors[n]) for n in failed)}; run `nemodeploy down {current.topology}` again once "
            f"{'it is' if len(failed) == 1 else 'they are'} reachable"
        )
    cluster_state.forget(current.topology)
    secrets.forget_ray_token(current.topology)
    return names


def cluster_status(
    topology: Topology, known_hosts: str | None = None, settings: RaySettings | None = None
) -> ClusterStatus:
    """Which nodes the Ray GCS reports alive, with their resources, and the recorded engine's health.

    Every node the GCS lists alive is also asked, over SSH and in parallel, to connect to the
    head's GCS port (bounded: PROBE_TIMEOUT_S each); one that cannot is `cut-off`.
    """
    settings = settings or RaySettings()
    nodes = _nodes(topology)
    recorded = cluster_state.load(topology.name)
    known_hosts = known_hosts or (recorded.known_hosts if recorded else None)
    gcs = recorded.gcs_address if recorded else _gcs_address(topology, settings)

    def table_of_head() -> list[RayNode] | None:
        with connect(_target(nodes[0], 0), known_hosts) as head:
            return ray_bringup.list_nodes(head, gcs)

    def probe(i: int) -> tuple[bool, str]:
        """(cut off, why) for node i; not cut off, with the reason, when it cannot be asked."""
        try:
            with connect(_target(nodes[i], i), known_hosts, timeout=PROBE_TIMEOUT_S * 2) as shell:
                why = _cut_off(shell, gcs)
        except ClusterError as err:
            return False, f"not checked: {err}"
        return why is not None, why or ""

    with ThreadPoolExecutor(max_workers=min(16, len(nodes))) as pool:  # the probes run while the GCS answers
        probes = [pool.submit(probe, i) for i in range(1, len(nodes))]
        table = table_of_head()
        reach = [(False, ""), *(f.result() for f in probes)]
    statuses = []
    ray_ip = {n.name: n.ray_ip for n in recorded.nodes} if recorded else {}
    for node, (cut, why) in zip(nodes, reach):
        rows = [r for r in table or [] if r.ip == ray_ip.get(node.name, node.address)]
        row = next((r for r in rows if r.alive), rows[-1] if rows else None)
        state = "absent" if row is None else "alive" if row.alive else "dead"
        statuses.append(NodeStatus(node.name, node.address, "cut-off" if state == "alive" and cut else state,
                                   row.node_id if row else "", row.resources if row and row.alive else {}, why))
    engine = _engine_health(recorded.engine) if recorded and recorded.engine else None
    return ClusterStatus(topology.name, gcs, table is not None, statuses, engine)


def _engine_health(engine: cluster_state.EngineRecord) -> EngineStatus:
    try:
        with urllib.request.urlopen(engine.health_url, timeout=5) as response:
            return EngineStatus(engine.kind, engine.health_url, response.status == 200, f"HTTP {response.status}")
    except urllib.error.HTTPError as err:
        return EngineStatus(engine.kind, engine.health_url, False, f"HTTP {err.code}")
    except (urllib.error.URLError, OSError) as err:
        return EngineStatus(engine.kind, engine.health_url, False, str(getattr(err, "reason", err)))


def fetch_logs(
    topology: Topology, node_name: str, dest: str | Path, known_hosts: str | None = None, settings: RaySettings | None = None
) -> Path:
    """Copy the node's current Ray session logs to dest/<node>/; returns that folder."""
    settings = settings or RaySettings()
    nodes = _nodes(topology)
    index = next((i for i, n in enumerate(nodes) if n.name == node_name), None)
    if index is None:
        raise ClusterError(f"no node {node_name!r} in topology {topology.name!r}; nodes: {', '.join(n.name for n in nodes)}")
    node = nodes[index]
    recorded = cluster_state.load(topology.name)
    known_hosts = known_hosts or (recorded.known_hosts if recorded else None)
    temp = next((n.temp_dir for n in recorded.nodes if n.name == node_name), None) if recorded else None
    remote = f"{temp or ray_bringup.temp_dir(settings, node)}/session_latest/logs"
    local = Path(dest).expanduser() / node_name
    with connect(_target(node, index), known_hosts) as shell:
        shell.fetch_tree(remote, local)
    return local
