"""A ModelOpt MIXED_PRECISION checkpoint (NVFP4 routed experts, FP8 shared experts, written by
nvidia-modelopt) served by the embedded engine with tp=2 / ep=2 on test hosts h1 and h2: greedy
text through the HTTP API equal to the single-process engine (which tests/engine holds to
transformers on the dequantized weights), then stop + down leave nothing running."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from nemodeploy.backends.cluster_engine import start_engine, stop_engine
from nemodeploy.backends.engine_config import engine_config
from nemodeploy.cluster import lifecycle, state
from nemodeploy.plan.compiler import compile_plan
from test_engine_across_hosts import KEY, PORT, PROMPTS, _complete, _single_process_texts, _topology

pytestmark = [pytest.mark.netns, pytest.mark.slow]
pytest.importorskip("modelopt", reason="nvidia-modelopt is not installed (the `quant` extra)")


@pytest.fixture(scope="module")
def quantized_dir():
    """Outside /tmp: each test host has its own /tmp, the rest of the filesystem is shared."""
    from nemodeploy.engine.tiny import write_tiny_modelopt_checkpoint

    directory = Path(tempfile.mkdtemp(prefix="nd-modelopt-model-", dir="/var/tmp"))
    write_tiny_modelopt_checkpoint(directory, "MIXED_PRECISION")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_quantized_engine_across_two_hosts(testbed, quantized_dir, ray_settings):
    topology = _topology(testbed, quantized_dir)
    plan = compile_plan(topology)
    assert [(r.node, r.tp_rank, r.ep_rank) for r in plan.ranks] == [("h1", 0, 0), ("h2", 1, 1)]
    config = engine_config(topology, plan)
    expected = _single_process_texts(config)
    assert len(set(expected)) == len(PROMPTS)
    base = f"http://{testbed.hosts[0].ip}:{PORT}"
    lifecycle.up_cluster(topology, known_hosts=testbed.known_hosts_path, settings=ray_settings)
    try:
        assert start_engine(topology, plan, api_key=KEY) == f"{base}/health"
        assert [_complete(base, config.served_model_name, p) for p in PROMPTS] == expected
    finally:
        stop_engine(topology.name)
        lifecycle.down_cluster(topology.name, settings=ray_settings)
    assert state.load(topology.name) is None
