"""Prometheus exposition of EngineStats, read at scrape time (vLLM's names where they mean the same)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from nemodeploy.engine.protocol import EngineStats


class EngineCollector:
    def __init__(self, stats: Callable[[], EngineStats], model_name: str):
        self.stats = stats
        self.model_name = model_name

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=["model_name"])
        g.add_metric([self.model_name], value)
        return g

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(name, doc, labels=["model_name"])
        c.add_metric([self.model_name], value)
        return c

    def _histogram(self, name: str, doc: str, histogram) -> HistogramMetricFamily:
        h = HistogramMetricFamily(name, doc, labels=["model_name"])
        bounds = [*map(str, histogram.buckets), "+Inf"]
        h.add_metric([self.model_name], list(zip(bounds, itertools.accumulate(histogram.counts))), histogram.total)
        return h

    def collect(self):
        s = self.stats()
        yield self._gauge("vllm:num_requests_running", "Requests in the running batch.", s.num_requests_running)
        yield self._gauge("vllm:num_requests_waiting", "Requests waiting for admission.", s.num_requests_waiting)
        used = 1 - s.kv_blocks_free / s.kv_blocks_total if s.kv_blocks_total else 0.0
        yield self._gauge("vllm:kv_cache_usage_perc", "Fraction of KV blocks in use (1 = full).", used)
        yield self._gauge("nemodeploy:kv_blocks_free", "Free KV cache blocks.", s.kv_blocks_free)
        yield self._gauge("nemodeploy:kv_blocks_total", "KV cache blocks.", s.kv_blocks_total)
        slots_used = 1 - s.mamba_slots_free / s.mamba_slots_total if s.mamba_slots_total else 0.0
        yield self._gauge("nemodeploy:mamba_slot_usage_perc", "Fraction of Mamba state slots in use.", slots_used)
        yield self._gauge("nemodeploy:mamba_slots_free", "Free Mamba state slots.", s.mamba_slots_free)
        yield self._gauge("nemodeploy:mamba_slots_total", "Mamba state slots.", s.mamba_slots_total)
        yield self._counter("vllm:prompt_tokens", "Prefilled prompt tokens.", s.prompt_tokens_total)
        yield self._counter("vllm:generation_tokens", "Generated tokens.", s.generation_tokens_total)
        yield self._counter("vllm:spec_decode_num_draft_tokens", "MTP draft tokens verified.",
                            s.spec_decode_num_draft_tokens)
        yield self._counter("vllm:spec_decode_num_accepted_tokens", "MTP draft tokens accepted.",
                            s.spec_decode_num_accepted_tokens)
        drafted, accepted = s.spec_decode_num_draft_tokens, s.spec_decode_num_accepted_tokens
        rate = accepted / drafted if drafted else 0.0
        yield self._gauge("nemodeploy:spec_decode_acceptance_rate", "Accepted / drafted MTP tokens.", rate)
        yield self._counter("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                            s.prefix_cache_queries)
        yield self._counter("vllm:prefix_cache_hits", "Prompt tokens resumed from the prefix cache.",
                            s.prefix_cache_hits)
        hit_rate = s.prefix_cache_hits / s.prefix_cache_queries if s.prefix_cache_queries else 0.0
        yield self._gauge("nemodeploy:prefix_cache_hit_rate", "Prefix cache hits / queries, in tokens.", hit_rate)
        yield self._gauge("nemodeploy:mamba_checkpoints_used", "Mamba state checkpoints holding a cached prefix.",
                          s.mamba_checkpoints_used)
        yield self._gauge("nemodeploy:mamba_checkpoints_total", "Mamba state checkpoints.", s.mamba_checkpoints_total)
        yield self._gauge("nemodeploy:mamba_checkpoint_bytes", "Device memory of the Mamba checkpoints (one rank).",
                          s.mamba_checkpoint_bytes)
        if s.latency is not None:
            for name, doc, histogram in (
                ("vllm:request_queue_time_seconds", "Time waiting before the first step.", s.latency.queue),
                ("vllm:time_to_first_token_seconds", "Arrival to the first output token.", s.latency.ttft),
                ("vllm:inter_token_latency_seconds", "Time between output tokens.", s.latency.inter_token),
                ("vllm:e2e_request_latency_seconds", "Arrival to the end of the request.", s.latency.e2e),
            ):
                yield self._histogram(name, doc, histogram)
        done = CounterMetricFamily("vllm:request_success", "Finished requests by reason.",
                                   labels=["model_name", "finished_reason"])
        for reason in ("stop", "length", "abort", "error"):  # error: the engine failed the request
            done.add_metric([self.model_name, reason], s.requests_finished_total.get(reason, 0))
        yield done


def make_registry(stats: Callable[[], EngineStats], model_name: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(EngineCollector(stats, model_name))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
