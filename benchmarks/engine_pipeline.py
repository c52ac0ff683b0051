"""Pipeline parallel in the embedded engine: do micro-batched stages overlap?

Writes a random NemotronH checkpoint wider than the tiny model (fp32, hidden 1024, 8 layers,
transformers' save_pretrained), then on a local Ray of 2 CPUs times the same steps through:

- ``pp2_one_micro_batch`` (baseline): 2 pipeline stages (one Ray actor each, one torch thread
  each), the step sent through them whole, so one stage always waits for the other;
- ``pp2_micro_batched``: the engine's pipeline, the step cut into 2 micro-batches in flight;
- ``one_process``: the whole model in one actor (one torch thread), for scale.

Steps are what the scheduler hands the executor: ``--seqs`` sequences prefill ``--prompt`` tokens
(chunks of ``--chunk``), then ``--steps`` decode steps of all of them, greedy. Reported: prefill
tokens/s and decode tokens/s per case (the best of ``--repeats`` rounds; each round runs every case
once, so a busy moment of a shared machine costs all cases alike), and each case's ratio to the
baseline. The overlap is
there when pp2_micro_batched beats pp2_one_micro_batch (the ideal for 2 stages is 2x on
compute-bound steps, less what Ray adds per call). Greedy tokens of every case must agree.

    python benchmarks/engine_pipeline.py [--seqs 16] [--steps 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WIDE = {
    "hidden_size": 1024, "hybrid_override_pattern": "MEM*MEM*", "num_attention_heads": 16, "num_key_value_heads": 4,
    "head_dim": 64, "intermediate_size": 2048, "mamba_num_heads": 32, "mamba_head_dim": 64, "ssm_state_size": 64,
    "n_groups": 4, "n_routed_experts": 16, "num_experts_per_tok": 4, "moe_intermediate_size": 1024,
    "moe_shared_expert_intermediate_size": 2048, "moe_latent_size": 512, "vocab_size": 4096,
    "num_nextn_predict_layers": 0,
}
BLOCK = 16


def write_checkpoint(directory: Path) -> None:
    import torch
    from transformers import NemotronHForCausalLM

    from nemodeploy.engine.tiny import SPEC, _hf_config

    spec = json.loads(SPEC.read_text()) | WIDE
    spec.pop("mtp_hybrid_override_pattern")
    torch.manual_seed(0)
    NemotronHForCausalLM(_hf_config(spec)).save_pretrained(directory)


def run(executor, seqs: int, prompt: int, chunk: int, steps: int) -> dict:
    """Prefill every sequence, then decode them all; times each phase; the greedy tokens."""
    from nemodeploy.engine.protocol import SamplingParams
    from nemodeploy.engine.scheduler import SchedulerOutput, SeqChunk

    blocks_per_seq = (prompt + steps) // BLOCK + 1
    tables = [list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq)) for i in range(seqs)]
    greedy = SamplingParams(max_tokens=steps + 1, temperature=0)
    prompts = [[(7 * i + 13 * t) % 4000 + 10 for t in range(prompt)] for i in range(seqs)]
    tokens: list[list[int]] = [[] for _ in range(seqs)]

    def chunk_of(i: int, ids: list[int], start: int, sample: bool) -> SeqChunk:
        return SeqChunk(str(i), ids, start, tables[i], i, 0, sample, None, steps + 1, greedy, i)

    started = time.perf_counter()
    for start in range(0, prompt, chunk):  # every sequence's next chunk in one step, as chunked prefill does
        last = start + chunk >= prompt
        out = executor.execute(SchedulerOutput([chunk_of(i, p[start:start + chunk], start, last)
                                                for i, p in enumerate(prompts)]))
    for i in range(seqs):
        tokens[i] += out[str(i)].tokens
    prefill_s = time.perf_counter() - started
    started = time.perf_counter()
    for step in range(steps):
        out = executor.execute(SchedulerOutput([chunk_of(i, [tokens[i][-1]], prompt + step, True)
                                                for i in range(seqs)]))
        for i in range(seqs):
            tokens[i] += out[str(i)].tokens
    decode_s = time.perf_counter() - started
    return {"prefill_tokens_per_s": round(seqs * prompt / prefill_s, 1),
            "decode_tokens_per_s": round(seqs * steps / decode_s, 1), "tokens": tokens}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from nemodeploy.engine import ray_executor
    from nemodeploy.engine.config import EngineConfig
    from nemodeploy.engine.pipeline import micro_batches

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(Path(tmp))
        blocks = args.seqs * ((args.prompt + args.steps) // BLOCK + 1)
        config = EngineConfig(model=tmp, block_size=BLOCK, num_kv_blocks=blocks, num_mamba_slots=args.seqs,
                              max_num_seqs=args.seqs, max_num_batched_tokens=args.seqs * args.chunk,
                              max_model_len=args.prompt + args.steps + 1)
        # one logical CPU per actor, so that every case stays loaded; they take turns, one case at a time
        ray.init(num_cpus=5, include_dashboard=False, log_to_driver=False)
        cases = {"pp2_one_micro_batch": (2, 1), "pp2_micro_batched": (2, None), "one_process": (1, None)}
        executors = {}
        try:
            for name, (pp, _) in cases.items():
                executors[name] = ray_executor.RayExecutor(config, pp_size=pp)
            runs: dict[str, list[dict]] = {name: [] for name in cases}
            for repeat in range(args.repeats + 1):  # round 0 warms up (allocations, first calls)
                for name, (_, parts) in cases.items():
                    # the baseline: the executor's own pipeline with the step never cut
                    ray_executor.micro_batches = (lambda step, n: micro_batches(step, 1)) if parts == 1 \
                        else micro_batches
                    # prefilling from position 0 starts each run afresh
                    done = run(executors[name], args.seqs, args.prompt, args.chunk, args.steps if repeat else 2)
                    if repeat:
                        runs[name].append(done)
            for name, done in runs.items():
                results[name] = {key: max(r[key] for r in done) for key in done[0] if key != "tokens"}
                results[name]["tokens"] = done[0]["tokens"]
                print(name, {k: v for k, v in results[name].items() if k != "tokens"}, flush=True)
        finally:
            for executor in executors.values():
                executor.shutdown()
            ray.shutdown()
    same = len({json.dumps(r.pop("tokens")) for r in results.values()}) == 1
    base = results["pp2_one_micro_batch"]
    for r in results.values():
        for phase in ("prefill", "decode"):
            r[f"{phase}_vs_baseline"] = round(r[f"{phase}_tokens_per_s"] / base[f"{phase}_tokens_per_s"], 2)
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "args": vars(args)
              | {"json": None}, "greedy_tokens_agree": same, "cases": results}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
