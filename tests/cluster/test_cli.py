"""The developer commands: `testhosts up` prints a usable topology, `testhosts down` removes everything."""

from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner

from nemodeploy.cluster import testhosts
from nemodeploy.cli import cluster as cluster_cli
from nemodeploy.topology.loader import loads

pytestmark = pytest.mark.netns


def test_testhosts_up_prints_a_topology_and_down_removes_them(testbed):
    runner = CliRunner()
    up = runner.invoke(cluster_cli.testhosts, ["up", "2", "--mtu", "9000", "--name", "ndc", "--subnet", "10.213.3.0/24"])
    try:
        assert up.exit_code == 0, up.output
        topology = loads(up.stdout)
        assert [n.address for n in topology.nodes] == ["10.213.3.1", "10.213.3.2"]
        assert topology.nodes[0].nics[0].mtu == 9000
        assert "NEMODEPLOY_KNOWN_HOSTS" in up.stderr
        again = runner.invoke(cluster_cli.testhosts, ["up", "1", "--name", "ndc", "--subnet", "10.213.3.0/24"])
        assert again.exit_code == 1 and "already exist" in again.stderr
    finally:
        down = runner.invoke(cluster_cli.testhosts, ["down", "--name", "ndc"])
    assert down.exit_code == 0, down.output
    assert "ndc-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert testhosts.load("ndc") is None
