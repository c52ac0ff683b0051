"""Run preflight: the probe on every node at once, in three rounds, then judge on this machine.

1. `facts` on every node (each also starts its short-lived port responder);
2. `net` on every node, with the list of peers and their responders' ports;
3. `kill` the responders. Nothing is left running: a responder that is not killed exits by itself.

Every round runs on all nodes in parallel, so a run over 16 nodes takes about as long as over one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from nemodeploy.preflight.checks import run_checks
from nemodeploy.preflight.context import Context, Thresholds
from nemodeploy.preflight.env import emitted_env
from nemodeploy.preflight.result import CheckResult, judge
from nemodeploy.preflight.transport import Local, Remote, Transport, TransportError
from nemodeploy.topology.schema import Node, Topology

PROBE_SOURCE = (Path(__file__).parent / "probe.py").read_text()
RESPONDER_TTL_S = 120.0
FACTS_TIMEOUT_S = 90.0
NET_TIMEOUT_S = 60.0
MAX_PARALLEL = 64

Progress = Callable[[str, str], None]  # (node, what it is doing now)


@dataclass
class Report:
    results: list[CheckResult]
    env: dict[str, dict[str, str]]
    seconds: float
    nodes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"checks": [r.to_dict() for r in self.results], "env": self.env, "seconds": round(self.seconds, 2)}


@dataclass(frozen=True)
class Options:
    python: str = "auto"  # the interpreter on remote nodes (see transport.AUTO_PYTHON)
    known_hosts: str | None = None
    accept_new_host_keys: bool = False
    bandwidth_seconds: float = 0.5
    thresholds: Thresholds = field(default_factory=Thresholds)


def _probe(transport: Transport, mode: str, args: dict, timeout: float) -> dict:
    rc, out, err = transport.run([transport.python, "-c", PROBE_SOURCE, mode, json.dumps(args)], timeout)
    if rc != 0:
        tail = (err.strip() or out.strip()).splitlines()[-1:] or [f"exit {rc}"]
        raise TransportError(f"the preflight probe failed ({mode}): {tail[0]}")
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise TransportError(f"the preflight probe ({mode}) printed no result: {out.strip()[-200:]!r}") from None


def _parallel(items: list, work: Callable) -> list:
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(items))) as pool:
        return list(pool.map(work, items))


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
    ctx = Context(topology, plan, options.thresholds)
    nodes = list(topology.nodes)
    head = nodes[0]
    port_specs = ctx.ports()
    failures: dict[str, str] = {}
    transports: dict[str, Transport] = {}

    def gather(item: tuple[int, Node]) -> None:
        index, node = item
        try:
            progress(node.name, "connecting")
            transport = transports[node.name] = _connect(node, index, options, local)
            progress(node.name, "measuring the node")
            ports = {p.name: p.port for p in port_specs if node.name == head.name or not p.head_only}
            ctx.facts[node.name] = _probe(transport, "facts", {
                "head": head.address, "packages": ctx.packages(), "commands": ["ip"], "ports": ports, "ttl": RESPONDER_TTL_S,
                "checkpoint_dir": ctx.checkpoint_dir(),
            }, FACTS_TIMEOUT_S)
        except TransportError as err:
            failures[node.name] = str(err)
            progress(node.name, "unreachable")

    def measure_net(node: Node) -> None:
        progress(node.name, "measuring the network")
        peers = [_peer(ctx, peer, node) for peer in reached if peer.name != node.name]
        following = reached[(reached.index(node) + 1) % len(reached)]
        try:
            ctx.net[node.name] = _probe(transports[node.name], "net", {
                "peers": peers, "bandwidth_to": _peer(ctx, following, node) if following != node else None,
                "bandwidth_seconds": options.bandwidth_seconds,
            }, NET_TIMEOUT_S)
        except TransportError as err:
            failures[node.name] = str(err)
        progress(node.name, "done")

    def stop(node: Node) -> None:
        try:
            transports[node.name].run(["kill", str(ctx.facts[node.name]["responder"]["pid"])], 30)
        except TransportError:
            pass  # the responder exits by itself after its TTL
        finally:
            transports[node.name].close()

    try:
        _parallel(list(enumerate(nodes)), gather)
        reached = [n for n in nodes if n.name in ctx.facts]
        _parallel(reached, measure_net)
    finally:
        _parallel([n for n in nodes if n.name in ctx.facts], stop)
        for name, transport in transports.items():
            if name not in ctx.facts:
                transport.close()
    reached = [n for n in nodes if n.name in ctx.facts and n.name in ctx.net]
    ctx.topology = topology.model_copy(update={"nodes": reached}) if reached else topology
    results = run_checks(ctx) if reached else []
    results += [judge(name, "reach", False, why, "the probe runs on the node", "error",
                      "fix what the message says, then run preflight again") for name, why in failures.items()]
    order = {n.name: i for i, n in enumerate(nodes)}
    results.sort(key=lambda r: order[r.node])  # stable: per node, in check order
    return Report(results, emitted_env(ctx) if reached else {}, time.monotonic() - start, [n.name for n in nodes])


def _peer(ctx: Context, peer: Node, me: Node) -> dict:
    """What `me` needs to probe `peer`: its address, its responder's ports, the MTU both ends should carry."""
    responder = ctx.facts[peer.name]["responder"]
    mtus = [nic.mtu for nic in (ctx.socket_nic(peer), ctx.socket_nic(me)) if nic is not None]
    return {"name": peer.name, "address": peer.address, "ports": responder["ports"], "sink": responder["sink"],
            "udp": responder["udp"], "mtu": min(mtus) if mtus else 1500}
