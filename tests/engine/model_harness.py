"""Helpers for the engine model tests: tiny-spec variants, transformers logits, a small cache driver.

A module of its own (not conftest) so that spawned worker processes import it by an unambiguous name.
"""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nemodeploy.engine.batch import BatchMetadata
from nemodeploy.engine.cache import HybridCache
from nemodeploy.engine.loader import load_model
from nemodeploy.engine.model.parallel import ParallelConfig
from nemodeploy.engine.tiny import SPEC
from nemodeploy.net import free_port

BLOCK_SIZE = 4
BLOCKS_PER_SEQ = 16

# Variants of the tiny spec: layer patterns, latent / plain MoE, n_groups 1/2/4, KV heads 1/2/4.
VARIANTS = {
    "latent_g2_kv2": {},
    "plain_g4_kv1": {"hybrid_override_pattern": "M*EM", "moe_latent_size": None, "n_groups": 4, "num_key_value_heads": 1},
    "g1_kv4": {"hybrid_override_pattern": "*M-ME", "n_groups": 1, "num_key_value_heads": 4},
}


def spec_for(variant: str) -> dict:
    spec = json.loads(SPEC.read_text()) | {"chunk_size": 8, "num_nextn_predict_layers": 0} | VARIANTS[variant]
    spec.pop("mtp_hybrid_override_pattern")
    return spec


def hf_logits(model, tokens: list[int]) -> torch.Tensor:
    """transformers logits at every position, by a full recompute (its chunked-scan path)."""
    with torch.no_grad():
        return model(torch.tensor([tokens]), use_cache=False, logits_to_keep=0).logits[0]


class Runner:
    """Drives the engine model with its cache: each sequence gets a fixed run of KV blocks and a slot."""

    def __init__(self, model, num_seqs: int = 4, num_spec_tokens: int = 0, kv_dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.cache = HybridCache(
            model.config, num_seqs * BLOCKS_PER_SEQ, BLOCK_SIZE, num_seqs, torch.float32,
            parallel=model.parallel, num_spec_tokens=num_spec_tokens, max_spec_seqs=num_seqs, kv_dtype=kv_dtype,
        )
        self.cached = [0] * num_seqs

    def step(self, rows: list[tuple[int, list[int]]], num_decodes: int = 0, save_spec_states: bool = False):
        """rows: (sequence, new tokens), recurrent rows first. Returns logits [T, V] per row."""
        batch = BatchMetadata.build(
            query_lens=[len(t) for _, t in rows],
            context_lens=[self.cached[s] for s, _ in rows],
            block_tables=[list(range(s * BLOCKS_PER_SEQ, (s + 1) * BLOCKS_PER_SEQ)) for s, _ in rows],
            mamba_slots=[s for s, _ in rows],
            block_size=BLOCK_SIZE,
            num_decodes=num_decodes,
            save_spec_states=save_spec_states,
        )
        ids = torch.tensor([t for _, tokens in rows for t in tokens])
        with torch.no_grad():
            logits = self.model.compute_logits(self.model(ids, batch, self.cache))
        for s, tokens in rows:
            self.cached[s] += len(tokens)
        return list(logits.split([len(t) for _, t in rows]))


def prompt(length: int, seed: int, vocab: int = 512) -> list[int]:
    return torch.randint(3, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def prefill_decode_logits(directory, parallel: ParallelConfig = ParallelConfig()) -> torch.Tensor:
    """Logits of a 10-token prefill and one greedy decode step, this rank's model of `directory`."""
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
            results[(rank, i)] = prefill_decode_logits(directory, local)
    finally:
        dist.destroy_process_group()


def two_rank_logits(cases: list[tuple[str, ParallelConfig]]) -> dict[tuple[int, int], torch.Tensor]:
    """(rank, case index) -> prefill_decode_logits on two CPU processes (gloo over loopback)."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(free_port(), cases, results), nprocs=2, join=True)
        return dict(results)
