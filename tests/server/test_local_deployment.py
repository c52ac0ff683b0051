"""`up local --detach` / status / `down`: a real background `nemodeploy serve` process."""

from __future__ import annotations

import httpx
import psutil

from nemodeploy.backends.embedded import down_local, local_status, run_local
from nemodeploy.engine.config import EngineConfig


def test_detached_deployment_serves_until_down_stops_exactly_that_process(latent_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NEMODEPLOY_CACHE", str(tmp_path))
    config = EngineConfig(model=str(latent_dir), num_kv_blocks=32, num_mamba_slots=2)
    config.served_model_name = "tiny-bg"
    dep = run_local(config, api_key="k", detach=True)
    try:
        assert (tmp_path / "deployments" / "tiny-bg.json").exists()
        [row] = local_status()
        assert row["name"] == "tiny-bg" and row["running"] and row["healthy"] and row["pid"] == dep.pid
        r = httpx.post(f"{dep.endpoint}/v1/completions", headers={"Authorization": "Bearer k"},
                       json={"model": "tiny-bg", "prompt": "Hello", "max_tokens": 4}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
        assert "--api-key" not in " ".join(psutil.Process(dep.pid).cmdline())  # the key is not on the command line
    finally:
        assert down_local("tiny-bg") == ["tiny-bg"]
    assert not psutil.pid_exists(dep.pid) or psutil.Process(dep.pid).status() == psutil.STATUS_ZOMBIE
    assert local_status() == []
