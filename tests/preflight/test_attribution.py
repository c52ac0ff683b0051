"""Which node a bad pairwise measurement is blamed on: the one that more than half of whose links are bad."""

from __future__ import annotations

from nemodeploy.preflight.checks.network import blamed
from nemodeploy.preflight.result import CheckResult, exit_code


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


def _result(status, severity):
    return CheckResult("n", "c", status, "", "", severity)


def test_exit_code_by_worst_severity():
    assert exit_code([_result("ok", "error"), _result("warn", "warning")]) == 0
    assert exit_code([_result("warn", "warning")], strict=True) == 1
    assert exit_code([_result("fail", "error"), _result("skip", "error")]) == 1
