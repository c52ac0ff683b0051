"""Under KV pressure the newest sequence is preempted and later recomputed from its tokens:
the output is still exactly transformers' greedy output, and nothing leaks."""

from __future__ import annotations

import torch

from nemodeploy.engine.config import EngineConfig
from nemodeploy.engine.core import LLMEngine
from nemodeploy.engine.protocol import GenerationRequest, SamplingParams
from nemodeploy.engine.tiny import tiny_model_dir

N = 20
PROMPTS = {"a": [9 + i for i in range(10)], "b": [100 + 3 * i for i in range(12)], "c": [7, 8, 9, 10, 11]}


def test_preempted_sequences_are_recomputed_to_the_same_greedy_output():
    from transformers import NemotronHForCausalLM

    model_dir = tiny_model_dir()
    # 12 blocks of 4 tokens: the three sequences need 4 + 6 + 9 = 19 blocks by the end
    config = EngineConfig(model=str(model_dir), dtype="float32", block_size=4, num_kv_blocks=12, num_mamba_slots=3,
                          max_num_seqs=3, max_num_batched_tokens=32)
    engine = LLMEngine(config)
    for rid, prompt in PROMPTS.items():
        engine.add_request(GenerationRequest(rid, list(prompt), SamplingParams(max_tokens=N, temperature=0,
                                                                                ignore_eos=True)))
    out: dict[str, list[int]] = {rid: [] for rid in PROMPTS}
    preempted = False
    for _ in range(20 * N):
        if not engine.has_unfinished():
            break
        for o in engine.step():
            out[o.request_id] += o.token_ids
        preempted |= any(seq.num_output and seq.slot is None for seq in engine.scheduler.waiting)
    assert preempted
    reference = NemotronHForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    for rid, prompt in PROMPTS.items():
        with torch.no_grad():
            ref = reference.generate(torch.tensor([prompt]), max_new_tokens=N, min_new_tokens=N, do_sample=False,
                                     pad_token_id=0)[0, len(prompt):].tolist()
        assert out[rid] == ref
    stats = engine.stats()
    assert stats.kv_blocks_free == 12 and stats.mamba_slots_free == 3
