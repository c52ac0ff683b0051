"""Latency histograms on /metrics: one TTFT, queue time and end-to-end observation per request,
one inter-token observation per later token, in vLLM's metric names and Prometheus' format."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from nemodeploy.engine.config import EngineConfig
from nemodeploy.engine.core import LLMEngine
from nemodeploy.engine.metrics import make_registry, render
from nemodeploy.engine.protocol import GenerationRequest, SamplingParams
from nemodeploy.engine.tiny import tiny_model_dir


def test_each_request_is_observed_once_per_histogram_and_each_later_token_once():
    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir()), num_kv_blocks=64, max_num_seqs=2, num_mamba_slots=2))
    for i, n in enumerate((5, 9, 3)):  # three requests, two slots: the third waits
        engine.add_request(GenerationRequest(f"r{i}", [5, 6, 7, 8 + i], SamplingParams(max_tokens=n, temperature=0,
                                                                                        ignore_eos=True)))
    while engine.has_unfinished():
        engine.step()
    families = {f.name: f for f in text_string_to_metric_families(render(make_registry(engine.stats, "tiny")).decode())}
    counts = {}
    for name in ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
                 "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds"):
        samples = families[name].samples
        buckets = [s.value for s in samples if s.name.endswith("_bucket")]
        assert buckets == sorted(buckets)  # cumulative
        counts[name] = next(s.value for s in samples if s.name.endswith("_count"))
        assert next(s.value for s in samples if s.name.endswith("_sum")) >= 0
    assert counts == {"vllm:time_to_first_token_seconds": 3, "vllm:inter_token_latency_seconds": 5 + 9 + 3 - 3,
                      "vllm:e2e_request_latency_seconds": 3, "vllm:request_queue_time_seconds": 3}
