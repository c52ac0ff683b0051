"""tp=2 and ep=2 (two CPU processes, gloo over loopback) give the single-process logits."""

from __future__ import annotations

import torch

from model_harness import prefill_decode_logits, two_rank_logits
from nemodeploy.engine.model.parallel import ParallelConfig

CASES = [
    ("latent_g2_kv2", ParallelConfig(tp_rank=0, tp_size=2)),  # KV heads and groups sharded
    ("g1_kv4", ParallelConfig(tp_rank=0, tp_size=2)),  # one Mamba group split over ranks
    ("plain_g4_kv1", ParallelConfig(tp_rank=0, tp_size=2)),  # one KV head replicated
    ("latent_g2_kv2", ParallelConfig(ep_rank=0, ep_size=2)),
    ("latent_g2_kv2", ParallelConfig(tp_rank=0, tp_size=2, ep_rank=0, ep_size=2)),
]


def test_tensor_and_expert_parallel_match_single_process(reference):
    cases = [(str(reference(variant)[0]), p) for variant, p in CASES]
    results = two_rank_logits(cases)
    for i, (directory, _) in enumerate(cases):
        expected = prefill_decode_logits(directory)
        for rank in range(2):
            torch.testing.assert_close(results[(rank, i)], expected, atol=1e-4, rtol=1e-4, msg=f"case {CASES[i]} rank {rank}")
