"""The embedded engine across test hosts: up, serve with tp=2 / ep=2 on h1 and h2, greedy output
through the HTTP API equal to the single-process engine, a worker host's Ray killed -> /health
names it, then stop + down leave nothing running. The engine always requires its API key, which
is never on a command line and survives the restart that `up` does after a node failure; an
engine that fails to start is one line with its log's path, and nothing is left running."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from nemodeploy.backends.cluster_engine import MODULE, start_engine, stop_engine
from nemodeploy.backends.engine_config import engine_config
from nemodeploy.cluster import lifecycle, secrets, state, testhosts
from nemodeploy.cluster.errors import ClusterError
from nemodeploy.plan.compiler import compile_plan
from nemodeploy.topology.loader import loads

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PROMPTS = [[5 + i for i in range(7)], [40 + 2 * i for i in range(19)], [200, 7, 9]]
N = 12
PORT = 8000
KEY = "test-key-0123456789abcdef0123456789"


@pytest.fixture(scope="module")
def model_dir():
    """Outside /tmp: each test host has its own /tmp, the rest of the filesystem is shared."""
    from nemodeploy.engine.tiny import write_tiny_checkpoint

    directory = Path(tempfile.mkdtemp(prefix="nd-engine-model-", dir="/var/tmp"))
    write_tiny_checkpoint(directory)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _topology_yaml(testbed, name: str, model: Path) -> str:
    return testbed.topology_yaml(name) + (
        f"  path: {model}\n  precision: fp32\n"
        f"engine:\n  parallel: {{tp_size: 2, ep_size: 2, pp_size: 1, dp_size: 1}}\n  port: {PORT}\n"
        "serving: {max_context: 256, concurrency: 4}\n"
    )


def _topology(testbed, model: Path):
    return loads(_topology_yaml(testbed, "nd-engine", model))


def _single_process_texts(config) -> list[str]:
    from nemodeploy.engine.core import LLMEngine
    from nemodeploy.engine.protocol import GenerationRequest, SamplingParams

    engine = LLMEngine(config)
    texts = {str(i): "" for i in range(len(PROMPTS))}
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(GenerationRequest(str(i), prompt, SamplingParams(max_tokens=N, temperature=0, ignore_eos=True)))
    while engine.has_unfinished():
        for out in engine.step():
            texts[out.request_id] += out.text
    return list(texts.values())


def _complete(url: str, model: str, prompt: list[int], key: str | None = KEY) -> str:
    body = {"model": model, "prompt": prompt, "max_tokens": N, "temperature": 0, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=120)
    r.raise_for_status()
    return r.json()["choices"][0]["text"]


def _processes(host, pattern: str) -> list[str]:
    out = testhosts.run_in_host(host, ["ps", "-eo", "args="]).stdout.splitlines()
    return [line for line in out if pattern in line and not line.startswith("ps ")]


def test_engine_across_two_hosts(testbed, model_dir, ray_settings, tmp_path, argv_scan):
    topology = _topology(testbed, model_dir)
    plan = compile_plan(topology)
    assert [(r.node, r.tp_rank, r.ep_rank) for r in plan.ranks] == [("h1", 0, 0), ("h2", 1, 1)]
    config = engine_config(topology, plan)
    expected = _single_process_texts(config)
    h1, h2 = testbed.hosts[0], testbed.hosts[1]
    base = f"http://{h1.ip}:{PORT}"

    lifecycle.up_cluster(topology, known_hosts=testbed.known_hosts_path, settings=ray_settings)
    try:
        # /tmp of the machine is not the hosts' /tmp: a model there is missing on every node
        local_only = shutil.copytree(model_dir, tmp_path / "model")
        elsewhere = _topology(testbed, local_only)
        with pytest.raises(ClusterError, match=f"node h1: the model directory {local_only} .* is missing on this node"):
            start_engine(elsewhere, compile_plan(elsewhere), api_key=KEY)
        with pytest.raises(ClusterError, match="an API key is required"):
            start_engine(topology, plan, api_key="")

        started = time.monotonic()
        with argv_scan() as scan:
            assert start_engine(topology, plan, api_key=KEY) == f"{base}/health"
        print(f"engine healthy {time.monotonic() - started:.1f} s after start")
        assert any(MODULE in line for line in scan.lines), "the scan missed the engine's driver"
        assert scan.holding(KEY) == [] and scan.holding(secrets.read(topology.name, secrets.RAY_TOKEN)) == []
        assert state.load(topology.name).engine.health_url == f"{base}/health"
        assert lifecycle.cluster_status(topology).engine.healthy
        with pytest.raises(ClusterError, match="an engine already runs on the head"):
            start_engine(topology, plan, api_key=KEY)

        assert [_complete(base, config.served_model_name, p) for p in PROMPTS] == expected
        with pytest.raises(httpx.HTTPStatusError, match="401"):
            _complete(base, config.served_model_name, PROMPTS[0], key=None)
        with pytest.raises(httpx.HTTPStatusError, match="401"):
            _complete(base, config.served_model_name, PROMPTS[0], key=KEY + "x")
        assert len(set(expected)) == len(PROMPTS)  # distinct continuations: a broken rank could not pass

        ray = str(Path(sys.executable).parent / "ray")
        testhosts.run_in_host(h2, [ray, "stop", "--force"], check=True)
        deadline = time.monotonic() + 60
        while (health := httpx.get(f"{base}/health", timeout=30)).status_code == 200:
            assert time.monotonic() < deadline, "/health still 200 a minute after h2's Ray was killed"
            time.sleep(1)
        assert health.status_code == 503
        body = health.json()
        assert (body["status"], body["rank"], body["node"], body["address"]) == ("failed", 1, "h2", h2.ip)
        assert f"engine rank 1 on node {h2.ip} failed" in body["error"]
        status = lifecycle.cluster_status(topology)
        assert not status.engine.healthy and status.engine.detail == "HTTP 503"
    finally:
        stopped = stop_engine(topology.name)
        lifecycle.down_cluster(topology.name, settings=ray_settings)
    assert stopped
    assert state.load(topology.name) is None
    assert not _processes(h1, MODULE)
    for host in testbed.hosts:
        assert not [p for p in _processes(host, "ray") if "ray" in p.lower()], host.name


def test_nemodeploy_up_serves_across_hosts_and_comes_back_after_a_worker_dies(testbed, model_dir, tmp_path):
    """The user's path: `nemodeploy up` (Ray over SSH, then the engine with tp=2 / ep=2 on h1 and h2),
    a second `up` that changes nothing, a worker's Ray killed, `status` saying so, `up` bringing the
    service back with the same greedy output, and `down` leaving nothing."""
    from click.testing import CliRunner

    from nemodeploy.cli import main

    path = tmp_path / "cluster.yaml"
    path.write_text(_topology_yaml(testbed, "nd-cli", model_dir))
    topology = loads(path.read_text())
    expected = _single_process_texts(engine_config(topology, compile_plan(topology)))
    h1, h2 = testbed.hosts[0], testbed.hosts[1]
    base = f"http://{h1.ip}:{PORT}"
    runner = CliRunner()
    up = ["up", str(path), "--known-hosts", testbed.known_hosts_path]
    try:
        first = runner.invoke(main, up)
        assert first.exit_code == 0, first.output
        assert f"engine serving at {base}/v1" in first.output
        key = first.stdout.strip().splitlines()[-1]  # generated, shown once
        assert "API key (generated, shown once" in first.stderr and len(key) >= 32
        assert [_complete(base, "nemotron-h-tiny", p, key) for p in PROMPTS] == expected
        driver = _processes(h1, MODULE)

        second = runner.invoke(main, up)
        assert second.exit_code == 0, second.output
        assert "engine already serving" in second.output and key not in second.output
        assert _processes(h1, MODULE) == driver, "a second `up` must not restart the engine"
        other = runner.invoke(main, [*up, "--api-key", "another-key-of-the-user-0123456789"])
        assert other.exit_code == 2 and "Traceback" not in other.output, other.output
        assert "already serves with another API key" in other.stderr.strip().splitlines()[-1]  # after the progress
        assert runner.invoke(main, [*up, "--api-key", key]).exit_code == 0  # the same key: nothing to change

        ray = str(Path(sys.executable).parent / "ray")
        testhosts.run_in_host(h2, [ray, "stop", "--force"], check=True)
        deadline = time.monotonic() + 60
        while httpx.get(f"{base}/health", timeout=30).status_code == 200:
            assert time.monotonic() < deadline, "/health still 200 a minute after h2's Ray was killed"
            time.sleep(1)
        status = runner.invoke(main, ["status", str(path), "--json"])
        assert status.exit_code == 1, status.output
        report = json.loads(status.stdout)
        assert not report["engine"]["healthy"]

        again = runner.invoke(main, up)
        assert again.exit_code == 0, again.output
        assert "restarting" in again.output and key not in again.output
        assert [_complete(base, "nemotron-h-tiny", p, key) for p in PROMPTS] == expected  # the key survived
    finally:
        down = runner.invoke(main, ["down", str(path)])
    assert down.exit_code == 0, down.output
    assert state.load(topology.name) is None
    for host in testbed.hosts:
        assert not [p for p in _processes(host, "ray") if "ray" in p.lower()], host.name


def test_an_engine_that_fails_to_start_is_one_line_and_leaves_nothing(testbed, model_dir, tmp_path, ray_processes):
    """Without `nics` and without up's preflight (which would measure the routed interface), Gloo picks no
    usable interface between the hosts and the ranks fail to connect: `up` says so in one line with the
    log's path, stops the engine and the Ray it started."""
    from click.testing import CliRunner

    from nemodeploy.cli import main

    path = tmp_path / "no-nics.yaml"
    text = _topology_yaml(testbed, "nd-nonics", model_dir)
    path.write_text("\n".join(line for line in text.splitlines() if "nics:" not in line) + "\n")
    assert loads(path.read_text()).nodes[0].nics == []
    result = CliRunner().invoke(main, ["up", str(path), "--known-hosts", testbed.known_hosts_path, "--api-key", KEY,
                                       "--skip-preflight"])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output
    assert lines[-1].startswith("nemodeploy: node h1: the engine exited during start-up: ")
    assert "/engine/engine.log" in lines[-1] and lines[-1].endswith("Ray stopped again")
    print(lines[-1])
    assert state.load("nd-nonics") is None
    for host in testbed.hosts:
        assert ray_processes(host) == [], host.name
    assert not _processes(testbed.hosts[0], MODULE)
