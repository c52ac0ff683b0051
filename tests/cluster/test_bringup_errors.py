"""Every way bring-up can be refused: one ClusterError naming the node and the fix, nothing left running."""

from __future__ import annotations

import subprocess
import time

import pytest

from nemodeploy.cluster import lifecycle, ssh, testhosts
from nemodeploy.cluster.errors import ClusterError
from nemodeploy.topology.loader import loads

pytestmark = pytest.mark.netns


@pytest.fixture
def up_fails(testbed, ray_settings, ray_processes):
    """up_fails(topology, known_hosts=None): the ClusterError's message, after checking nothing runs."""

    def attempt(topology, known_hosts=None) -> str:
        with pytest.raises(ClusterError) as raised:
            lifecycle.up_cluster(topology, known_hosts=known_hosts or testbed.known_hosts_path, settings=ray_settings)
        for host in testbed.hosts:
            assert ray_processes(host) == [], f"{host.name} has Ray running after a refused bring-up"
        return str(raised.value)

    return attempt


def _edited(testbed, old: str, new: str):
    """The test topology with one piece of text replaced."""
    text = testbed.topology_yaml("nd-errors")
    assert old in text
    return loads(text.replace(old, new, 1))


def test_unknown_host_key_is_refused_then_accepted_on_request(testbed, up_fails, tmp_path):
    known = tmp_path / "known_hosts"
    topology = loads(testbed.topology_yaml("nd-errors"))
    message = up_fails(topology, known_hosts=str(known))
    assert message.startswith("node h1:") and "--accept-new-host-keys" in message and "ssh-keyscan" in message

    h1 = testbed.hosts[0]
    target = ssh.Target("h1", h1.ip, key=h1.key_path)
    with ssh.connect(target, known, accept_new_host_keys=True) as shell:
        assert shell.check("hostname").out.strip() == "h1"
    assert known.read_text().split()[:3] == h1.known_hosts_line.split()[:3]
    ssh.connect(target, known).close()  # now known: no flag needed


def test_changed_host_key_is_always_refused(testbed, tmp_path):
    h1, h2, _ = testbed.hosts
    forged = tmp_path / "known_hosts"
    forged.write_text(h2.known_hosts_line.replace(h2.ip, h1.ip, 1))
    with pytest.raises(ClusterError, match=r"node h1: .*CHANGED.*ssh-keygen -R"):
        ssh.connect(ssh.Target("h1", h1.ip, key=h1.key_path), forged, accept_new_host_keys=True)


def test_wrong_key_names_the_key_and_the_field(testbed, up_fails, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    h2 = testbed.hosts[1]
    topology = _edited(testbed, f"address: {h2.ip}\n    ssh: {{user: root, port: 22, key: {h2.key_path}", f"address: {h2.ip}\n    ssh: {{user: root, port: 22, key: {other}")
    message = up_fails(topology)
    assert message.startswith("node h2:") and str(other) in message and "nodes[1].ssh.key" in message


def test_refused_connection_asks_about_sshd_and_port(testbed, up_fails):
    h3 = testbed.hosts[2]
    testhosts.stop_sshd(testbed, h3)
    try:
        message = up_fails(loads(testbed.topology_yaml("nd-errors")))
    finally:
        testhosts.start_sshd(testbed, h3)
    assert message.startswith("node h3:") and "refused" in message and "sshd" in message and "nodes[2].ssh.port" in message


def test_unreachable_address_asks_to_check_it(testbed, up_fails):
    nobody = testbed.unused_ip()
    topology = _edited(testbed, f"address: {testbed.hosts[2].ip}", f"address: {nobody}")
    started = time.monotonic()
    message = up_fails(topology)
    assert message.startswith("node h3:") and nobody in message and "nodes[2].address" in message
    assert time.monotonic() - started < 30


def test_ray_port_in_use_on_the_head_is_found_before_starting(testbed, up_fails):
    h1 = testbed.hosts[0]
    listener = subprocess.Popen(
        testhosts.host_argv(h1, ["python3", "-c", "import socket,sys; s=socket.socket(); s.bind(('0.0.0.0',6379)); s.listen(); sys.stdin.read()"]),
        stdin=subprocess.PIPE,
    )  # it ends when its stdin closes (killing nsenter would not end its child in the host)
    try:
        deadline = time.monotonic() + 10
        while "6379" not in testhosts.run_in_host(h1, ["ss", "-ltnH"]).stdout:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        message = up_fails(loads(testbed.topology_yaml("nd-errors")))
    finally:
        listener.stdin.close()
        listener.wait(timeout=10)
    assert message.startswith("node h1:") and "port 6379 (Ray GCS)" in message and "already in use" in message


def test_a_worker_that_fails_to_start_rolls_back_the_others(testbed, up_fails):
    h3 = testbed.hosts[2]
    # A file where h3's Ray temp dir must go: the checks pass, `ray start` on h3 fails after the head started.
    testhosts.run_in_host(h3, ["sh", "-c", "mkdir -p /tmp/ndray && rm -rf /tmp/ndray/h3 && touch /tmp/ndray/h3"], check=True)
    try:
        message = up_fails(loads(testbed.topology_yaml("nd-errors")))
    finally:
        testhosts.run_in_host(h3, ["rm", "-rf", "/tmp/ndray"], check=True)
    assert message.startswith("node h3: `ray start` (worker) failed")
