"""Per-node network truth: the route to the head, MTU end to end, RDMA, ports, latency, bandwidth.

Pairwise measurements are attributed to a node only when MORE THAN HALF of that node's links
are bad: a fault on one node's link makes all of its links bad but only one link of every other
node. With two nodes the two ends cannot be told apart, and both are flagged.
"""

from __future__ import annotations

from collections import defaultdict

from nemodeploy.preflight import hardware
from nemodeploy.preflight.context import Context
from nemodeploy.preflight.result import CheckResult, judge, skipped
from nemodeploy.topology import netenv

Link = tuple[str, str, bool]  # (from, to, bad)


def blamed(links: list[Link], *, inbound: bool = True, outbound: bool = True) -> dict[str, tuple[int, int]]:
    """node -> (bad, total) over the links counted for it, for the nodes that more than half are bad on."""
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for src, dst, bad in links:
        for node, counts in ((src, outbound), (dst, inbound)):
            if counts:
                tally[node][0] += bad
                tally[node][1] += 1
    return {n: (b, t) for n, (b, t) in tally.items() if b * 2 > t}


def _peers(ctx: Context, name: str) -> dict[str, dict]:
    return ctx.net.get(name, {}).get("peers", {})


def _single(ctx: Context, name: str) -> list[CheckResult] | None:
    if len(ctx.nodes) > 1:
        return None
    return [skipped(n.name, name, "one node: no link between nodes to measure") for n in ctx.nodes]


def route(ctx: Context) -> list[CheckResult]:
    """The interface and source address the kernel really uses towards the head (`ip route get`)."""
    out = []
    for node in ctx.nodes:
        measured = ctx.facts[node.name]["route"]
        nic = netenv.socket_nic(node)
        expected = f"via {nic.name if nic else 'any interface'} from {node.address}"
        if "ip" in ctx.facts[node.name]["missing_commands"]:
            out.append(judge(node.name, "route", False, "`ip` is not installed: the route cannot be read", expected,
                             "error", "apt-get install iproute2 (or dnf install iproute)"))
            continue
        if not measured:
            out.append(judge(node.name, "route", False, f"no route to {ctx.head.address}", expected, "error",
                             f"ip route get {ctx.head.address}  # add a route to the head's network"))
            continue
        held = measured["src"] == node.address and (nic is None or measured["dev"] == nic.name)
        # A route other than the topology's still works: `up` starts Ray and the engine on the measured one.
        out.append(judge(node.name, "route", held, f"via {measured['dev']} from {measured['src']}", expected, "warning",
                         f"`up` uses {measured['dev']} {measured['src']}; to match, set nodes[].nics[0].name to "
                         f"{measured['dev']} (or fix the routes: ip route get {ctx.head.address})"))
    return out


def mtu(ctx: Context) -> list[CheckResult]:
    """The MTU of the interface used, and a do-not-fragment echo at the topology's MTU to every peer."""
    links = [(src, dst, not r["df"]["ok"]) for src in _names(ctx) for dst, r in _peers(ctx, src).items()]
    bad = blamed(links)
    out = []
    for node in ctx.nodes:
        nic = ctx.socket_nic(node)
        if nic is None:
            out.append(skipped(node.name, "mtu", "the topology lists no NIC (nodes[].nics) to take the MTU from"))
            continue
        dev = (ctx.facts[node.name]["route"] or {}).get("dev")
        local = ctx.facts[node.name]["links"].get(dev)
        failing = [dst for dst, r in _peers(ctx, node.name).items() if not r["df"]["ok"]]
        measured = f"{dev} mtu {local}" + (f"; unfragmented {nic.mtu} B fails to {', '.join(failing)}" if failing else "")
        held = local is not None and local >= nic.mtu and node.name not in bad
        out.append(judge(node.name, "mtu", held, measured, f"{nic.mtu} on every port of the path", "error",
                         f"ip link set dev {dev} mtu {nic.mtu} (persist: ansible/prepare.yml); and on the switch ports"))
    return out


def rdma(ctx: Context) -> list[CheckResult]:
    out = []
    for node in ctx.nodes:
        rails = [nic for nic in node.nics if nic.rdma]
        if not rails:
            out.append(skipped(node.name, "rdma", "no RDMA NIC in the topology", "error"))
            continue
        ports = hardware.rdma_ports(ctx.facts[node.name]["rdma"])
        active = [p for p in ports if p.state == "ACTIVE"]
        named = [nic.hca for nic in rails if nic.hca]
        missing = [h for h in named if h not in {p.device for p in active}]
        no_gid = [p.device for p in active if p.link_layer == "Ethernet" and p.roce_v2_gid_index is None
                  and (not named or p.device in named)]
        measured = ", ".join(f"{p.device}:{p.port} {p.state} {p.link_layer}"
                             + (f" gid {p.roce_v2_gid_index}" if p.roce_v2_gid_index is not None else "") for p in ports) or "no RDMA device"
        held = bool(active) and not missing and not no_gid
        expected = f"{', '.join(named) or 'an RDMA port'} ACTIVE" + (", a RoCE v2 GID" if any(p.link_layer == "Ethernet" for p in ports) else "")
        out.append(judge(node.name, "rdma", held, measured, expected, "error",
                         "ibv_devinfo -v; check the cable and subnet manager (IB) or the IP on the RoCE netdev (show_gids)"))
    return out


