"""Fixtures for the HTTP tests: tiny checkpoints, a real uvicorn server on a loopback port,
and transformers' NemotronH as the greedy reference."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from nemodeploy.engine.config import EngineConfig
from nemodeploy.engine.server import build_app
from nemodeploy.engine.tiny import SPEC, randomize_, tiny_model_dir, write_tokenizer
from nemodeploy.net import free_port


@pytest.fixture(scope="session")
def latent_dir() -> Path:
    """The project's tiny model: LatentMoE, attention, Mamba, MLP and an MTP head."""
    return tiny_model_dir()


@pytest.fixture(scope="session")
def dense_dir(tmp_path_factory) -> Path:
    """The tiny spec with plain MoE (experts on the full hidden size, no latent projection), no MTP."""
    from transformers import NemotronHConfig, NemotronHForCausalLM

    spec = json.loads(SPEC.read_text())
    spec |= {"hybrid_override_pattern": "M*EM-E", "moe_latent_size": None, "num_nextn_predict_layers": 0}
    for key in ("architectures", "model_type", "mtp_hybrid_override_pattern"):
        spec.pop(key)
    directory = tmp_path_factory.mktemp("dense")
    torch.manual_seed(3)
    model = NemotronHForCausalLM(NemotronHConfig(**spec))
    randomize_(model, 3)
    model.save_pretrained(directory)
    write_tokenizer(directory, spec["vocab_size"])
    return directory


@functools.lru_cache(maxsize=4)
def _reference_model(model_dir: str):
    from transformers import NemotronHForCausalLM

    return NemotronHForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def reference_greedy(model_dir: Path, prompt: list[int], n: int) -> list[int]:
    """transformers' greedy continuation of `prompt` (fp32, EOS ignored)."""
    model = _reference_model(str(model_dir))
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


class RunningServer:
    def __init__(self, url: str, engine, model_name: str, api_key: str | None = None):
        self.url, self.engine, self.model_name = url, engine, model_name
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def metrics(self) -> dict[str, float]:
        """Prometheus samples by name; request_success_total as `...{finished_reason="stop"}`."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", headers=self.headers, timeout=10).text
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                reason = s.labels.get("finished_reason")
                samples[f'{s.name}{{finished_reason="{reason}"}}' if reason else s.name] = s.value
        return samples

    def greedy_completions(self, prompts: list[list[int]], max_tokens: int) -> list[str]:
        """Greedy /v1/completions of every prompt, sent all at once, texts in prompt order."""
        async def complete_all() -> list[str]:
            async with httpx.AsyncClient(timeout=300) as client:
                async def one(prompt: list[int]) -> str:
                    body = {"model": self.model_name, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                            "ignore_eos": True}
                    r = await client.post(f"{self.url}/v1/completions", json=body)
                    r.raise_for_status()
                    return r.json()["choices"][0]["text"]
                return await asyncio.gather(*(one(p) for p in prompts))

        return asyncio.run(complete_all())

    def wait_idle(self, timeout: float = 30.0) -> dict[str, float]:
        """Metrics once every KV block and Mamba slot is free again (or the last seen on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            idle = (m["nemodeploy:kv_blocks_free"] == m["nemodeploy:kv_blocks_total"]
                    and m["nemodeploy:mamba_slots_free"] == m["nemodeploy:mamba_slots_total"]
                    and m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0)
            if idle or time.monotonic() > deadline:
                return m
            time.sleep(0.05)


@contextlib.contextmanager
def serve(config: EngineConfig, api_key: str | None = None):
    """A real uvicorn server on a free loopback port, in a thread; stopped on exit."""
    import uvicorn

    app, engine = build_app(config, api_key)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", engine, config.served_model_name or Path(config.model).name,
                            api_key)
    finally:
        server.should_exit = True
        thread.join(15)
        engine.shutdown()


@pytest.fixture(scope="session")
def start_server():
    """`with start_server(config, api_key=None) as srv:` a real server for the block's duration."""
    return serve


@pytest.fixture(scope="session")
def greedy_reference():
    """`greedy_reference(model_dir, prompt_ids, n)`: transformers' greedy continuation."""
    return reference_greedy
