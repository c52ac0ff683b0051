"""A real 3-node Ray cluster over SSH on the test hosts: up, up again, status, logs, a fault, down.

One cluster for the module; the tests run in file order and each leaves it as the next expects.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from nemodeploy.cluster import lifecycle, state, testhosts
from nemodeploy.cluster.errors import ClusterError
from nemodeploy.cluster.ray_bringup import CLUSTER_ENV

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(testbed, topology, ray_settings):
    up = lifecycle.up_cluster(topology, known_hosts=testbed.known_hosts_path, settings=ray_settings)
    yield up
    if state.load(topology.name) is not None:
        lifecycle.down_cluster(topology.name, settings=ray_settings)


def _ray_pids(testbed) -> dict[str, set[str]]:
    return {
        h.name: set(testhosts.run_in_host(h, ["pgrep", "-f", "raylet|gcs_server|ray"]).stdout.split()) for h in testbed.hosts
    }


def test_up_brings_three_nodes_with_distinct_ips(cluster, testbed, topology):
    status = lifecycle.cluster_status(topology)
    assert status.all_alive
    assert [n.address for n in status.nodes] == [h.ip for h in testbed.hosts]
    assert len({n.node_id for n in status.nodes}) == 3
    assert all(n.resources["CPU"] == 1 for n in status.nodes)
    assert [n.node_id for n in cluster.nodes] == [n.node_id for n in status.nodes]
    json.dumps(status.to_dict())


def test_up_again_changes_nothing(cluster, testbed, topology, ray_settings):
    before = _ray_pids(testbed)
    again = lifecycle.up_cluster(topology, settings=ray_settings)
    assert [n.node_id for n in again.nodes] == [n.node_id for n in cluster.nodes]
    assert [n.started_at for n in again.nodes] == [n.started_at for n in cluster.nodes]
    assert _ray_pids(testbed) == before


def test_logs_of_a_node_are_fetched(cluster, topology, tmp_path):
    folder = lifecycle.fetch_logs(topology, "h2", tmp_path)
    assert folder == tmp_path / "h2"
    assert (folder / "raylet.out").stat().st_size > 0
    with pytest.raises(ClusterError, match="no node 'h9'"):
        lifecycle.fetch_logs(topology, "h9", tmp_path)


_PLACE = """
import json, sys, ray
from nemodeploy.cluster.placement import rank_placement_group, rank_strategy
gcs, me, *ranks = sys.argv[1:]
ray.init(address=gcs, _node_ip_address=me, log_to_driver=False)

@ray.remote(num_cpus=1)
class Rank:
    def where(self):
        return ray.util.get_node_ip_address()

group = rank_placement_group(ranks)
actors = [Rank.options(scheduling_strategy=rank_strategy(group, i)).remote() for i in range(len(ranks))]
print(json.dumps(ray.get([a.where.remote() for a in actors])))
"""


def test_placement_group_puts_each_rank_on_its_planned_host(cluster, testbed):
    h1, h2, h3 = testbed.hosts
    ranks = [h3.ip, h1.ip, h2.ip]
    driver = testhosts.run_in_host(h1, [sys.executable, "-c", _PLACE, cluster.gcs_address, h1.ip, *ranks], timeout=120,
                                   env={**os.environ, **CLUSTER_ENV})
    assert driver.returncode == 0, driver.stderr[-2000:]
    assert json.loads(driver.stdout.strip().splitlines()[-1]) == ranks


def test_killed_raylet_shows_dead_and_up_brings_it_back(cluster, testbed, topology, ray_settings):
    h3 = testbed.hosts[2]
    testhosts.run_in_host(h3, ["pkill", "-KILL", "-x", "raylet"], check=True)
    deadline = time.monotonic() + 60
    while (status := lifecycle.cluster_status(topology)).nodes[2].state != "dead":
        assert time.monotonic() < deadline, "the killed node never showed dead"
        time.sleep(1)
    assert [n.state for n in status.nodes] == ["alive", "alive", "dead"]

    healed = lifecycle.up_cluster(topology, settings=ray_settings)
    assert lifecycle.cluster_status(topology).all_alive
    assert [n.node_id for n in healed.nodes][:2] == [n.node_id for n in cluster.nodes][:2]
    assert healed.nodes[2].node_id != cluster.nodes[2].node_id  # it rejoined as a new node


def test_link_down_shows_dead_within_seconds_and_up_brings_it_back(cluster, testbed, topology, ray_settings):
    h2 = testbed.hosts[1]
    before = lifecycle.cluster_status(topology).nodes[1].node_id
    testhosts.set_link(h2, up=False)
    try:
        started, deadline = time.monotonic(), time.monotonic() + 45
        while lifecycle.cluster_status(topology).nodes[1].state != "dead":
            assert time.monotonic() < deadline, "a host without its link never showed dead"
            time.sleep(1)
        assert time.monotonic() - started < 30  # the head's fast health checks, not Ray's ~64 s default
    finally:
        testhosts.set_link(h2, up=True)
    healed = lifecycle.up_cluster(topology, settings=ray_settings)
    assert lifecycle.cluster_status(topology).all_alive
    assert healed.nodes[1].node_id != before


def test_down_stops_every_node_and_forgets_the_cluster(cluster, testbed, topology, ray_settings, ray_processes):
    stopped = lifecycle.down_cluster(topology, settings=ray_settings)
    assert stopped == ["h1", "h2", "h3"]
    for host in testbed.hosts:
        assert ray_processes(host) == [], f"Ray still runs in {host.name}"
    assert state.load(topology.name) is None
    assert not lifecycle.cluster_status(topology, known_hosts=testbed.known_hosts_path).ray_running
    with pytest.raises(ClusterError, match="no cluster 'nd-test' was brought up"):
        lifecycle.down_cluster(topology)
