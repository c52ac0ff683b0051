"""`up` with engine.kind vllm over three test hosts, for real up to the vLLM process.

No GPU and no vLLM can run here: the hosts run a STAND-IN `vllm` (tests/backends/standin_vllm.py,
through NEMODEPLOY_VLLM) that records its argv, its environment and the Ray nodes alive when it
started, logs start-up lines and serves /health. Everything else is real: sshd in network
namespaces, `ray start` on each host, the Ray GCS, the SSH launch, the log streaming, the health
wait, the state file, `status` and `down`. The hosts claim one H100 each (`ray start --num-gpus=1`).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("paramiko", reason="the cluster extra is not installed (pip install -e .[cluster])")
pytest.importorskip("ray", reason="the cluster extra is not installed (pip install -e .[cluster])")

from click.testing import CliRunner  # noqa: E402

from nemodeploy.backends.vllm import VllmError  # noqa: E402
from nemodeploy.backends.vllm_launch import VllmSettings, launch_folder, start_vllm, stop_vllm  # noqa: E402
from nemodeploy.cli import main  # noqa: E402
from nemodeploy.cluster import lifecycle, state, testhosts  # noqa: E402
from nemodeploy.cluster.errors import ClusterError  # noqa: E402
from nemodeploy.cluster.ray_bringup import RaySettings  # noqa: E402
from nemodeploy.plan.compiler import compile_plan  # noqa: E402
from nemodeploy.topology.loader import loads  # noqa: E402

pytestmark = [pytest.mark.netns, pytest.mark.slow]

BED, SUBNET = "ndv", "10.213.40.0/24"  # this test's own bed: no other test run takes its bridge
STANDIN = Path(__file__).with_name("standin_vllm.py")
RAY = RaySettings(object_store_memory=80 * 2**20, memory=400 * 2**20, join_timeout_s=120)
PORT = 8000
STANDIN_ENV = {"NEMODEPLOY_VLLM": f"{sys.executable} {STANDIN}"}


def standin(*options: str) -> VllmSettings:
    return VllmSettings(command=(sys.executable, str(STANDIN), *options), timeout_s=60, stop_grace_s=5)


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    reason = testhosts.unavailable_reason()
    if reason:
        pytest.skip(reason)
    old = os.environ.get("NEMODEPLOY_CACHE")
    os.environ["NEMODEPLOY_CACHE"] = str(tmp_path_factory.mktemp("nd-vllm-cache"))
    try:
        with testhosts.test_hosts(3, name=BED, subnet=SUBNET) as testbed:
            yield testbed
    finally:
        os.environ.pop("NEMODEPLOY_CACHE") if old is None else os.environ.update(NEMODEPLOY_CACHE=old)


def _yaml(bed, launcher: str = "ray", extra: str = "") -> str:
    lines = ["name: nd-vllm", "nodes:"]
    for h in bed.hosts:
        lines += [f"  - name: {h.name}", f"    address: {h.ip}",
                  f"    ssh: {{user: root, port: {h.ssh_port}, key: {h.key_path}}}",
                  "    accelerators: {kind: h100-sxm, count: 1}", "    nics: [{name: eth0, speed_gbps: 10}]"]
    lines += ["model: {id: nemotron-h-tiny}", "engine:", "  kind: vllm", f"  launcher: {launcher}",
              "  parallel: {tp_size: 1, pp_size: 3}", f"  port: {PORT}", extra,
              "serving: {max_context: 2048, concurrency: 4}", ""]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def cluster(bed):
    topology = loads(_yaml(bed))
    lifecycle.up_cluster(topology, known_hosts=bed.known_hosts_path, settings=RAY)
    yield topology
    if state.load(topology.name):  # the last test's `down` normally did this
        stop_vllm(topology.name)
        lifecycle.down_cluster(topology, settings=RAY)
    for host in bed.hosts:
        assert not _processes(host, "standin_vllm") and not _processes(host, "raylet"), host.name


def _processes(host, pattern: str) -> list[str]:
    out = testhosts.run_in_host(host, ["ps", "-eo", "args="]).stdout.splitlines()
    return [line for line in out if pattern in line and not line.startswith("ps ")]


def _record(host) -> dict:
    path = f"{launch_folder(f'{RAY.temp_root}/{host.name}')}/standin.json"
    return json.loads(testhosts.run_in_host(host, ["cat", path]).stdout)


def _environ(host, pattern: str) -> dict[str, str]:
    pid = testhosts.run_in_host(host, ["pgrep", "-f", pattern]).stdout.split()[0]
    raw = testhosts.run_in_host(host, ["cat", f"/proc/{pid}/environ"]).stdout
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def _health(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except OSError:
        return 0


def test_ray_launcher_serves_from_the_head_after_every_node_joined(bed, cluster):
    plan = compile_plan(cluster)
    phases, lines = [], []
    url = start_vllm(cluster, plan, settings=standin(), on_phase=lambda n, t: phases.append((n, t)),
                     on_line=lambda n, t: lines.append((n, t)))
    head, workers = bed.hosts[0], bed.hosts[1:]
    assert url == f"http://{head.ip}:{PORT}/health" and _health(url) == 200
    record = _record(head)
    argv = record["argv"]
    assert argv[0] == "nemotron-h-tiny"
    assert argv[argv.index("--distributed-executor-backend") + 1] == "ray"
    assert argv[argv.index("--pipeline-parallel-size") + 1] == "3"
    # Ray was ready on every node, with its GPU, before vllm serve started
    alive = {n["ip"]: n["gpus"] for n in record["ray_nodes"] if n["alive"]}
    assert all(alive.get(h.ip, 0) >= 1 for h in bed.hosts), alive
    # the head's vLLM and every node's raylet (whose workers vLLM's Ray executor uses) have that node's NIC and IP
    assert record["env"]["VLLM_HOST_IP"] == head.ip and record["env"]["NCCL_SOCKET_IFNAME"] == "eth0"
    assert record["env"]["GLOO_SOCKET_IFNAME"] == "eth0" and record["env"]["RAY_ADDRESS"].startswith(head.ip)
    for host in workers:
        env = _environ(host, "raylet")
        assert env["VLLM_HOST_IP"] == host.ip and env["NCCL_SOCKET_IFNAME"] == "eth0" and env["NCCL_IB_DISABLE"] == "1"
        assert not _processes(host, "standin_vllm"), "the ray launcher runs vllm serve on the head only"
    # start-up streamed as phases, in order, with vLLM's own lines
    head_phases = [t for n, t in phases if n == head.name]
    assert {"loading weights", "capturing CUDA graphs", "serving"} <= set(head_phases), phases
    order = [head_phases.index(p) for p in ("loading weights", "capturing CUDA graphs", "serving")]
    assert order == sorted(order)
    assert any("Loading weights took" in t for _, t in lines) and any("CUDA graphs" in t for _, t in lines)

    status = lifecycle.cluster_status(cluster)
    assert status.engine.kind == "vllm" and status.engine.healthy

    # a second `up` leaves the healthy server alone
    pid = record["pid"]
    result = CliRunner().invoke(main, ["up", _write(bed, _yaml(bed))], env=STANDIN_ENV)
    assert result.exit_code == 0, result.output
    assert "already serving" in result.output and _record(head)["pid"] == pid

    result = CliRunner().invoke(main, ["status", _write(bed, _yaml(bed)), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["engine"]["healthy"] is True

    assert stop_vllm(cluster.name) == [head.name]
    assert _health(url) == 0 and not _processes(head, "standin_vllm")
    assert state.load(cluster.name).engine is None


def _write(bed, text: str) -> str:
    path = Path(bed.workdir) / "nd-vllm.yaml"
    path.write_text(text)
    return str(path)


def test_mp_launcher_starts_the_head_then_headless_ranks_each_with_its_own_network(bed, cluster):
    topology = loads(_yaml(bed, launcher="mp"))
    result = CliRunner().invoke(main, ["up", _write(bed, _yaml(bed, launcher="mp"))], env=STANDIN_ENV)
    assert result.exit_code == 0, result.output
    assert "Loading weights took" in result.output and f"engine serving at http://{bed.hosts[0].ip}:{PORT}/v1" in result.output
    assert _health(f"http://{bed.hosts[0].ip}:{PORT}/health") == 200
    records = [_record(h) for h in bed.hosts]
    for rank, (host, record) in enumerate(zip(bed.hosts, records)):
        argv = record["argv"]
        assert argv[argv.index("--node-rank") + 1] == str(rank)
        assert argv[argv.index("--master-addr") + 1] == bed.hosts[0].ip
        assert ("--headless" in argv) == (rank > 0)
        assert record["env"]["VLLM_HOST_IP"] == host.ip and record["env"]["NCCL_SOCKET_IFNAME"] == "eth0"
        assert "RAY_ADDRESS" not in record["env"]
    assert all(records[0]["started"] <= r["started"] for r in records[1:])
    # the API key reaches the head's API server from its 0600 file, through the environment, never an argv
    key = records[0]["env"]["VLLM_API_KEY"]
    assert key and key in result.output and not any(key in " ".join(r["argv"]) for r in records)
    assert all("VLLM_API_KEY" not in r["env"] for r in records[1:])
    assert sorted(stop_vllm(topology.name)) == sorted(h.name for h in bed.hosts)
    assert not any(_processes(h, "standin_vllm") for h in bed.hosts)


def test_a_failed_start_names_the_node_and_its_log_and_leaves_nothing(bed, cluster):
    with pytest.raises(ClusterError) as failed:
        start_vllm(cluster, compile_plan(cluster), settings=standin("--fail"))
    message = str(failed.value)
    assert message.startswith(f"node {bed.hosts[0].name}: vllm serve exited during start-up")
    assert "out of memory" in message and "Loading weights took" in message and "\n" not in message
    assert not any(_processes(h, "standin_vllm") for h in bed.hosts)
    assert state.load(cluster.name).engine is None


def test_a_headless_rank_that_fails_is_named_and_the_head_is_stopped_too(bed, cluster):
    topology = loads(_yaml(bed, launcher="mp"))
    with pytest.raises(ClusterError) as failed:
        start_vllm(topology, compile_plan(topology), settings=standin("--fail-headless"))
    assert str(failed.value).startswith(f"node {bed.hosts[1].name}: vllm serve exited during start-up")
    assert not any(_processes(h, "standin_vllm") for h in bed.hosts)


def test_a_node_with_another_vllm_version_stops_the_launch_before_it_starts(bed, cluster):
    with pytest.raises(ClusterError, match=r"^node h1: has vLLM 0\.32\.0; .*0\.33\.0"):
        start_vllm(cluster, compile_plan(cluster), settings=standin("--version-is", "0.32.0"))
    assert not any(_processes(h, "standin_vllm") for h in bed.hosts)


def test_a_refused_combination_starts_nothing(bed, cluster):
    topology = loads(_yaml(bed, extra="  extra_args: {max-num-seqs: 100000}"))
    with pytest.raises(VllmError, match="max-num-seqs 100000 is above"):
        start_vllm(topology, compile_plan(topology), settings=standin())
    assert not any(_processes(h, "standin_vllm") for h in bed.hosts)


def test_down_stops_vllm_then_ray_and_leaves_nothing(bed, cluster):
    url = start_vllm(cluster, compile_plan(cluster), settings=standin())
    result = CliRunner().invoke(main, ["down", _write(bed, _yaml(bed))])
    assert result.exit_code == 0, result.output
    assert f"vLLM on {cluster.name} stopped ({bed.hosts[0].name})" in result.output
    assert "Ray stopped on h1, h2, h3" in result.output
    assert _health(url) == 0 and state.load(cluster.name) is None
    for host in bed.hosts:
        assert not _processes(host, "standin_vllm") and not _processes(host, "raylet"), host.name
