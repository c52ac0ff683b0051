"""Lifecycle faults on the test hosts, through the commands a user runs.

- `down` while nodes' sshd is down stops Ray on the others, names the ones it could not reach
  (one line, exit 1), and a later `down` finishes the job, head or worker, without a traceback.
- A one-way partition (a worker cut from the head's GCS port, the head still reaching the worker)
  shows in `status` within 10 s, and `up` refuses to call that node alive.
- Each `ray start` makes a session folder on the node; old ones are removed, the newest kept.
"""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from nemodeploy.cli import main
from nemodeploy.cluster import lifecycle, state, testhosts
from nemodeploy.cluster.errors import ClusterError
from nemodeploy.topology.loader import loads

pytestmark = [pytest.mark.netns, pytest.mark.slow]

NAME = "nd-faults"
OLD_SESSIONS = [f"session_2020-01-0{d}_10-00-00_000000_{d}" for d in range(1, 6)]


@pytest.fixture
def topology_file(testbed, tmp_path):
    path = tmp_path / "faults.yaml"
    path.write_text(testbed.topology_yaml(NAME))
    return path


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def _one_line_failure(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    return lines[0]


def test_down_stops_what_it_reaches_and_a_later_down_finishes(testbed, topology_file, ray_settings, ray_processes):
    h1, h2, h3 = testbed.hosts
    topology = loads(topology_file.read_text())
    lifecycle.up_cluster(topology, known_hosts=testbed.known_hosts_path, settings=ray_settings)
    testhosts.stop_sshd(testbed, h1)
    testhosts.stop_sshd(testbed, h3)
    try:
        message = _one_line_failure(_cli("down", str(topology_file)))
        assert "Ray stopped on h2;" in message and "could not stop h1, h3" in message and "again" in message
        assert ray_processes(h2) == []
        assert ray_processes(h1) and ray_processes(h3), "unreachable nodes cannot have been stopped"

        testhosts.start_sshd(testbed, h1)  # the head is back, a worker still is not
        message = _one_line_failure(_cli("down", str(topology_file)))
        assert "Ray stopped on h1;" in message and "could not stop h3" in message
        assert ray_processes(h1) == []
    finally:
        testhosts.start_sshd(testbed, h1)
        testhosts.start_sshd(testbed, h3)
    last = _cli("down", str(topology_file))  # only a worker is left on record: no head to ask
    assert last.exit_code == 0, last.output
    assert "Ray stopped on h3" in last.stdout
    for host in testbed.hosts:
        assert ray_processes(host) == [], host.name
    assert state.load(NAME) is None


def test_a_one_way_partition_shows_in_status_within_10_s_and_stops_up(testbed, topology_file, ray_settings,
                                                                       ray_processes):
    h1, h2, _ = testbed.hosts
    topology = loads(topology_file.read_text())
    folder = f"{ray_settings.temp_root}/h2"

    def sessions() -> list[str]:
        listed = testhosts.run_in_host(h2, ["ls", "-A", folder]).stdout.split()
        return sorted(s for s in listed if s.startswith("session_2"))

    testhosts.run_in_host(h2, ["mkdir", "-p", *(f"{folder}/{s}/logs" for s in OLD_SESSIONS)], check=True)
    before = sessions()
    lifecycle.up_cluster(topology, known_hosts=testbed.known_hosts_path, settings=ray_settings)
    try:
        kept = sessions()
        assert len(before) > ray_settings.keep_sessions and len(kept) == ray_settings.keep_sessions
        assert kept[:-1] == before[-(ray_settings.keep_sessions - 1):]  # the newest old ones
        assert kept[-1] not in before and kept[-1] > before[-1]  # the session this `up` started

        testhosts.cut_from(h2, h1.ip, ray_settings.port)
        try:
            started = time.monotonic()
            status = _cli("status", str(topology_file), "--json")
            elapsed = time.monotonic() - started
            assert status.exit_code == 1, status.output
            nodes = {n["name"]: n for n in json.loads(status.stdout)["nodes"]}
            assert [nodes[n]["state"] for n in ("h1", "h2", "h3")] == ["alive", "cut-off", "alive"]
            assert f"cannot reach the head's Ray port {h1.ip}:{ray_settings.port}" in nodes["h2"]["detail"]
            assert elapsed < 10, f"status took {elapsed:.1f} s"
            print(f"status saw the one-way partition in {elapsed:.1f} s")

            with pytest.raises(ClusterError, match=f"node h2: cannot reach the head's Ray port {h1.ip}"):
                lifecycle.up_cluster(topology, settings=ray_settings)
        finally:
            testhosts.cut_from(h2, h1.ip, ray_settings.port, cut=False)
        assert lifecycle.cluster_status(topology).all_alive
    finally:
        down = _cli("down", str(topology_file))
    assert down.exit_code == 0, down.output
    for host in testbed.hosts:
        assert ray_processes(host) == [], host.name