def ports(ctx: Context) -> list[CheckResult]:
    """Every port the deployment listens on, reached from every other node (a firewall drops it silently)."""
    links: dict[str, list[Link]] = defaultdict(list)
    for src in _names(ctx):
        for dst, result in _peers(ctx, src).items():
            for port_name, r in result["ports"].items():
                links[port_name].append((src, dst, r["ms"] is None))
    inbound = {name: blamed(ls, outbound=False) for name, ls in links.items()}
    outbound = blamed([link for ls in links.values() for link in ls], inbound=False)
    out = []
    for node in ctx.nodes:
        responder = ctx.facts[node.name]["responder"]
        busy = {} if ctx.network_only else responder["busy"]
        problems = [f"{name} {_port(ctx, name)} in use ({why})" for name, why in busy.items()]
        for name, bad in inbound.items():
            if node.name in bad:
                port = responder["ports"].get(name, _port(ctx, name))
                problems.append(f"{name} {port} unreachable from {bad[node.name][0]}/{bad[node.name][1]} peers")
        if node.name in outbound:
            problems.append(f"cannot reach {outbound[node.name][0]}/{outbound[node.name][1]} peer ports")
        listening = ", ".join(f"{n} {p}" for n, p in sorted(responder["ports"].items()))
        out.append(judge(node.name, "ports", not problems, "; ".join(problems) or f"reachable: {listening}",
                         "every deployment port reachable from every node, none in use", "error",
                         "nft list ruleset  # allow the cluster's network: nft insert rule inet filter input ip saddr <subnet> accept; "
                         "stop what holds a busy port (ss -ltnp)"))
    return out


def _port(ctx: Context, name: str) -> int:
    return next(p.port for p in ctx.ports() if p.name == name)


def _latencies(ctx: Context) -> dict[tuple[str, str], float]:
    out = {}
    for src in _names(ctx):
        for dst, result in _peers(ctx, src).items():
            times = [r["ms"] for r in result["ports"].values() if r["ms"] is not None]
            if times:
                out[(src, dst)] = min(times)
    return out


def latency(ctx: Context) -> list[CheckResult]:
    """TCP connect time (one round trip) to every peer, the best of a few samples."""
    if (single := _single(ctx, "latency")) is not None:
        return single
    limit = ctx.thresholds.latency_ms
    times = _latencies(ctx)
    bad = blamed([(s, d, ms > limit) for (s, d), ms in times.items()])
    out = []
    for node in ctx.nodes:
        mine = {d: ms for (s, d), ms in times.items() if s == node.name}
        worst = max(mine.items(), key=lambda kv: kv[1], default=None)
        measured = f"worst {worst[1]:.2f} ms to {worst[0]}" if worst else "no peer answered"
        out.append(judge(node.name, "latency", bool(mine) and node.name not in bad, measured, f"<= {limit} ms round trip",
                         "warning", "tc qdisc show  # remove shaping (tc qdisc del dev <if> root); check the link and switch"))
    return out


def bandwidth(ctx: Context) -> list[CheckResult]:
    """A bounded TCP sample from each node to the next (a ring: every node sends once and receives once)."""
    if (single := _single(ctx, "bandwidth")) is not None:
        return single
    limit = ctx.thresholds.tcp_gbps
    slow_links = {pair for pair, ms in _latencies(ctx).items() if ms > ctx.thresholds.latency_ms}
    samples = {}
    for src in _names(ctx):
        sample = ctx.net.get(src, {}).get("bandwidth")
        if sample and (src, sample["to"]) not in slow_links:
            samples[(src, sample["to"])] = sample.get("gbps")
    bad = blamed([(s, d, g is None or g < limit) for (s, d), g in samples.items()])
    out = []
    for node in ctx.nodes:
        mine = {pair: g for pair, g in samples.items() if node.name in pair}
        if not mine:
            out.append(skipped(node.name, "bandwidth", "no sample: its links failed the latency check, so a sample would measure the delay"))
            continue
        measured = ", ".join(f"{s}->{d} {g:.1f} Gb/s" if g is not None else f"{s}->{d} failed" for (s, d), g in sorted(mine.items()))
        out.append(judge(node.name, "bandwidth", node.name not in bad, measured, f">= {limit} Gb/s single TCP stream", "warning",
                         "ethtool <if>  # check the negotiated speed; the route may use a slower port (see `route`)"))
    return out


def _names(ctx: Context) -> list[str]:
    return [n.name for n in ctx.nodes]


CHECKS = [route, mtu, rdma, ports, latency, bandwidth]
FOR_UP = [route, mtu, rdma, ports, latency]  # what `up` measures before it starts anything
