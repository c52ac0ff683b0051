"""/health follows the engine loop: 200 while it runs, 503 once it stopped; requests then get 503."""

from __future__ import annotations

import httpx

from nemodeploy.engine.config import EngineConfig


def test_health_turns_503_when_the_engine_loop_stops(latent_dir, start_server):
    config = EngineConfig(model=str(latent_dir), num_kv_blocks=16, num_mamba_slots=1, max_num_seqs=1)
    with start_server(config) as srv:
        assert httpx.get(f"{srv.url}/health").status_code == 200
        srv.engine.shutdown()
        assert httpx.get(f"{srv.url}/health").status_code == 503
        r = httpx.post(f"{srv.url}/v1/completions", json={"model": srv.model_name, "prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"
