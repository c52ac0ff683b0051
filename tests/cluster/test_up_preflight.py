"""`up` measures the network first (preflight's network checks) and starts Ray and the engine on it.

Two test hosts; h2 also has a second link to the head (eth1, its own subnet) and a host route that
sends its traffic to the head over it: the kernel's truth differs from the topology (eth0). What
the started processes really see is read from the hosts: the raylet's /proc/<pid>/environ and the
STAND-IN vllm (tests/backends/standin_vllm.py: no GPU and no vLLM here) that records its own
environment. Everything else is real: sshd, Ray, the probe over SSH.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("paramiko", reason="the cluster extra is not installed (pip install -e .[cluster])")
pytest.importorskip("ray", reason="the cluster extra is not installed (pip install -e .[cluster])")

from click.testing import CliRunner  # noqa: E402

from nemodeploy.backends.vllm_launch import launch_folder  # noqa: E402
from nemodeploy.cli import main  # noqa: E402
from nemodeploy.cluster import lifecycle, state, testhosts  # noqa: E402
from nemodeploy.cluster.ray_bringup import RaySettings  # noqa: E402
from nemodeploy.topology.loader import loads  # noqa: E402

pytestmark = [pytest.mark.netns, pytest.mark.slow]

BED = os.environ.get("NEMODEPLOY_UP_PREFLIGHT_BED", "ndq")
SUBNET = os.environ.get("NEMODEPLOY_UP_PREFLIGHT_SUBNET", "10.213.52.0/24")
SECOND = os.environ.get("NEMODEPLOY_UP_PREFLIGHT_SECOND", "10.213.53.0/24")  # h1 .1, h2 .2 on eth1
STANDIN = Path(__file__).parents[1] / "backends" / "standin_vllm.py"
STANDIN_ENV = {"NEMODEPLOY_VLLM": f"{sys.executable} {STANDIN}"}
PORT = 8000


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    reason = testhosts.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as patch, testhosts.test_hosts(2, name=BED, subnet=SUBNET) as made:
        patch.setenv("NEMODEPLOY_CACHE", str(tmp_path_factory.mktemp("nd-up-preflight-cache")))
        h1, h2 = made.hosts
        _, second_ip = testhosts.link_hosts(made, h1, h2, SECOND)
        testhosts.route_via(h2, h1.ip, "eth1", second_ip)
        made.second_ip = second_ip
        yield made


def _topology_file(bed) -> str:
    lines = ["name: nd-up-preflight", "nodes:"]
    for h in bed.hosts:
        lines += [f"  - name: {h.name}", f"    address: {h.ip}", f"    ssh: {{user: root, port: {h.ssh_port}, key: {h.key_path}}}",
                  "    accelerators: {kind: h100-sxm, count: 1}", "    nics: [{name: eth0, speed_gbps: 10}]"]
    lines += ["model: {id: nemotron-h-tiny}", "engine: {kind: vllm, launcher: mp, parallel: {tp_size: 1, pp_size: 2}, "
              f"port: {PORT}}}", "serving: {max_context: 2048, concurrency: 4}", ""]
    path = Path(bed.workdir) / "nd-up-preflight.yaml"
    path.write_text("\n".join(lines))
    return str(path)


def _up(bed, *extra: str):
    return CliRunner().invoke(main, ["up", _topology_file(bed), "--known-hosts", bed.known_hosts_path, *extra],
                              env=STANDIN_ENV)


def _standin_record(host) -> dict:
    path = f"{launch_folder(f'{RaySettings().temp_root}/{host.name}')}/standin.json"
    return json.loads(testhosts.run_in_host(host, ["cat", path]).stdout)


def _running(host, pattern: str) -> bool:
    return testhosts.run_in_host(host, ["pgrep", "-f", pattern]).returncode == 0


def _nft_drop_input(host, port: int, drop: bool = True) -> None:
    if drop:
        rules = ("add table inet ndupblock\nadd chain inet ndupblock input { type filter hook input priority 0 ; }\n"
                 f"add rule inet ndupblock input iifname != \"lo\" tcp dport {port} drop\n")
        testhosts.run_in_host(host, ["nft", "-f", "-"], input=rules, check=True)
    else:
        testhosts.run_in_host(host, ["nft", "delete", "table", "inet", "ndupblock"], check=True)


def test_a_failed_network_check_stops_up_before_anything_starts(bed):
    h1, h2 = bed.hosts
    _nft_drop_input(h1, 6379)  # the head's firewall drops Ray's GCS port
    try:
        result = _up(bed)
    finally:
        _nft_drop_input(h1, 6379, drop=False)
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("nemodeploy: preflight: h1: ports: ray-gcs 6379 unreachable from 1/1 peers; fix: nft ")
    assert "--skip-preflight" in last and "Traceback" not in result.output
    assert not _running(h1, "raylet") and not _running(h2, "raylet") and state.load("nd-up-preflight") is None


def test_ray_and_the_engine_run_on_the_interface_each_node_really_routes_to_the_head_on(bed):
    h1, h2 = bed.hosts
    result = _up(bed)
    try:
        assert result.exit_code == 0, result.output
        assert f"preflight: h2: route: via eth1 from {bed.second_ip}" in result.output  # a warning: up goes on
        # Ray's node on h2 is the measured address; SSH still uses the topology's
        recorded = {n.name: n for n in state.load("nd-up-preflight").nodes}
        assert (recorded["h2"].address, recorded["h2"].ray_ip) == (h2.ip, bed.second_ip)
        assert (recorded["h1"].address, recorded["h1"].ray_ip) == (h1.ip, h1.ip)
        status = lifecycle.cluster_status(loads(Path(_topology_file(bed)).read_text()))
        assert [n.state for n in status.nodes] == ["alive", "alive"], status
        # ...and what the started processes see: the raylet, and vLLM's headless rank
        raylet = testhosts.process_environ(h2, "raylet")
        assert (raylet["NCCL_SOCKET_IFNAME"], raylet["GLOO_SOCKET_IFNAME"], raylet["VLLM_HOST_IP"]) == ("eth1", "eth1", bed.second_ip)
        assert f"--node-ip-address={bed.second_ip}" in testhosts.run_in_host(h2, ["pgrep", "-af", "raylet"]).stdout
        rank = _standin_record(h2)["env"]
        assert (rank["NCCL_SOCKET_IFNAME"], rank["GLOO_SOCKET_IFNAME"], rank["VLLM_HOST_IP"]) == ("eth1", "eth1", bed.second_ip)
        head = _standin_record(h1)["env"]  # the head routes to itself over the topology's interface
        assert (head["NCCL_SOCKET_IFNAME"], head["VLLM_HOST_IP"]) == ("eth0", h1.ip)
        # a second up measures again and leaves what runs alone
        again = _up(bed)
        assert again.exit_code == 0 and "already serving" in again.output, again.output
    finally:
        down = CliRunner().invoke(main, ["down", _topology_file(bed)])
    assert down.exit_code == 0, down.output
    assert not any(_running(h, "raylet") or _running(h, "standin_vllm") for h in bed.hosts)


def test_skip_preflight_starts_on_the_topology_as_written(bed):
    h1, h2 = bed.hosts
    _nft_drop_input(h1, 6379)
    try:
        result = _up(bed, "--skip-preflight")
    finally:
        _nft_drop_input(h1, 6379, drop=False)
    # no measurement: Ray's own check on h2 finds the blocked port, after the head started (and is stopped again)
    assert result.exit_code == 1 and "preflight" not in result.output, result.output
    assert "h2" in result.output and "6379" in result.output
    assert not _running(h1, "raylet") and not _running(h2, "raylet")
