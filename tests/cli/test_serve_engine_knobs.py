"""The engine's knobs as a user turns them: `serve --kv-cache-dtype fp8` answers with an FP8 KV cache (its
logprobs move off the full-precision ones, its tokens do not), a value the engine does not take is one
line; `up` of a topology with `kv_cache_dtype: fp8` and `prefix_caching: true` serves with both, the
Mamba checkpoints it allocates being the bytes its plan counted, and a repeated prompt hits the cache."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from nemodeploy.cli import main
from nemodeploy.net import free_port
from nemodeploy.plan.compiler import compile_plan
from nemodeploy.topology.loader import load


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    from nemodeploy.engine.tiny import tiny_model_dir

    return tiny_model_dir()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """NEMODEPLOY_CACHE of this test: the deployments `up` records."""
    monkeypatch.setenv("NEMODEPLOY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def nemodeploy(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`nemodeploy ARGS` in a process of its own, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "nemodeploy.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


class Serving:
    """`nemodeploy serve ...` in the background until /health answers; stopped with SIGTERM."""

    def __init__(self, *args: str, port: int, timeout: float = 120):
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "nemodeploy.cli", "serve", "--port", str(port), *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"serve {args} did not become healthy in {timeout} s")

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "Serving":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


PROMPT = "the quick brown fox jumps over the lazy dog " * 6


def greedy(url: str, model: str, headers: dict | None = None) -> tuple[str, list[float]]:
    r = httpx.post(f"{url}/v1/completions", headers=headers, timeout=60,
                   json={"model": model, "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "logprobs": 1})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    return choice["text"], choice["logprobs"]["token_logprobs"]


def metric(url: str, name: str, headers: dict | None = None) -> float:
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=10).text
    return float(re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M).group(1))


def test_serve_with_an_fp8_kv_cache_answers(tiny_dir):
    with Serving("--model", str(tiny_dir), port=free_port()) as full:
        text, logprobs = greedy(full.url, tiny_dir.name)
    with Serving("--model", str(tiny_dir), "--kv-cache-dtype", "fp8", port=free_port()) as fp8:
        fp8_text, fp8_logprobs = greedy(fp8.url, tiny_dir.name)
    assert fp8_text == text and text
    assert fp8_logprobs != logprobs, "the same logprobs: the KV cache was not stored in FP8"
    assert max(abs(a - b) for a, b in zip(fp8_logprobs, logprobs)) < 0.1


def test_a_kv_cache_dtype_the_engine_does_not_take_is_one_line(tiny_dir):
    result = CliRunner().invoke(main, ["serve", "--model", str(tiny_dir), "--kv-cache-dtype", "int4"])
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert "--kv-cache-dtype" in line and "'auto', 'fp8'" in line


def test_up_serves_the_topologys_fp8_kv_and_prefix_caching_as_planned(cache, tiny_dir, tmp_path):
    data = load("local").model_dump(mode="json")
    data["name"] = "knobs"
    data["model"] = {"path": str(tiny_dir), "precision": "fp32"}
    data["serving"].update(kv_cache_dtype="fp8", prefix_caching=True, mamba_checkpoint_interval=32,
                           mamba_checkpoints=6)
    path = tmp_path / "knobs.yaml"
    path.write_text(json.dumps(data))
    plan = compile_plan(load(str(path)))
    port = free_port()
    up = nemodeploy("up", str(path), "--detach", "--port", str(port), "--api-key", "k")
    try:
        assert up.returncode == 0, up.stderr
        config = json.loads((cache / "deployments" / "knobs.config.json").read_text())
        assert config["kv_cache_dtype"] == "fp8"
        assert (config["prefix_caching"], config["mamba_checkpoint_interval"], config["num_mamba_checkpoints"]) \
            == (True, 32, 6)
        url, auth = f"http://127.0.0.1:{port}", {"Authorization": "Bearer k"}
        assert metric(url, "nemodeploy:mamba_checkpoint_bytes", auth) == plan.memory.mamba_checkpoints > 0
        first, _ = greedy(url, tiny_dir.name, auth)
        again, _ = greedy(url, tiny_dir.name, auth)
        assert again == first
        assert metric(url, "vllm:prefix_cache_hits_total", auth) >= 32
    finally:
        down = nemodeploy("down")  # the only deployment in this test's cache
    assert down.returncode == 0 and "knobs: stopped" in down.stdout, down.stderr
