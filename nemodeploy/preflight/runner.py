"""Run preflight: ONE probe process per node (over one SSH command), all nodes at once, then judge here.

1. every node opens its probe session and reports its `facts` (each also starts its port responder);
2. every node measures the network (`net`) to the peers chosen for it, while all responders listen;
3. the sessions close: each probe, and the responder in it, exits. Nothing is left running.

The pairwise part is bounded: each node probes the head and the PEER_SAMPLE nodes after it in
topology order (a ring), so every node is probed by as many peers as it probes, and a node's
links can be told from its peers' (checks.network.blamed) without n^2 probes. Up to
PEER_SAMPLE + 1 nodes every pair is probed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from nemodeploy.preflight.checks import run_checks
from nemodeploy.preflight.context import Context, Thresholds
from nemodeploy.preflight.env import emitted_env, measured_topology
from nemodeploy.preflight.result import CheckResult, judge
from nemodeploy.preflight.transport import Local, Remote, Session, Transport, TransportError
from nemodeploy.topology.schema import Node, Topology

PROBE_SOURCE = (Path(__file__).parent / "probe.py").read_text()
PROBE_TTL_S = 180.0  # a probe outlives its controller by at most this much (it exits when its session closes)
FACTS_TIMEOUT_S = 90.0
NET_TIMEOUT_S = 60.0
MAX_PARALLEL = 64
PEER_SAMPLE = 4

Progress = Callable[[str, str], None]  # (node, what it is doing now)


@dataclass
class Report:
    results: list[CheckResult]
    env: dict[str, dict[str, str]]
    seconds: float
    nodes: list[str] = field(default_factory=list)
    measured: Topology | None = None  # the topology as measured (env.measured_topology); None when no node answered

    def to_dict(self) -> dict:
        return {"checks": [r.to_dict() for r in self.results], "env": self.env, "seconds": round(self.seconds, 2)}


@dataclass(frozen=True)
class Options:
    python: str = "auto"  # the interpreter on remote nodes (see transport.AUTO_PYTHON)
    known_hosts: str | None = None
    accept_new_host_keys: bool = False
    bandwidth_seconds: float = 0.5  # 0: no bandwidth sample
    thresholds: Thresholds = field(default_factory=Thresholds)
    network_only: bool = False  # only what `up` needs: route, MTU, RDMA, ports, latency (checks.network.FOR_UP)
    peer_sample: int = PEER_SAMPLE


def _parallel(items: list, work: Callable) -> list:
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(items))) as pool:
        return list(pool.map(work, items))


def probe_peers(nodes: list[Node], node: Node, sample: int) -> list[Node]:
    """Whom `node` probes: the head, and the `sample` nodes after it in the ring of the others."""
    head, others = nodes[0], nodes[1:]
    ring = others[others.index(node) + 1:] + others[:others.index(node)] if node is not head else others
    return ([head] if node is not head else []) + ring[:sample]


def _connect(node: Node, index: int, options: Options, local: bool) -> Transport:
    return Local() if local else Remote(node, index, options.python, options.known_hosts, options.accept_new_host_keys)


def run_preflight(
    topology: Topology,
    plan,
    options: Options = Options(),
    local: bool = False,
    progress: Progress = lambda node, what: None,
) -> Report:
    """Measure every node of the topology and judge it; unreachable nodes become a failed `reach` check."""
    start = time.monotonic()
    ctx = Context(topology, plan, options.thresholds, network_only=options.network_only)
    nodes = list(topology.nodes)
    head = nodes[0]
    port_specs = ctx.ports()
    failures: dict[str, str] = {}
    transports: dict[str, Transport] = {}
    sessions: dict[str, Session] = {}

    def gather(item: tuple[int, Node]) -> None:
        index, node = item
        try:
            progress(node.name, "connecting")
            transport = transports[node.name] = _connect(node, index, options, local)
            progress(node.name, "measuring the node")
            session = sessions[node.name] = transport.open(
                [transport.python, "-c", PROBE_SOURCE, str(PROBE_TTL_S)], "the preflight probe")
            ports = {p.name: p.port for p in port_specs if node.name == head.name or not p.head_only}
            ctx.facts[node.name] = _answer(session.request({"mode": "facts", "args": {
                "head": head.address, "packages": ctx.packages(), "commands": ["ip"], "ports": ports,
                "checkpoint_dir": ctx.checkpoint_dir(), "network_only": options.network_only,
            }}, FACTS_TIMEOUT_S))
        except TransportError as err:
            failures[node.name] = str(err)
            progress(node.name, "unreachable")

    def measure_net(node: Node) -> None:
        progress(node.name, "measuring the network")
        peers = [_peer(ctx, peer, node) for peer in probe_peers(reached, node, options.peer_sample)]
        following = reached[(reached.index(node) + 1) % len(reached)]
        sample = options.bandwidth_seconds > 0 and following is not node
        try:
            ctx.net[node.name] = _answer(sessions[node.name].request({"mode": "net", "args": {
                "peers": peers, "bandwidth_to": _peer(ctx, following, node) if sample else None,
                "bandwidth_seconds": options.bandwidth_seconds,
            }}, NET_TIMEOUT_S))
        except TransportError as err:
            failures[node.name] = str(err)
        progress(node.name, "done")

    def close(name: str) -> None:
        if name in sessions:
            sessions[name].close()
        transports[name].close()

    try:
        _parallel(list(enumerate(nodes)), gather)
        reached = [n for n in nodes if n.name in ctx.facts]
        _parallel(reached, measure_net)
    finally:
        _parallel(list(transports), close)
    reached = [n for n in nodes if n.name in ctx.facts and n.name in ctx.net]
    ctx.topology = topology.model_copy(update={"nodes": reached}) if reached else topology
    results = run_checks(ctx, options.network_only) if reached else []
    results += [judge(name, "reach", False, why, "the probe runs on the node", "error",
                      "fix what the message says, then run preflight again") for name, why in failures.items()]
    order = {n.name: i for i, n in enumerate(nodes)}
    results.sort(key=lambda r: order[r.node])  # stable: per node, in check order
    env = emitted_env(ctx) if reached else {}
    return Report(results, env, time.monotonic() - start, [n.name for n in nodes], measured_topology(ctx) if reached else None)


def _answer(reply: dict) -> dict:
    if "error" in reply:
        raise TransportError(f"the preflight probe failed ({reply.get('mode')}): {reply['error']}")
    return reply["result"]


def _peer(ctx: Context, peer: Node, me: Node) -> dict:
    """What `me` needs to probe `peer`: the address it will really use, its ports, the MTU both ends should carry.

    A port the responder could not bind (busy: on a running cluster, Ray's own) is probed all the
    same: whatever listens there answers the connect, and reachability is what is measured.
    """
    responder = ctx.facts[peer.name]["responder"]
    busy = {p.name: p.port for p in ctx.ports() if p.name in responder["busy"]}
    mtus = [nic.mtu for nic in (ctx.socket_nic(peer), ctx.socket_nic(me)) if nic is not None]
    return {"name": peer.name, "address": ctx.address(peer), "ports": {**busy, **responder["ports"]}, "foreign": list(busy),
            "sink": responder["sink"], "udp": responder["udp"], "mtu": min(mtus) if mtus else 1500}
