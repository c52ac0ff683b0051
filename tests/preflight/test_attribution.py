"""Which node a bad pairwise measurement is blamed on: the one that more than half of whose links are bad."""

from __future__ import annotations

import pytest

from nemodeploy.preflight.checks.network import blamed
from nemodeploy.preflight.result import CheckResult, exit_code
from nemodeploy.preflight.runner import probe_peers
from nemodeploy.topology.schema import Accelerators, Node


def mesh(nodes, bad_node=None):
    return [(a, b, bad_node in (a, b)) for a in nodes for b in nodes if a != b]


def test_a_bad_host_is_blamed_and_its_peers_are_not():
    assert blamed(mesh(["h1", "h2", "h3", "h4"], "h3")) == {"h3": (6, 6)}


def test_healthy_mesh_blames_nobody():
    assert blamed(mesh(["h1", "h2", "h3"])) == {}


def test_two_nodes_cannot_be_told_apart():
    assert set(blamed(mesh(["a", "b"], "b"))) == {"a", "b"}


def test_inbound_only_blames_the_receiver():
    links = [("h1", "h3", True), ("h2", "h3", True), ("h3", "h1", False), ("h1", "h2", False)]
    assert blamed(links, outbound=False) == {"h3": (2, 2)}


def sampled(count: int, bad_node: str | None = None, sample: int = 4) -> list[tuple[str, str, bool]]:
    """The links preflight really probes on `count` nodes (runner.probe_peers), bad where they touch `bad_node`."""
    nodes = [Node(name=f"h{i}", address=f"10.0.0.{i}", accelerators=Accelerators(kind="cpu")) for i in range(1, count + 1)]
    return [(me.name, peer.name, bad_node in (me.name, peer.name)) for me in nodes for peer in probe_peers(nodes, me, sample)]


def test_small_sets_probe_every_pair_both_ways():
    for count in range(2, 6):
        assert sorted((a, b) for a, b, _ in sampled(count)) == sorted((a, b) for a, b, _ in mesh([f"h{i}" for i in range(1, count + 1)]))


@pytest.mark.parametrize("count", [6, 16, 64])
def test_large_sets_probe_a_bounded_ring_and_the_head(count):
    links = sampled(count)
    assert len(links) <= count * 5  # n, not n^2
    assert {a for a, b, _ in links if b == "h1"} == {f"h{i}" for i in range(2, count + 1)}  # everyone reaches the head
    inbound = {f"h{i}": sum(b == f"h{i}" for _, b, _ in links) for i in range(2, count + 1)}
    assert min(inbound.values()) >= 4  # every node is probed by as many peers as it probes


@pytest.mark.parametrize("count", [6, 16, 64])
def test_under_sampling_a_bad_host_is_still_the_only_one_blamed(count):
    for bad in ("h1", "h2", f"h{count // 2}", f"h{count}"):  # the head, the first and a middle and the last worker
        assert set(blamed(sampled(count, bad))) == {bad}, bad


def _result(status, severity):
    return CheckResult("n", "c", status, "", "", severity)


def test_exit_code_by_worst_severity():
    assert exit_code([_result("ok", "error"), _result("warn", "warning")]) == 0
    assert exit_code([_result("warn", "warning")], strict=True) == 1
    assert exit_code([_result("fail", "error"), _result("skip", "error")]) == 1
