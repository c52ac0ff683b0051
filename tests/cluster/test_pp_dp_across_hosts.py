"""`nemodeploy up` of topologies whose plan has pipeline stages or data-parallel replicas, with the embedded
engine on test hosts: pp 2 over h1 and h2 (stage 0 on h1, stage 1 on h2, MTP speculation on), and dp 2 (a
replica on each), greedy output over HTTP (the openai client) equal to the single-process engine; with dp,
a replica's host losing its Ray leaves the other serving and /health naming the failed replica; `down`
leaves nothing."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest
from test_engine_across_hosts import KEY, N, PORT, PROMPTS, _single_process_texts, model_dir  # noqa: F401 (a fixture)

from nemodeploy.backends.engine_config import engine_config
from nemodeploy.cluster import state, testhosts
from nemodeploy.plan.compiler import compile_plan
from nemodeploy.topology.loader import loads

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def _topology_yaml(testbed, name: str, model: Path, parallel: str, speculative_tokens: int) -> str:
    """As test_engine_across_hosts' topology, with other parallel sizes."""
    return testbed.topology_yaml(name) + (
        f"  path: {model}\n  precision: fp32\n"
        f"engine:\n  parallel: {parallel}\n  port: {PORT}\n"
        f"serving: {{max_context: 256, concurrency: 4, speculative_tokens: {speculative_tokens}}}\n"
    )


def _openai_texts(base: str, model: str) -> list[str]:
    from openai import OpenAI

    client = OpenAI(base_url=f"{base}/v1", api_key=KEY, timeout=120, max_retries=0)
    return [client.completions.create(model=model, prompt=p, max_tokens=N, temperature=0,
                                      extra_body={"ignore_eos": True}).choices[0].text for p in PROMPTS]


def _up(testbed, tmp_path, name: str, model_dir: Path, parallel: str, speculative_tokens: int = 0):
    from click.testing import CliRunner

    from nemodeploy.cli import main

    path = tmp_path / f"{name}.yaml"
    path.write_text(_topology_yaml(testbed, name, model_dir, parallel, speculative_tokens))
    topology = loads(path.read_text())
    plan = compile_plan(topology)
    runner = CliRunner()
    result = runner.invoke(main, ["up", str(path), "--known-hosts", testbed.known_hosts_path, "--api-key", KEY])
    return path, topology, plan, runner, result


def _down(runner, path: Path, name: str, testbed) -> None:
    from nemodeploy.cli import main

    down = runner.invoke(main, ["down", str(path)])
    assert down.exit_code == 0, down.output
    assert state.load(name) is None
    for host in testbed.hosts:
        out = testhosts.run_in_host(host, ["ps", "-eo", "args="]).stdout.splitlines()
        assert not [p for p in out if "ray" in p.lower() and not p.startswith("ps ")], host.name


def test_up_serves_two_pipeline_stages_across_two_hosts(testbed, model_dir, tmp_path):
    """With MTP speculation on: stage 0 on h1 rolls its Mamba states back to what stage 1 on h2 kept."""
    path, topology, plan, runner, result = _up(testbed, tmp_path, "nd-pp", model_dir,
                                               "{tp_size: 1, pp_size: 2, dp_size: 1}", speculative_tokens=2)
    try:
        assert plan.cache.speculative_tokens == 2
        assert [(r.node, r.pp_rank) for r in plan.ranks] == [("h1", 0), ("h2", 1)]
        assert [s.layers for s in plan.stages] == [(0, 4), (4, 7)]
        assert result.exit_code == 0, result.output
        base = f"http://{testbed.hosts[0].ip}:{PORT}"
        assert _openai_texts(base, "nemotron-h-tiny") == _single_process_texts(engine_config(topology, plan))
        health = httpx.get(f"{base}/health", timeout=30).json()
        assert (health["status"], health["ranks"]) == ("ok", 2)
    finally:
        _down(runner, path, topology.name, testbed)


def test_up_serves_two_replicas_and_one_survives_the_others_host(testbed, model_dir, tmp_path):
    path, topology, plan, runner, result = _up(testbed, tmp_path, "nd-dp", model_dir,
                                               "{tp_size: 1, pp_size: 1, dp_size: 2}")
    try:
        assert [(r.node, r.dp_rank) for r in plan.ranks] == [("h1", 0), ("h2", 1)]
        assert result.exit_code == 0, result.output
        base = f"http://{testbed.hosts[0].ip}:{PORT}"
        expected = _single_process_texts(engine_config(topology, plan))
        assert _openai_texts(base, "nemotron-h-tiny") == expected
        metrics = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).text
        blocks = [line for line in metrics.splitlines() if line.startswith("nemodeploy:kv_blocks_total{")]
        assert float(blocks[0].split()[-1]) == 2 * plan.cache.num_kv_blocks  # both replicas, summed

        h2 = testbed.hosts[1]
        testhosts.run_in_host(h2, [str(Path(sys.executable).parent / "ray"), "stop", "--force"], check=True)
        deadline = time.monotonic() + 60
        while (health := httpx.get(f"{base}/health", timeout=30).json())["status"] == "ok":
            assert time.monotonic() < deadline, "/health still ok a minute after h2's Ray was killed"
            time.sleep(1)
        assert health["status"] == "degraded"
        failed = health["replicas"][1]
        assert (failed["status"], failed["rank"], failed["node"], failed["address"]) == ("failed", 0, "h2", h2.ip)
        assert health["replicas"][0]["status"] == "ok"
        assert _openai_texts(base, "nemotron-h-tiny") == expected  # the replica on h1 serves them all
    finally:
        _down(runner, path, topology.name, testbed)
