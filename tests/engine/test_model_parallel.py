"""tp=2 and ep=2 (two CPU processes, gloo over loopback) give the single-process logits."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model_harness import Runner, prompt
from nemodeploy.engine.loader import load_model
from nemodeploy.engine.model.parallel import ParallelConfig
from nemodeploy.net import free_port

CASES = [
    ("latent_g2_kv2", ParallelConfig(tp_rank=0, tp_size=2)),  # KV heads and groups sharded
    ("g1_kv4", ParallelConfig(tp_rank=0, tp_size=2)),  # one Mamba group split over ranks
    ("plain_g4_kv1", ParallelConfig(tp_rank=0, tp_size=2)),  # one KV head replicated
    ("latent_g2_kv2", ParallelConfig(ep_rank=0, ep_size=2)),
    ("latent_g2_kv2", ParallelConfig(tp_rank=0, tp_size=2, ep_rank=0, ep_size=2)),
]


def _logits(directory, parallel: ParallelConfig) -> torch.Tensor:
    runner = Runner(load_model(directory, torch.float32, parallel=parallel, with_mtp=False))
    tokens = prompt(10, seed=1)
    out = [runner.step([(0, tokens)])[0]]
    out.append(runner.step([(0, [int(out[-1][-1].argmax())])], num_decodes=1)[0])
    return torch.cat(out)


def _worker(rank: int, port: int, cases, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        for i, (directory, p) in enumerate(cases):
            local = ParallelConfig(
                tp_rank=rank if p.tp_size > 1 else 0, tp_size=p.tp_size, ep_rank=rank if p.ep_size > 1 else 0, ep_size=p.ep_size
            )
            results[(rank, i)] = _logits(directory, local)
    finally:
        dist.destroy_process_group()


def test_tensor_and_expert_parallel_match_single_process(reference):
    cases = [(str(reference(variant)[0]), p) for variant, p in CASES]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(free_port(), cases, results), nprocs=2, join=True)
        results = dict(results)
    for i, (directory, _) in enumerate(cases):
        expected = _logits(directory, ParallelConfig())
        for rank in range(2):
            torch.testing.assert_close(results[(rank, i)], expected, atol=1e-4, rtol=1e-4, msg=f"case {CASES[i]} rank {rank}")
